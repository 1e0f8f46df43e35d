"""A local OpenAI-compatible server for tests: real HTTP on 127.0.0.1, scripted answers.

    with FakeOpenAI(script=[reply("image anomaly score: 0.9; region 2: 0.8."),
                            error(429), slow(5.0, reply("ok"))]) as srv:
        client = LMMClient(LMMConfig(base_url=srv.base_url, api_key="sk-test", model="m"))
        ...
        srv.requests   # every request received: {"path", "headers", "json"}

`script` is a list consumed in order (the last item repeats), or a callable
`(request_json) -> item` for answers that depend on the prompt.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Item:
    status: int = 200
    content: str | None = "ok"
    delay: float = 0.0
    body: Any = None  # raw JSON body to send instead of a chat completion
    prompt_tokens: int | None = None  # None: counted as a vision model would (count_prompt)
    completion_tokens: int = 20
    finish_reason: str = "stop"
    raw: bytes | None = None  # raw bytes to send as the body (a reply that is not JSON)
    headers: dict[str, str] = field(default_factory=dict)


def reply(content: str, **kw: Any) -> Item:
    return Item(content=content, **kw)


def error(status: int, message: str = "scripted error", **kw: Any) -> Item:
    return Item(status=status, content=None, body={"error": {"message": message, "type": "test"}}, **kw)


def slow(seconds: float, item: Item) -> Item:
    item.delay = seconds
    return item


#: prompt tokens the fake counts per image, as LLaVA-style vision models do
IMAGE_TOKENS = 576


def count_prompt(payload: dict) -> int:
    """Prompt tokens as a vision model would count them: about 4 characters a token, 4 a
    message, IMAGE_TOKENS an image."""
    n = 0
    for m in payload.get("messages", []) or []:
        n += 4
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            n += len(content) // 4 + 1
        elif isinstance(content, list):
            for p in content:
                if isinstance(p, dict) and p.get("type") == "image_url":
                    n += IMAGE_TOKENS
                elif isinstance(p, dict):
                    n += len(str(p.get("text", ""))) // 4 + 1
    return n


class FakeOpenAI:
    def __init__(self, script: list[Item] | Callable[[dict], Item] | None = None, model: str = "fake-vlm"):
        self.script = script if script is not None else [reply("ok")]
        self.model = model
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._n = 0
        self._server: ThreadingHTTPServer | None = None

    # --- lifecycle
    def __enter__(self) -> FakeOpenAI:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": outer.model, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    payload = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    payload = {"_raw": raw.decode("utf-8", "replace")}
                with outer._lock:
                    outer.requests.append({"path": self.path, "headers": dict(self.headers.items()), "json": payload})
                    item = outer._next(payload)
                if item.delay:
                    time.sleep(item.delay)
                if item.raw is not None:
                    self._send_raw(item.status, item.raw)
                    return
                if item.body is not None:
                    self._send(item.status, item.body, item.headers)
                    return
                pt = item.prompt_tokens if item.prompt_tokens is not None else count_prompt(payload)
                body = {
                    "id": f"chatcmpl-{len(outer.requests)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": payload.get("model", outer.model),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": item.content},
                            "finish_reason": item.finish_reason,
                        }
                    ],
                    "usage": {
                        "prompt_tokens": pt,
                        "completion_tokens": item.completion_tokens,
                        "total_tokens": pt + item.completion_tokens,
                    },
                }
                self._send(item.status, body, item.headers)

            def _send_raw(self, status: int, data: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # client gave up (timeout test)
                    pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # --- helpers
    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def _next(self, payload: dict) -> Item:
        if callable(self.script):
            return self.script(payload)
        i = min(self._n, len(self.script) - 1)
        self._n += 1
        return self.script[i]

    def chat_requests(self) -> list[dict]:
        return [r["json"] for r in self.requests if r["path"].endswith("/chat/completions")]

    @staticmethod
    def images_in(request_json: dict) -> list[str]:
        """All image URLs (data URLs) in a chat request, in order."""
        urls = []
        for m in request_json.get("messages", []):
            content = m.get("content")
            if isinstance(content, list):
                for part in content:
                    if part.get("type") == "image_url":
                        urls.append(part["image_url"]["url"])
        return urls

    @staticmethod
    def text_in(request_json: dict) -> str:
        """All text in a chat request, joined."""
        out = []
        for m in request_json.get("messages", []):
            content = m.get("content")
            if isinstance(content, str):
                out.append(content)
            elif isinstance(content, list):
                out.extend(p.get("text", "") for p in content if p.get("type") == "text")
        return "\n".join(out)
