"""One client for any OpenAI-compatible multimodal server, built on the official `openai` SDK.

    cfg = LMMConfig.from_env()                       # or LMMConfig(base_url=..., model=..., api_key=...)
    client = LMMClient(cfg)
    reply = client.chat([system("You inspect parts."), user(ref, img, "Is the second image normal?")])
    reply.text, reply.data, reply.usage, reply.cached

What it adds to the SDK: images as downscaled base64 data URLs, structured output with a
fallback to free text, an on-disk response cache, retries with backoff that honour Retry-After
(our own loop, so they can be counted and logged), a requests-per-minute limiter, a budget cap,
and token/cost accounting. The API key is never logged, cached or written anywhere.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from genad.engines.lmm.cache import ResponseCache, request_key
from genad.engines.lmm.config import LMMConfig
from genad.engines.lmm.pricing import PriceTable, image_tokens
from genad.errors import ConfigError, GenadError
from genad.secrets import scrub
from genad.types import Usage

__all__ = [
    "LMMConfig",
    "LMMClient",
    "LMMReply",
    "BudgetExceeded",
    "LMMRequestError",
    "user",
    "system",
    "assistant",
    "encode_image",
]

log = logging.getLogger("genad.lmm")

JPEG_QUALITY = 95
DEFAULT_MAX_SIDE = 768
# completion tokens assumed when estimating a call's cost before it is made
DEFAULT_COMPLETION_ESTIMATE = 500
MAX_RETRY_AFTER = 120.0
MAX_BACKOFF = 30.0


class BudgetExceeded(GenadError):
    """The next call would take spending past LMMConfig.budget_usd."""


class LMMRequestError(GenadError):
    """A request failed for good (after retries), e.g. repeated 5xx, timeouts, or a 400."""


@dataclass
class LMMReply:
    text: str
    data: dict[str, Any] | None
    usage: Usage
    cached: bool
    retries: int = 0
    model: str = ""
    json_mode_used: str = "off"


# --------------------------------------------------------------------------- messages


ImageLike = np.ndarray | Image.Image | Path


def encode_image(image: ImageLike, max_side: int = DEFAULT_MAX_SIDE) -> str:
    """An image as a JPEG base64 data URL, downscaled so its longest side is <= max_side."""
    im = _to_pil(image)
    w, h = im.size
    if max(w, h) > max_side:
        s = max_side / max(w, h)
        im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    # 4:4:4 keeps thin coloured marks (set-of-mark numbers, contours) crisp
    im.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _to_pil(image: ImageLike) -> Image.Image:
    from genad.types import read

    if isinstance(image, Image.Image):
        return Image.fromarray(read("pil", image))
    if isinstance(image, (str, Path)):
        return Image.fromarray(read("image", Path(image)))
    if isinstance(image, np.ndarray):
        a = image
        if a.dtype != np.uint8:
            if np.issubdtype(a.dtype, np.floating) and a.size and float(np.nanmax(a)) <= 1.0:
                a = a * 255.0
            a = np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8)
        if a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)
        if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
            raise GenadError(f"an image must be HxW or HxWx3, got an array of shape {a.shape}")
        if a.shape[2] == 1:
            a = np.repeat(a, 3, axis=2)
        return Image.fromarray(np.ascontiguousarray(a[:, :, :3]))
    raise GenadError(f"cannot send a {type(image).__name__} as an image: give an array, a PIL image or a Path")


def _part(p: Any, max_side: int, detail: str | None) -> dict[str, Any]:
    if isinstance(p, str):
        return {"type": "text", "text": p}
    if isinstance(p, dict) and p.get("type") in ("text", "image_url"):
        return p
    url: dict[str, Any] = {"url": encode_image(p, max_side)}
    if detail is not None:
        url["detail"] = detail
    return {"type": "image_url", "image_url": url}


def user(*parts: Any, max_side: int = DEFAULT_MAX_SIDE, detail: str | None = None) -> dict[str, Any]:
    """A user message from text (str) and images (uint8 array, PIL image or Path), in order.
    LMMClient.chat re-applies its own max_image_side and detail to every image."""
    return {"role": "user", "content": [_part(p, max_side, detail) for p in parts]}


def system(text: str) -> dict[str, Any]:
    return {"role": "system", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def _data_url_size(url: str) -> tuple[int, int] | None:
    try:
        raw = base64.b64decode(url.split(",", 1)[1])
        with Image.open(io.BytesIO(raw)) as im:
            return im.size
    except Exception:  # not an image we can read: send as given
        return None


# --------------------------------------------------------------------------- rate limit


class RateLimiter:
    """At most `per_minute` request starts per minute, spaced evenly (thread-safe)."""

    def __init__(self, per_minute: float | None) -> None:
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


# --------------------------------------------------------------------------- client


class LMMClient:
    def __init__(self, config: LMMConfig, *, sleep: Callable[[float], None] = time.sleep) -> None:
        from openai import OpenAI

        self.config = config
        self.prices = PriceTable(config.price_table)
        self.price_note = self.prices.note(config.model)
        self.cache = ResponseCache(config.cache_dir) if config.cache_dir is not None else None
        self.usage_total = Usage()
        self.retries_total = 0
        self._sleep = sleep
        self._lock = threading.Lock()
        self._reserved = 0.0  # estimated cost of calls in flight, so parallel calls respect the budget
        self._limiter = RateLimiter(config.requests_per_minute)
        self._schema_ok: bool | None = None if config.json_mode == "auto" else True
        self._sdk = OpenAI(
            api_key=config.api_key,
            base_url=config.base_url,
            timeout=config.timeout,
            max_retries=0,  # our own loop: countable, honours Retry-After, logs without secrets
            default_headers=dict(config.extra_headers) or None,
        )
        if self.price_note:
            log.info(self.price_note)

    # -- messages bound to this client's settings
    def user(self, *parts: Any) -> dict[str, Any]:
        return user(*parts, max_side=self.config.max_image_side, detail=self.config.detail)

    def _prepare(self, messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Copy messages, applying this config's detail and max image side to every image."""
        out = []
        for m in messages:
            content = m.get("content")
            if not isinstance(content, list):
                out.append(dict(m))
                continue
            parts = []
            for p in content:
                if p.get("type") == "image_url":
                    url = dict(p["image_url"])
                    size = _data_url_size(url["url"]) if url["url"].startswith("data:") else None
                    if size and max(size) > self.config.max_image_side:
                        raw = base64.b64decode(url["url"].split(",", 1)[1])
                        with Image.open(io.BytesIO(raw)) as im:
                            url["url"] = encode_image(im.convert("RGB"), self.config.max_image_side)
                    url["detail"] = url.get("detail") or self.config.detail
                    p = {"type": "image_url", "image_url": url}
                parts.append(p)
            out.append({**m, "content": parts})
        return out

    # -- cost
    def estimate_cost(self, messages: Sequence[dict[str, Any]], max_tokens: int | None = None) -> float:
        prompt = 0
        for m in messages:
            prompt += 4
            content = m.get("content")
            if isinstance(content, str):
                prompt += len(content) // 4 + 1
                continue
            for p in content or []:
                if p.get("type") == "text":
                    prompt += len(p.get("text", "")) // 4 + 1
                elif p.get("type") == "image_url":
                    size = _data_url_size(p["image_url"]["url"]) or (1024, 1024)
                    prompt += image_tokens(*size, p["image_url"].get("detail") or "auto")
        return self.prices.cost(self.config.model, prompt, max_tokens or DEFAULT_COMPLETION_ESTIMATE)

    def _reserve(self, estimate: float) -> None:
        budget = self.config.budget_usd
        if budget is None:
            return
        if self.prices.lookup(self.config.model) is None:
            raise ConfigError(
                f"a budget is set but no price is known for model {self.config.model!r}: "
                "add it to a price file (price_table / --prices) or drop the budget"
            )
        with self._lock:
            spent = self.usage_total.cost_usd
            if spent + self._reserved + estimate > budget:
                raise BudgetExceeded(
                    f"budget ${budget:.4f} reached: spent ${spent:.4f}, next call would cost about "
                    f"${estimate:.4f}; raise the budget (--budget) to go on (answers so far are cached)"
                )
            self._reserved += estimate

    # -- the call
    def chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        schema: dict[str, Any] | None = None,
        temperature: float = 0.0,
        max_tokens: int | None = None,
    ) -> LMMReply:
        """Send one chat request (cached, rate-limited, retried, within budget)."""
        msgs = self._prepare(messages)
        key_req = {
            "base_url": self.config.base_url,
            "model": self.config.model,
            "messages": msgs,
            "schema": schema,
            "json_mode": self.config.json_mode if schema is not None else "off",
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
        key = request_key(key_req)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None and isinstance(hit.get("text"), str):
                usage = Usage(cached_calls=1)
                with self._lock:
                    self.usage_total = self.usage_total + usage
                return LMMReply(
                    hit["text"],
                    _json_data(hit["text"]) if schema is not None else None,
                    usage,
                    cached=True,
                    model=hit.get("model", self.config.model),
                    json_mode_used=hit.get("json_mode_used", "off"),
                )

        estimate = self.estimate_cost(msgs, max_tokens)
        self._reserve(estimate)
        try:
            text, pt, ct, retries, mode = self._call_with_retries(msgs, schema, temperature, max_tokens)
        finally:
            if self.config.budget_usd is not None:
                with self._lock:
                    self._reserved -= estimate
        cost = self.prices.cost(self.config.model, pt, ct)
        usage = Usage(pt, ct, cost, calls=1)
        with self._lock:
            self.usage_total = self.usage_total + usage
        if self.cache is not None:
            self.cache.put(
                key,
                {
                    "model": self.config.model,
                    "text": text,
                    "usage": {"prompt_tokens": pt, "completion_tokens": ct, "cost_usd": cost},
                    "json_mode_used": mode,
                    "created": time.time(),
                },
            )
        return LMMReply(
            text,
            _json_data(text) if schema is not None else None,
            usage,
            cached=False,
            retries=retries,
            model=self.config.model,
            json_mode_used=mode,
        )

    def _response_format(self, schema: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
        mode = self.config.json_mode
        if schema is None or mode == "off" or self._schema_ok is False:
            return None, "off"
        if mode == "object":
            return {"type": "json_object"}, "object"
        return {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema, "strict": False},
        }, "schema"

    def _call_with_retries(
        self, msgs: list[dict[str, Any]], schema: dict[str, Any] | None, temperature: float, max_tokens: int | None
    ) -> tuple[str, int, int, int, str]:
        import openai

        cfg = self.config
        attempt = 0
        conn_failures = 0
        final: GenadError  # what to raise once retries run out
        err: Exception
        wait_hint: float | None
        while True:
            response_format, mode = self._response_format(schema)
            kwargs: dict[str, Any] = {"model": cfg.model, "messages": msgs, "temperature": temperature}
            if max_tokens is not None:
                kwargs["max_tokens"] = max_tokens
            if response_format is not None:
                kwargs["response_format"] = response_format
            self._limiter.wait()
            try:
                resp = self._sdk.chat.completions.create(**kwargs)
                if mode == "schema" and cfg.json_mode == "auto":
                    self._schema_ok = True
                choice = resp.choices[0] if resp.choices else None
                text = (choice.message.content if choice and choice.message else None) or ""
                refusal = getattr(choice.message, "refusal", None) if choice and choice.message else None
                if not text and refusal:
                    text = str(refusal)
                u = resp.usage
                pt = int(getattr(u, "prompt_tokens", 0) or 0) if u else 0
                ct = int(getattr(u, "completion_tokens", 0) or 0) if u else 0
                return text, pt, ct, attempt, mode
            except openai.BadRequestError as e:
                if mode != "off" and cfg.json_mode == "auto" and _mentions_response_format(e):
                    # the server does not do structured output: free text from now on
                    log.info("server rejected response_format; falling back to free-text answers")
                    self._schema_ok = False
                    continue
                raise LMMRequestError(f"the server refused the request (HTTP 400): {self._msg(e)}") from e
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                raise ConfigError(
                    f"the server at {cfg.base_url} rejected the API key (HTTP {e.status_code}): check GENAD_LMM_API_KEY"
                ) from e
            except openai.NotFoundError as e:
                raise ConfigError(
                    f"not found at {cfg.base_url} (HTTP 404: {self._msg(e)}): check GENAD_LMM_MODEL "
                    f"({cfg.model!r}) and GENAD_LMM_BASE_URL"
                ) from e
            except openai.APITimeoutError as e:  # before APIConnectionError: it is a subclass
                what, wait_hint, err = f"no answer within {cfg.timeout:g}s", None, e
                final = LMMRequestError(
                    f"no answer from {cfg.base_url} within {cfg.timeout:g}s after {attempt + 1} tries: "
                    "raise the timeout or try later"
                )
            except openai.APIConnectionError as e:
                conn_failures += 1
                what, wait_hint, err = "connection failed", None, e
                final = ConfigError(
                    f"cannot reach the LMM server at {cfg.base_url}: check GENAD_LMM_BASE_URL / "
                    "--base-url (is the server running?)"
                )
                if conn_failures > 2:  # an unreachable server will not come back in seconds
                    raise final from e
            except openai.APIStatusError as e:
                if e.status_code != 429 and e.status_code < 500:
                    raise LMMRequestError(f"the server answered HTTP {e.status_code}: {self._msg(e)}") from e
                what, wait_hint, err = f"HTTP {e.status_code}", _retry_after(e.response.headers), e
                final = LMMRequestError(
                    f"the server answered HTTP {e.status_code} {attempt + 1} times: {self._msg(e)}; "
                    "try later or lower the concurrency / requests_per_minute"
                )
            if attempt >= cfg.max_retries:
                raise final from err
            delay = (
                wait_hint
                if wait_hint is not None
                else min(MAX_BACKOFF, cfg.retry_base_delay * 2**attempt * (1 + random.random()))
            )
            attempt += 1
            with self._lock:
                self.retries_total += 1
            log.warning("LMM request: %s; retry %d/%d in %.2fs", what, attempt, cfg.max_retries, delay)
            self._sleep(delay)

    def _msg(self, e: Exception) -> str:
        msg = getattr(e, "message", None) or str(e)
        body = getattr(e, "body", None)
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            msg = body["message"]
        return scrub(str(msg), self.config.api_key)[:300]

    # -- many at once
    def chat_many(
        self,
        requests: Sequence[dict[str, Any]],
        on_done: Callable[[int, LMMReply | Exception], None] | None = None,
    ) -> list[LMMReply | Exception]:
        """Run many chats, at most max_concurrency at a time. Each request is a dict of chat()
        keyword arguments (`messages`, optional `schema`, ...). A failed request gives its
        exception in place of a reply; the others go on."""
        results: list[LMMReply | Exception] = [GenadError("not run")] * len(requests)

        def one(i: int) -> None:
            try:
                r: LMMReply | Exception = self.chat(**requests[i])
            except Exception as e:
                r = e
            results[i] = r
            if on_done is not None:
                on_done(i, r)

        if len(requests) <= 1 or self.config.max_concurrency == 1:
            for i in range(len(requests)):
                one(i)
            return results
        with ThreadPoolExecutor(max_workers=min(self.config.max_concurrency, len(requests))) as pool:
            list(pool.map(one, range(len(requests))))
        return results


def _mentions_response_format(e: Exception) -> bool:
    text = (str(getattr(e, "message", "")) + " " + json.dumps(getattr(e, "body", None), default=str)).lower()
    return any(w in text for w in ("response_format", "json_schema", "json schema", "structured output"))


def _retry_after(headers: Any) -> float | None:
    """Seconds to wait from Retry-After / retry-after-ms, if the server said."""
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return min(MAX_RETRY_AFTER, max(0.0, float(ms) / 1000))
        ra = headers.get("retry-after")
        if ra is None:
            return None
        try:
            return min(MAX_RETRY_AFTER, max(0.0, float(ra)))
        except ValueError:
            dt = parsedate_to_datetime(ra)
            return min(MAX_RETRY_AFTER, max(0.0, dt.timestamp() - time.time()))
    except (TypeError, ValueError, AttributeError):
        return None


def _json_data(text: str) -> dict[str, Any] | None:
    from genad.engines.lmm.parse import extract_json

    return extract_json(text)
