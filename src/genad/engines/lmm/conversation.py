"""Multi-round questions about the same case, with the history kept (and saved if asked).

    conv = Conversation(client)
    conv.ask("Is the second image anomalous?", images=[normal_ref, image])
    conv.ask("Where exactly, and what kind of defect?")      # the model sees the whole history
    conv.save(Conversation.session_path("bottle-17"))

A session file is JSON: the messages (images as the data URLs that were sent), the model and
server it was held with, and the usage so far. It never holds the API key.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from genad.atomic import atomic_write_text
from genad.engines.lmm.config import default_cache_dir
from genad.engines.lmm.parse import Answer, parse_answer
from genad.engines.lmm.provider import LMMClient, LMMReply, assistant, prompt_text, system
from genad.errors import GenadError
from genad.types import Usage

SESSION_VERSION = 1


class Conversation:
    def __init__(
        self,
        client: LMMClient,
        system_prompt: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        usage: Usage | None = None,
    ) -> None:
        self.client = client
        self.messages: list[dict[str, Any]] = list(messages or [])
        if system_prompt and not self.messages:
            self.messages.append(system(system_prompt))
        self.usage = usage or Usage()
        self.last_reply: LMMReply | None = None

    @property
    def turns(self) -> int:
        return sum(1 for m in self.messages if m.get("role") == "assistant")

    def ask(
        self,
        text: str,
        images: Sequence[Any] = (),
        *,
        schema: dict[str, Any] | None = None,
        max_tokens: int | None = None,
        temperature: float = 0.0,
    ) -> LMMReply:
        """Ask one question (images first, then the text) with the whole history; the reply is
        added to the history. On failure the history is left as it was."""
        if not text.strip() and not images:
            raise GenadError("ask needs a question (and optionally images)")
        msg = self.client.user(*images, text)
        reply = self.client.chat([*self.messages, msg], schema=schema, max_tokens=max_tokens, temperature=temperature)
        self.messages += [msg, assistant(reply.text)]
        self.usage = self.usage + reply.usage
        self.last_reply = reply
        return reply

    def answer(self) -> Answer | None:
        """The last reply, parsed (score, decision, defect type, location, reason)."""
        if self.last_reply is None:
            return None
        asked = prompt_text([m for m in self.messages[:-1] if m.get("role") != "assistant"][-2:])
        return parse_answer(self.last_reply.text, self.last_reply.data, prompt=asked)

    # -- sessions
    @staticmethod
    def session_path(name: str, cache_dir: Path | None = None) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", name) or name.startswith("."):
            raise GenadError(f"bad session name {name!r}: use letters, digits, '.', '_' or '-'")
        return Path(cache_dir or default_cache_dir()) / "sessions" / f"{name}.json"

    def save(self, path: Path) -> Path:
        cfg = self.client.config
        data = {
            "version": SESSION_VERSION,
            "model": cfg.model,
            "base_url": cfg.base_url,
            "updated": time.time(),
            "usage": self.usage.__dict__,
            "messages": self.messages,
        }
        atomic_write_text(Path(path), json.dumps(data))
        return Path(path)

    @classmethod
    def load(cls, path: Path, client: LMMClient) -> Conversation:
        path = Path(path)
        if not path.exists():
            raise GenadError(f"no session at {path}: start one without --continue")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            messages = data["messages"]
            usage = Usage(**data.get("usage", {}))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise GenadError(f"cannot read session {path}: {e} (delete it and start again)") from e
        return cls(client, messages=messages, usage=usage)
