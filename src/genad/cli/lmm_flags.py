"""The LMM connection flags of `genad ask` and `genad cases`, declared once.

    @app.command("ask")
    @lmm_flags
    def ask(args: ..., *, lmm: LMMConfig) -> None: ...

The decorator adds --model, --base-url, --config, --timeout, --max-image-side, --detail,
--no-cache, --max-tokens, --budget and --prices to the command and hands it the LMMConfig they make (with
the environment and the config file, see LMMConfig.from_env). The API key has no flag on
purpose: a key on the command line ends up in shell history.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

# name -> (annotation, default, LMMConfig field or None)
_FLAGS: dict[str, tuple[Any, Any, str | None]] = {
    "model": (Annotated[str | None, typer.Option("--model", help="Model name (else GENAD_LMM_MODEL).")], None, "model"),
    "base_url": (
        Annotated[
            str | None, typer.Option("--base-url", help="OpenAI-compatible server URL (else GENAD_LMM_BASE_URL).")
        ],
        None,
        "base_url",
    ),
    "config": (
        Annotated[
            Path | None,
            typer.Option(
                "--config", help="TOML config file, settings in its lmm table (default ~/.config/genad/config.toml)."
            ),
        ],
        None,
        None,
    ),
    "timeout": (
        Annotated[float | None, typer.Option("--timeout", help="Seconds per request before retrying.")],
        None,
        "timeout",
    ),
    "max_image_side": (
        Annotated[
            int | None, typer.Option("--max-image-side", help="Downscale images so the longest side is at most this.")
        ],
        None,
        "max_image_side",
    ),
    "detail": (
        Annotated[str | None, typer.Option("--detail", help="Image detail: auto, low or high.")],
        None,
        "detail",
    ),
    "no_cache": (
        Annotated[bool, typer.Option("--no-cache", help="Do not read or write the response cache.")],
        False,
        None,
    ),
    "max_tokens": (
        Annotated[
            int | None,
            typer.Option("--max-tokens", min=1, max=1_000_000, help="Longest answer in tokens (default 1024)."),
        ],
        None,
        "max_tokens",
    ),
    "budget": (
        Annotated[float | None, typer.Option("--budget", help="Stop before spending more than this many USD.")],
        None,
        "budget_usd",
    ),
    "prices": (
        Annotated[Path | None, typer.Option("--prices", help="Price table (TOML/JSON, $ per 1M tokens per model).")],
        None,
        "price_table",
    ),
}


def lmm_config(flags: dict[str, Any], **more: Any) -> Any:
    """The LMMConfig the flags (and `more` LMMConfig fields) make, over env and config file."""
    from genad.engines.lmm.config import LMMConfig

    overrides = {field: flags.get(name) for name, (_, _, field) in _FLAGS.items() if field is not None}
    cfg = LMMConfig.from_env(flags.get("config"), **overrides, **more)
    if flags.get("no_cache"):
        cfg.cache_dir = None
    return cfg


def lmm_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the LMM flags to a typer command; it receives the flags' values as `lmm_flags`
    (a dict for `lmm_config`, so that a command can add fields of its own)."""
    sig = inspect.signature(command, eval_str=True)  # the module may use `from __future__ import annotations`
    own = [p for p in sig.parameters.values() if p.name != "lmm_flags"]
    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        for name, (annotation, default, _) in _FLAGS.items()
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        flags = {name: kwargs.pop(name, default) for name, (_, default, _) in _FLAGS.items()}
        return command(*args, lmm_flags=flags, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=[*own, *extra])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in [*own, *extra]}
    return wrapper
