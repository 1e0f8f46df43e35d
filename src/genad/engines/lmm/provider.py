"""One client for any OpenAI-compatible multimodal server, built on the official `openai` SDK.

    cfg = LMMConfig.from_env()                       # or LMMConfig(base_url=..., model=..., api_key=...)
    client = LMMClient(cfg)
    reply = client.chat([system("You inspect parts."), user(ref, img, "Is the second image normal?")])
    reply.text, reply.data, reply.usage, reply.cached

What it adds to the SDK: images as downscaled base64 data URLs (a message without images is
sent as plain-text content, which every server's chat format reads), negotiation with the
server (structured output json_schema -> json_object -> free text, max_tokens or
max_completion_tokens, temperature or none: each refusal is learned once per server and model,
genad.engines.lmm.negotiate), a limit on every answer's length, a check that the server read
the images (its prompt-token count against genad's estimate, InputIgnored), an on-disk response
cache, retries with backoff that honour Retry-After (our own loop: a timeout is retried once,
a 429/5xx or a malformed reply up to max_retries times), a stop after max_failures failed
requests in a row (ServerFailing), a requests-per-minute limiter, a budget cap, and token/cost
accounting. The limiter, the budget and the cache are each client's own, or shared by every
client of a run across processes and machines (`share_limits`: genad.run.ray_backend). The API key is never logged, cached or written anywhere.
"""

from __future__ import annotations

import base64
import io
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from genad.engines.lmm.cache import ResponseCache, request_key
from genad.engines.lmm.config import LMMConfig
from genad.engines.lmm.negotiate import (
    JSON_LADDER,
    PromptEstimate,
    images_counted,
    judge_input,
    refused,
    step_down,
    traits_for,
)
from genad.engines.lmm.pricing import PriceTable, image_tokens
from genad.errors import ConfigError, GenadError
from genad.secrets import scrub
from genad.types import Usage

__all__ = [
    "LMMConfig",
    "LMMClient",
    "LMMReply",
    "LMMStop",
    "BudgetExceeded",
    "ServerFailing",
    "InputIgnored",
    "LMMRequestError",
    "Budget",
    "Limits",
    "own_limits",
    "share_limits",
    "user",
    "system",
    "assistant",
    "encode_image",
    "prompt_text",
]

log = logging.getLogger("genad.lmm")

JPEG_QUALITY = 95
DEFAULT_MAX_SIDE = 768
# completion tokens assumed when estimating a call's cost before it is made
DEFAULT_COMPLETION_ESTIMATE = 500
MAX_RETRY_AFTER = 120.0
MAX_BACKOFF = 30.0


class LMMStop(GenadError):
    """A condition that would fail every later call the same way: the run stops (keeping what
    it has; answers paid for are cached) instead of failing each sample."""


class BudgetExceeded(LMMStop):
    """The next call would take spending past LMMConfig.budget_usd."""


class ServerFailing(LMMStop):
    """max_failures requests in a row failed: the server is down, overloaded or refuses them."""


class InputIgnored(LMMStop):
    """The server's prompt-token count shows that it ignored the images or dropped the prompt."""


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
    finish_reason: str | None = None  # "length": the answer was cut at max_tokens
    max_tokens: int | None = None  # the limit it was asked with
    cache_key: str | None = None  # where the answer is cached (LMMClient.discard forgets it)


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


# --------------------------------------------------------------------------- rate, budget, cache


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


def budget_exceeded(budget: float, spent: float, estimate: float) -> BudgetExceeded:
    return BudgetExceeded(
        f"budget ${budget:.4f} reached: spent ${spent:.4f}, next call would cost about "
        f"${estimate:.4f}; raise the budget (--budget) to go on (answers so far are cached)"
    )


