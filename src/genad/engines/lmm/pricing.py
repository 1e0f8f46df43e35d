"""Estimated cost of LMM calls from an editable price table ($ per 1M tokens).

A user price file (TOML or JSON) maps model names to input/output prices and is merged over the
defaults below:

    [gpt-4o]                 # or {"gpt-4o": {"input": 2.5, "output": 10.0}} in JSON
    input = 2.5
    output = 10.0

Model names match exactly first, then by the longest known prefix ("gpt-4o-2024-08-06" ->
"gpt-4o"). An unknown model costs 0 and `note` says so.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genad.errors import ConfigError

# USD per 1M tokens (input, output), public list prices at the time of writing.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4-vision-preview": (10.00, 30.00),
    "gpt-4-turbo": (10.00, 30.00),
}


@dataclass
class Price:
    input_per_m: float
    output_per_m: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_m + completion_tokens * self.output_per_m) / 1e6


class PriceTable:
    def __init__(self, source: str | Path | dict[str, Any] | None = None) -> None:
        self.prices = {m: Price(i, o) for m, (i, o) in DEFAULT_PRICES.items()}
        if source is not None:
            raw = source if isinstance(source, dict) else _read_price_file(Path(source))
            for model, p in raw.items():
                self.prices[str(model)] = _to_price(str(model), p)

    def lookup(self, model: str) -> Price | None:
        if model in self.prices:
            return self.prices[model]
        # provider prefixes such as "openai/gpt-4o" are common behind proxies
        name = model.rsplit("/", 1)[-1]
        best = max((m for m in self.prices if name.startswith(m)), key=len, default=None)
        return None if best is None else self.prices[best]

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        p = self.lookup(model)
        return 0.0 if p is None else p.cost(prompt_tokens, completion_tokens)

    def note(self, model: str) -> str | None:
        if self.lookup(model) is None:
            return f"no price known for model {model!r}: cost counted as 0 (add it to a price file)"
        return None


def _to_price(model: str, p: Any) -> Price:
    try:
        if isinstance(p, dict):
            return Price(float(p["input"]), float(p["output"]))
        i, o = p
        return Price(float(i), float(o))
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f'bad price for {model!r}: write {{"input": $/1M, "output": $/1M}} ({e})') from e


def _read_price_file(path: Path) -> dict[str, Any]:
    path = path.expanduser()
    if not path.exists():
        raise ConfigError(f"price file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read price file {path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"price file {path} must map model names to prices")
    return data


def image_tokens(width: int, height: int, detail: str = "auto") -> int:
    """OpenAI's published token count for one image (tiles of 512 px after fitting 2048/768)."""
    if detail == "low":
        return 85
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)
