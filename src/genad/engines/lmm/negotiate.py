"""What a server and model accept, learned once per process, and whether they read what was sent.

Real OpenAI-compatible servers differ from OpenAI's in ways that are only found by asking:

* structured output: `response_format` json_schema (OpenAI, vLLM, Ollama, LM Studio, llama.cpp's
  llama-server), json_object with a "schema" (llama-cpp-python's server, which answers
  json_schema with HTTP 500 but constrains json_object to a schema), plain json_object, or none;
* the answer-length parameter: `max_tokens`, or `max_completion_tokens` for reasoning models
  that refuse the other, which may also refuse any `temperature` but the default;
* whether the images are read at all: a text-only model behind Ollama drops them silently, and
  llama-cpp-python's chat formats drop any message whose content is a list of parts.

`Traits` holds what was learned for one (base URL, model); `traits_for` gives the one shared by
every client of this process, so that a fallback happens once per run, not once per image.
`refused` reads a refusal of the request's format from an error; `judge_input` reads the
server's prompt-token count against genad's own estimate of the request.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

#: structured-output modes, strongest first; "auto" walks down this list on refusals
#: ("object_schema": json_object carrying the schema, as llama-cpp-python's server takes it)
JSON_LADDER = ("schema", "object_schema", "object", "off")

#: the fewest prompt tokens a vision model spends on one image that it reads (OpenAI's low detail
#: spends 85, LLaVA 576, Qwen2.5-VL about one per 28x28 pixels, InternVL and Gemma 3 256 per tile)
IMAGE_TOKENS_FLOOR = 48
#: in a text-only twin of a request, the images must account for at least this many tokens each
IMAGE_TOKENS_MIN_DELTA = 16


@dataclass
class Traits:
    """What one server + model accepted (None: not yet known)."""

    json_mode: str | None = None  # the structured-output mode it took
    tokens_param: str = "max_tokens"  # or "max_completion_tokens"
    send_temperature: bool = True
    images_read: bool = False  # its prompt-token count showed that it reads images
    text_read: bool = False  # ... that it reads a plain-text prompt
    warmed: bool = False  # a first call has been made (until then, calls go one at a time)
    first_call: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


_TRAITS: dict[tuple[str, str], Traits] = {}
_LOCK = threading.Lock()


def traits_for(base_url: str, model: str) -> Traits:
    """The traits this process has learned of `model` at `base_url` (shared by all clients)."""
    key = (base_url.rstrip("/"), model)
    with _LOCK:
        return _TRAITS.setdefault(key, Traits())


def forget(base_url: str | None = None) -> None:
    """Forget what was learned (of one server, or of all): the next calls negotiate again."""
    with _LOCK:
        for key in [k for k in _TRAITS if base_url is None or k[0] == base_url.rstrip("/")]:
            del _TRAITS[key]


def step_down(traits: Traits, failed: str) -> str:
    """After the server refused structured-output mode `failed`, the next mode to try (kept
    in `traits`; when several requests in flight fail at once, the mode goes down only once)."""
    with _LOCK:
        current = traits.json_mode or JSON_LADDER[0]
        if JSON_LADDER.index(current) <= JSON_LADDER.index(failed):
            current = JSON_LADDER[min(len(JSON_LADDER) - 1, JSON_LADDER.index(failed) + 1)]
            traits.json_mode = current
        return current


def error_text(e: Exception) -> str:
    """An API error's message and body, lower case, for matching."""
    body = getattr(e, "body", None)
    return (str(getattr(e, "message", "") or e) + " " + json.dumps(body, default=str)).lower()


def refused(e: Exception, sent: dict[str, Any]) -> str | None:
    """Which part of the request `sent` the server refused, going by its error (any 4xx or 5xx
    that names it): "response_format", "max_tokens", "temperature", or None."""
    text = error_text(e)
    if "response_format" in sent and any(
        w in text
        for w in (
            "response_format",
            "response format",
            "json_schema",
            "json schema",
            "structured output",
            "json_object",
        )
    ):
        return "response_format"
    if "max_tokens" in sent and "max_tokens" in text and ("max_completion_tokens" in text or "not supported" in text):
        return "max_tokens"
    if (
        "temperature" in sent
        and "temperature" in text
        and any(w in text for w in ("not support", "unsupported", "only the default", "does not support"))
    ):
        return "temperature"
    return None


# --------------------------------------------------------------------------- what was read


@dataclass
class PromptEstimate:
    """genad's own count of a request: text tokens (about 4 characters each, plus 4 a message),
    images and their tokens by OpenAI's rule (pricing.image_tokens)."""

    text_tokens: int
    images: int
    image_tokens: int


def judge_input(prompt_tokens: int, est: PromptEstimate) -> str:
    """What the server's prompt-token count says of the request.

    "dropped": fewer than half the text's tokens: the message itself was dropped (a chat format
      that keeps only plain-text content).
    "read": with images, at least 1.3 x the text plus IMAGE_TOKENS_FLOOR per image: the images
      were counted; without, at least half the text.
    "unsure": with images, in between: the text alone might explain the count (tokenisers differ
      by a third or more), so only a text-only twin of the request can tell (`images_counted`).
    "unknown": the server reported no count.
    """
    if prompt_tokens <= 0:
        return "unknown"
    if est.text_tokens >= 24 and prompt_tokens < 0.5 * est.text_tokens:
        return "dropped"
    if est.images == 0:
        return "read"
    if prompt_tokens >= 1.3 * est.text_tokens + IMAGE_TOKENS_FLOOR * est.images:
        return "read"
    return "unsure"


def images_counted(with_images: int, text_only: int, images: int) -> bool:
    """Whether the images account for tokens: the request's count against its text-only twin's."""
    return with_images - text_only >= IMAGE_TOKENS_MIN_DELTA * images