class Budget:
    """Spending against a cap in USD (None: no cap), thread-safe: a call reserves its estimated
    cost before it is sent (so calls in parallel respect the cap) and settles with what it cost."""

    def __init__(self, budget_usd: float | None) -> None:
        self.budget_usd = budget_usd
        self.spent = 0.0
        self._reserved = 0.0
        self._lock = threading.Lock()

    def reserve(self, estimate: float) -> None:
        """Reserve `estimate`, or raise BudgetExceeded when it would take spending past the cap."""
        if self.budget_usd is None:
            return
        with self._lock:
            if self.spent + self._reserved + estimate > self.budget_usd:
                raise budget_exceeded(self.budget_usd, self.spent, estimate)
            self._reserved += estimate

    def settle(self, estimate: float, cost: float) -> None:
        """A call reserved with `estimate` (0 for one that reserved nothing) is over: it cost `cost`."""
        with self._lock:
            if self.budget_usd is not None:
                self._reserved -= estimate
            self.spent += cost


class Rate(Protocol):
    def wait(self) -> None: ...


class Ledger(Protocol):
    def reserve(self, estimate: float) -> None: ...
    def settle(self, estimate: float, cost: float) -> None: ...


class Cache(Protocol):
    def get(self, key: str) -> dict[str, Any] | None: ...
    def put(self, key: str, entry: dict[str, Any]) -> None: ...
    def discard(self, key: str) -> None: ...


@dataclass
class Limits:
    """What a client's calls go through: the rate limit, the budget and the response cache."""

    rate: Rate
    budget: Ledger
    cache: Cache | None


def own_limits(config: LMMConfig) -> Limits:
    """A client's own rate limit, budget and cache (the on-disk cache at config.cache_dir)."""
    return Limits(
        RateLimiter(config.requests_per_minute),
        Budget(config.budget_usd),
        ResponseCache(config.cache_dir) if config.cache_dir is not None else None,
    )


_limits_factory: Callable[[LMMConfig], Limits] | None = None


def share_limits(factory: Callable[[LMMConfig], Limits] | None) -> Callable[[LMMConfig], Limits] | None:
    """Make every LMMClient built from now on in this process take its rate limit, budget and
    cache from `factory(config)` (None: each its own again, `own_limits`); returns the factory
    it replaces. genad.run.ray_backend plugs in limits held by a Ray actor, so that the clients
    of every task of a run share one rate, one budget and one cache."""
    global _limits_factory
    before, _limits_factory = _limits_factory, factory
    return before


# --------------------------------------------------------------------------- client


