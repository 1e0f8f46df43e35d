"""Secrets never reach logs, reports, caches, run folders or model files: one rule for which
keys hold secrets, and the two ways of keeping their values out (masking a mapping, scrubbing
a text)."""

from __future__ import annotations

import re
from typing import Any

from genad.types import jsonable

MASK = "***"
# api_key, openai_key, key, secret, password, authorization, credential(s), bearer, token,
# access_token...; but not prompt_tokens / max_tokens, which are counts
SECRET_KEY = re.compile(
    r"((^|[_-])(api[_-]?)?key$|secret|passw(or)?d|authori[sz]ation|credential|bearer|(^|[_-])token$|"
    r"access[_-]?token|auth[_-]?token)",
    re.IGNORECASE,
)


def is_secret(key: object) -> bool:
    return bool(SECRET_KEY.search(str(key)))


def redact(value: Any) -> Any:
    """`value` as JSON can hold it, with every non-empty value under a secret-looking key
    (at any depth) replaced by "***"."""
    if isinstance(value, dict):
        return {str(k): (MASK if is_secret(k) and v not in (None, "") else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(x) for x in value]
    return jsonable(value)


def scrub(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` masked (secrets shorter than 4 characters are
    left alone: masking them would garble ordinary words)."""
    return text.replace(secret, MASK) if secret and len(secret) >= 4 else text
