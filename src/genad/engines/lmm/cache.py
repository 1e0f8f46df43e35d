"""On-disk cache of LMM responses, so that a re-run (or a resumed run) costs nothing.

The key is a SHA-256 of the full request: base URL, model, messages (image bytes included, as
data URLs), and parameters. The API key is never part of the key nor of what is stored. Each
response is its own small JSON file, written atomically (temp file + rename), so a run killed
halfway keeps every answer already paid for and never leaves a torn file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from genad.atomic import atomic_write_text


def request_key(request: dict[str, Any]) -> str:
    blob = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode("ascii")).hexdigest()


class ResponseCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / "responses" / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None  # unreadable entry: ask again rather than fail the run

    def put(self, key: str, entry: dict[str, Any]) -> None:
        path = self._path(key)
        atomic_write_text(path, json.dumps(entry, ensure_ascii=False))

    def discard(self, key: str) -> None:
        """Forget one answer (one that could not be used: a refusal, an echo, nothing readable),
        so that a resumed or repeated run asks again instead of reusing it."""
        try:
            self._path(key).unlink()
        except OSError:
            pass