class LMMClient:
    def __init__(self, config: LMMConfig, *, sleep: Callable[[float], None] = time.sleep) -> None:
        from openai import OpenAI

        self.config = config
        self.prices = PriceTable(config.price_table)
        self.price_note = self.prices.note(config.model)
        limits = (_limits_factory or own_limits)(config)
        self.cache = limits.cache
        self.budget = limits.budget
        self.usage_total = Usage()
        self.retries_total = 0
        self.traits = traits_for(config.base_url, config.model)
        self._sleep = sleep
        self._lock = threading.Lock()
        self._failures = 0  # requests failed in a row
        self._failing: ServerFailing | None = None
        self._ignored: InputIgnored | None = None
        self._limiter = limits.rate
        self._sdk = OpenAI(
            api_key=config.api_key,
            base_url=config.base_url,
            timeout=config.request_timeout,
            max_retries=0,  # our own loop: countable, honours Retry-After, logs without secrets
            default_headers=dict(config.extra_headers) or None,
        )
        if self.price_note:
            log.info(self.price_note)

    # -- messages bound to this client's settings
    def user(self, *parts: Any) -> dict[str, Any]:
        return user(*parts, max_side=self.config.max_image_side, detail=self.config.detail)

    def _prepare(self, messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Copy messages, applying this config's detail and max image side to every image; a
        message whose parts are all text is sent as one string (llama-cpp-python's chat
        formats, among others, drop a list of parts)."""
        out = []
        for m in messages:
            content = m.get("content")
            if not isinstance(content, list):
                out.append(dict(m))
                continue
            if all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                out.append({**m, "content": "\n".join(str(p.get("text", "")) for p in content)})
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
    def estimate(self, messages: Sequence[dict[str, Any]]) -> PromptEstimate:
        """genad's own count of a request's prompt: text tokens, images, image tokens."""
        text = images = image_tok = 0
        for m in messages:
            text += 4
            content = m.get("content")
            if isinstance(content, str):
                text += len(content) // 4 + 1
                continue
            for p in content or []:
                if p.get("type") == "text":
                    text += len(p.get("text", "")) // 4 + 1
                elif p.get("type") == "image_url":
                    size = _data_url_size(p["image_url"]["url"]) or (1024, 1024)
                    images += 1
                    image_tok += image_tokens(*size, p["image_url"].get("detail") or "auto")
        return PromptEstimate(text, images, image_tok)

    def estimate_cost(self, messages: Sequence[dict[str, Any]], max_tokens: int | None = None) -> float:
        est = self.estimate(messages)
        return self.prices.cost(
            self.config.model, est.text_tokens + est.image_tokens, max_tokens or DEFAULT_COMPLETION_ESTIMATE
        )

    def _reserve(self, estimate: float) -> None:
        budget = self.config.budget_usd
        if budget is None:
            return
        if self.prices.lookup(self.config.model) is None:
            raise ConfigError(
                f"a budget is set but no price is known for model {self.config.model!r}: "
                "add it to a price file (price_table / --prices) or drop the budget"
            )
        self.budget.reserve(estimate)

    # -- the call
    def chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        schema: dict[str, Any] | None = None,
        temperature: float = 0.0,
        max_tokens: int | None = None,
    ) -> LMMReply:
        """Send one chat request (cached, rate-limited, retried, within budget). max_tokens:
        the longest answer (default: the config's)."""
        cfg = self.config
        max_tokens = int(max_tokens or cfg.max_tokens)
        msgs = self._prepare(messages)
        key_req = {
            "base_url": cfg.base_url,
            "model": cfg.model,
            "messages": msgs,
            "schema": schema,
            "json_mode": cfg.json_mode if schema is not None else "off",
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
                    model=hit.get("model", cfg.model),
                    json_mode_used=hit.get("json_mode_used", "off"),
                    finish_reason=hit.get("finish_reason"),
                    max_tokens=max_tokens,
                    cache_key=key,
                )
        # The first call to a server and model runs alone: what it learns (the structured-output
        # mode it takes, whether it reads images) saves the calls waiting behind it a refusal each.
        first = self.traits.first_call if not self.traits.warmed else None
        if first is not None:
            first.acquire()
            if self.traits.warmed:  # another call was first: this one need not wait for the others
                first.release()
                first = None
        try:
            got, usage = self._paid_call(msgs, schema, temperature, max_tokens)
        finally:
            if first is not None:
                self.traits.warmed = True
                first.release()
        if self.cache is not None:
            self.cache.put(
                key,
                {
                    "model": cfg.model,
                    "text": got.text,
                    "usage": {
                        "prompt_tokens": got.prompt_tokens,
                        "completion_tokens": got.completion_tokens,
                        "cost_usd": usage.cost_usd,
                    },
                    "json_mode_used": got.mode,
                    "finish_reason": got.finish_reason,
                    "created": time.time(),
                },
            )
        return LMMReply(
            got.text,
            _json_data(got.text) if schema is not None else None,
            usage,
            cached=False,
            retries=got.retries,
            model=cfg.model,
            json_mode_used=got.mode,
            finish_reason=got.finish_reason,
            max_tokens=max_tokens,
            cache_key=key if self.cache is not None else None,
        )

    def _paid_call(
        self, msgs: list[dict[str, Any]], schema: dict[str, Any] | None, temperature: float, max_tokens: int
    ) -> tuple[_Got, Usage]:
        """One request that is not in the cache: within budget, retried, counted, its input checked."""
        cfg = self.config
        stopped = self._failing or self._ignored
        if stopped is not None:  # the server failed too often, or does not read what we send
            raise stopped
        estimate = self.estimate_cost(msgs, max_tokens)
        self._reserve(estimate)
        cost = 0.0
        try:
            try:
                got = self._call_with_retries(msgs, schema, temperature, max_tokens)
            except LMMRequestError as e:
                self._failed(e)
                raise
            cost = self.prices.cost(cfg.model, got.prompt_tokens, got.completion_tokens)
        finally:
            self.budget.settle(estimate if cfg.budget_usd is not None else 0.0, cost)
        with self._lock:
            self._failures = 0
        usage = Usage(got.prompt_tokens, got.completion_tokens, cost, calls=1)
        with self._lock:
            self.usage_total = self.usage_total + usage
        if cfg.check_input:
            try:
                self._check_input(msgs, got.prompt_tokens)
            except InputIgnored as e:  # the answer is not cached, and no later call is sent
                self._ignored = e
                raise
        return got, usage

    def discard(self, reply: LMMReply) -> None:
        """Forget a cached answer that could not be used (a refusal, an echo of the prompt, an
        answer cut off or without a score): a resumed or repeated run asks for it again. Only
        errors are ever cached this way: failed requests never are."""
        if self.cache is not None and reply.cache_key:
            self.cache.discard(reply.cache_key)

    def _failed(self, e: LMMRequestError) -> None:
        """Count a failed request; after max_failures in a row every later call stops at once."""
        with self._lock:
            self._failures += 1
            if self._failures >= self.config.max_failures and self._failing is None:
                self._failing = ServerFailing(
                    f"the LMM server at {self.config.base_url} failed {self._failures} requests in a row "
                    f"(last: {e}); stopped: every answer received so far is kept"
                )
            failing = self._failing
        if failing is not None:
            raise failing from e

    # -- what the server read
    def _check_input(self, msgs: list[dict[str, Any]], prompt_tokens: int) -> None:
        """Stop (InputIgnored) when the server's prompt-token count shows that it dropped the
        prompt or ignored the images (negotiate.judge_input; an unsure count is settled once per
        server and model by a text-only twin of the request, one answer token long)."""
        tr = self.traits
        est = self.estimate(msgs)
        if (tr.images_read if est.images else tr.text_read) or prompt_tokens <= 0:
            return
        verdict = judge_input(prompt_tokens, est)
        if verdict == "unsure":
            twin = self._text_only_tokens(msgs)
            if twin is None:
                return  # cannot tell: assume it was read, and ask again next time
            verdict = "read" if images_counted(prompt_tokens, twin, est.images) else "ignored"
        if verdict == "read":
            if est.images:
                tr.images_read = True
            else:
                tr.text_read = True
            return
        if verdict == "unknown":
            return
        cfg = self.config
        if est.images:
            raise InputIgnored(
                f"the model ignored the images (no vision?): {cfg.model!r} at {cfg.base_url} counted {prompt_tokens} "
                f"prompt tokens for {est.images} image(s) (about {est.image_tokens} tokens by genad's estimate) and "
                f"about {est.text_tokens} tokens of text; use a vision model (or its projector), or set "
                "check_input=false if this server does not count image tokens"
            )
        raise InputIgnored(
            f"the server dropped the prompt: {cfg.model!r} at {cfg.base_url} counted {prompt_tokens} prompt tokens "
            f"for about {est.text_tokens} tokens of text; check its chat format (or set check_input=false)"
        )

    def _text_only_tokens(self, msgs: list[dict[str, Any]]) -> int | None:
        """Prompt tokens of `msgs` without their images (one answer token; None if it fails)."""
        twin = []
        for m in msgs:
            c = m.get("content")
            if isinstance(c, list):
                c = "\n".join(str(p.get("text", "")) for p in c if p.get("type") == "text")
            twin.append({**m, "content": c})
        try:
            got = self._call_with_retries(twin, None, 0.0, 1, retries=0)
        except GenadError:
            return None
        cost = self.prices.cost(self.config.model, got.prompt_tokens, got.completion_tokens)
        self.budget.settle(0.0, cost)
        with self._lock:
            self.usage_total = self.usage_total + Usage(got.prompt_tokens, got.completion_tokens, cost, calls=1)
        return got.prompt_tokens or None

    def _request(
        self, msgs: list[dict[str, Any]], schema: dict[str, Any] | None, temperature: float, max_tokens: int
    ) -> tuple[dict[str, Any], str]:
        """The request's arguments as this server and model accept them, and its json mode."""
        cfg, tr = self.config, self.traits
        kwargs: dict[str, Any] = {"model": cfg.model, "messages": msgs, tr.tokens_param: max_tokens}
        if tr.send_temperature:
            kwargs["temperature"] = temperature
        mode = "off"
        if schema is not None and cfg.json_mode != "off":
            mode = (tr.json_mode or JSON_LADDER[0]) if cfg.json_mode == "auto" else cfg.json_mode
        if mode == "object":
            kwargs["response_format"] = {"type": "json_object"}
        elif mode == "object_schema":
            kwargs["response_format"] = {"type": "json_object", "schema": schema}
        elif mode == "schema":
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema, "strict": False},
            }
        return kwargs, mode

    def _call_with_retries(
        self,
        msgs: list[dict[str, Any]],
        schema: dict[str, Any] | None,
        temperature: float,
        max_tokens: int,
        retries: int | None = None,
    ) -> _Got:
        import openai

        cfg, tr = self.config, self.traits
        max_retries = cfg.max_retries if retries is None else retries
        timeout = cfg.request_timeout
        attempt = timeouts = conn_failures = 0
        final: GenadError  # what to raise once retries run out
        err: Exception
        wait_hint: float | None
        while True:
            kwargs, mode = self._request(msgs, schema, temperature, max_tokens)
            self._limiter.wait()
            try:
                resp = self._sdk.chat.completions.create(**kwargs)
                got = _read_completion(resp)
                got.retries, got.mode = attempt, mode
                if mode != "off" and cfg.json_mode == "auto" and tr.json_mode is None:
                    tr.json_mode = mode
                return got
            except _Malformed as e:
                what, wait_hint, err = "malformed reply", None, e
                final = LMMRequestError(
                    f"the server at {cfg.base_url} answered with something that is not a chat completion "
                    f"({e}) {attempt + 1} times: is it an OpenAI-compatible endpoint (…/v1)?"
                )
            except openai.APIStatusError as e:
                feature = refused(e, kwargs) if e.status_code >= 400 else None
                if feature == "response_format" and cfg.json_mode == "auto":
                    # the server does not do this kind of structured output: the next kind, from now on
                    nxt = step_down(tr, mode)
                    log.info("%s refused response_format %s (HTTP %d); now: %s", cfg.base_url, mode, e.status_code, nxt)
                    continue
                if feature == "max_tokens" and tr.tokens_param == "max_tokens":
                    log.info("%s wants max_completion_tokens for %s", cfg.base_url, cfg.model)
                    tr.tokens_param = "max_completion_tokens"
                    continue
                if feature == "temperature" and tr.send_temperature:
                    log.info("%s refuses a temperature for %s: sending none", cfg.base_url, cfg.model)
                    tr.send_temperature = False
                    continue
                if isinstance(e, (openai.AuthenticationError, openai.PermissionDeniedError)):
                    raise ConfigError(
                        f"the server at {cfg.base_url} rejected the API key (HTTP {e.status_code}): "
                        "check GENAD_LMM_API_KEY"
                    ) from e
                if isinstance(e, openai.NotFoundError):
                    raise ConfigError(
                        f"not found at {cfg.base_url} (HTTP 404: {self._msg(e)}): check GENAD_LMM_MODEL "
                        f"({cfg.model!r}) and GENAD_LMM_BASE_URL"
                    ) from e
                if e.status_code != 429 and e.status_code < 500:
                    raise LMMRequestError(
                        f"the server refused the request (HTTP {e.status_code}): {self._msg(e)}"
                    ) from e
                what, wait_hint, err = f"HTTP {e.status_code}", _retry_after(e.response.headers), e
                final = LMMRequestError(
                    f"the server answered HTTP {e.status_code} {attempt + 1} times: {self._msg(e)}; "
                    "try later or lower the concurrency / requests_per_minute"
                )
            except openai.APITimeoutError as e:  # before APIConnectionError: it is a subclass
                timeouts += 1
                what, wait_hint, err = f"no answer within {timeout:g}s", None, e
                final = LMMRequestError(
                    f"no answer from {cfg.base_url} within {timeout:g}s after {attempt + 1} tries: "
                    "raise the timeout (--timeout), lower --max-tokens, or try later"
                )
                if timeouts > 1:  # a server too slow once is slow again: do not stack generations on it
                    raise final from e
            except openai.APIConnectionError as e:
                conn_failures += 1
                what, wait_hint, err = "connection failed", None, e
                final = ConfigError(
                    f"cannot reach the LMM server at {cfg.base_url}: check GENAD_LMM_BASE_URL / "
                    "--base-url (is the server running?)"
                )
                if conn_failures > 2:  # an unreachable server will not come back in seconds
                    raise final from e
            if attempt >= max_retries:
                raise final from err
            delay = (
                wait_hint
                if wait_hint is not None
                else min(MAX_BACKOFF, cfg.retry_base_delay * 2**attempt * (1 + random.random()))
            )
            attempt += 1
            with self._lock:
                self.retries_total += 1
            log.warning("LMM request: %s; retry %d/%d in %.2fs", what, attempt, max_retries, delay)
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
        exception in place of a reply; the others go on, except after an LMMStop (a spent
        budget, a failing server, ignored images): the requests not yet sent then get it too."""
        results: list[LMMReply | Exception] = [GenadError("not run")] * len(requests)
        stopped: list[Exception] = []

        def one(i: int) -> None:
            r: LMMReply | Exception
            if stopped:
                r = stopped[0]
            else:
                try:
                    r = self.chat(**requests[i])
                except Exception as e:
                    r = e
                    if isinstance(e, (LMMStop, ConfigError)):
                        stopped.append(e)
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


@dataclass
class _Got:
    """One completion as read off the wire."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    retries: int = 0
    mode: str = "off"


