"""Shared fixtures for the LMM tests: a config pointing at the fake server, images you can tell
apart after JPEG round trips, and decoding of what the server received."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image

from genad.engines.lmm.provider import LMMConfig

KEY = "sk-test-SECRET-4242-do-not-leak"


def config(srv, tmp_path: Path, **kw) -> LMMConfig:
    kw.setdefault("cache_dir", tmp_path / "cache")
    kw.setdefault("retry_base_delay", 0.001)
    return LMMConfig(base_url=srv.base_url, model=kw.pop("model", "gpt-4o"), api_key=KEY, **kw)


def solid(rgb: tuple[int, int, int], h: int = 64, w: int = 96) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


def decode(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/"), data_url[:40]
    raw = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


def dominant(data_url: str) -> str:
    """'red', 'green', 'blue' or 'other' by the mean colour of a sent image."""
    m = decode(data_url).reshape(-1, 3).mean(0)
    i = int(np.argmax(m))
    return ["red", "green", "blue"][i] if m[i] > 150 and sorted(m)[1] < 80 else "other"


def set_env(monkeypatch, srv, tmp_path: Path, model: str = "gpt-4o") -> None:
    monkeypatch.setenv("GENAD_LMM_BASE_URL", srv.base_url)
    monkeypatch.setenv("GENAD_LMM_MODEL", model)
    monkeypatch.setenv("GENAD_LMM_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("GENAD_CACHE_DIR", str(tmp_path / "cache"))
    cfg = tmp_path / "config.toml"
    cfg.write_text("[lmm]\nretry_base_delay = 0.001\n")
    monkeypatch.setenv("GENAD_CONFIG", str(cfg))


def grep_tree(root: Path, needle: str) -> list[Path]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and needle.encode() in p.read_bytes():
            hits.append(p)
    return hits