class _Malformed(Exception):
    """A 200 reply that is not a chat completion."""


def _read_completion(resp: Any) -> _Got:
    """Text, token counts and finish reason of a completion; _Malformed when it is not one
    (a body that is not JSON, "choices" that is not a list, a message without content...)."""
    try:
        choices = resp.choices
        if not isinstance(choices, list):
            raise _Malformed(f"'choices' is {type(choices).__name__}, not a list")
        choice = choices[0] if choices else None
        message = choice.message if choice is not None else None
        content = message.content if message is not None else None
        if content is not None and not isinstance(content, str):
            raise _Malformed(f"the message content is {type(content).__name__}, not text")
        text = content or ""
        refusal = getattr(message, "refusal", None) if message is not None else None
        if not text and isinstance(refusal, str) and refusal:
            text = refusal
        finish = getattr(choice, "finish_reason", None) if choice is not None else None
        u = getattr(resp, "usage", None)
        pt = _count(getattr(u, "prompt_tokens", 0)) if u is not None else 0
        ct = _count(getattr(u, "completion_tokens", 0)) if u is not None else 0
    except _Malformed:
        raise
    except (AttributeError, TypeError, IndexError, KeyError, ValueError) as e:
        raise _Malformed(f"{type(e).__name__}: {str(e)[:120]}") from e
    return _Got(text, pt, ct, finish if isinstance(finish, str) else None)


def _count(v: Any) -> int:
    try:
        return max(0, int(v or 0))
    except (TypeError, ValueError):
        return 0


def prompt_text(messages: Sequence[dict[str, Any]]) -> str:
    """All the text of a chat (images left out): what the model was asked, for telling its own
    answer from a copy of the question (parse.parse_answer's `prompt`)."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.extend(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "\n".join(out)


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
