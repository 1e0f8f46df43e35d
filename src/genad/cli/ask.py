"""`genad ask IMAGE... "question"`: ask a multimodal model about images, and follow up.

genad ask part.png "Is there a defect? Where?"
genad ask --normal good.png part.png "Compared with the first image, what is wrong?"
genad ask --continue "How severe is it?"            # same session, history kept
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from genad.cli.app import app
from genad.errors import GenadError

# LMM connection options shared by `genad ask` and `genad cases` (the key only from env/config:
# a key on the command line ends up in shell history)
ModelOpt = Annotated[str | None, typer.Option("--model", help="Model name (else GENAD_LMM_MODEL).")]
BaseUrlOpt = Annotated[
    str | None, typer.Option("--base-url", help="OpenAI-compatible server URL (else GENAD_LMM_BASE_URL).")
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="TOML config file, settings in its lmm table (default ~/.config/genad/config.toml)."),
]
TimeoutOpt = Annotated[float | None, typer.Option("--timeout", help="Seconds per request before retrying.")]
MaxSideOpt = Annotated[
    int | None, typer.Option("--max-image-side", help="Downscale images so the longest side is at most this.")
]
DetailOpt = Annotated[str | None, typer.Option("--detail", help="Image detail: auto, low or high.")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Do not read or write the response cache.")]
BudgetOpt = Annotated[float | None, typer.Option("--budget", help="Stop before spending more than this many USD.")]
PricesOpt = Annotated[Path | None, typer.Option("--prices", help="Price table (TOML/JSON, $ per 1M tokens per model).")]


def lmm_config(
    *,
    model: str | None = None,
    base_url: str | None = None,
    config: Path | None = None,
    timeout: float | None = None,
    max_image_side: int | None = None,
    detail: str | None = None,
    no_cache: bool = False,
    budget: float | None = None,
    prices: Path | None = None,
    **more: Any,
) -> Any:
    from genad.engines.lmm.config import LMMConfig

    overrides: dict[str, Any] = dict(
        model=model,
        base_url=base_url,
        timeout=timeout,
        max_image_side=max_image_side,
        detail=detail,
        budget_usd=budget,
        price_table=prices,
        **more,
    )
    cfg = LMMConfig.from_env(config, **overrides)
    if no_cache:
        cfg.cache_dir = None
    return cfg


def usage_line(usage: Any, note: str | None = None) -> str:
    s = (
        f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens, "
        f"${usage.cost_usd:.4f}, {usage.calls} call(s), {usage.cached_calls} from cache"
    )
    return s + (f" ({note})" if note else "")


@app.command("ask")
def ask(
    args: Annotated[list[str], typer.Argument(help="IMAGE... then the QUESTION (last argument).", show_default=False)],
    normal: Annotated[
        list[Path] | None, typer.Option("--normal", "-n", help="Normal reference image(s), sent first.")
    ] = None,
    cont: Annotated[
        bool, typer.Option("--continue", "-c", help="Follow up in the saved session (history kept).")
    ] = False,
    session: Annotated[str, typer.Option("--session", help="Session name (stored under the cache dir).")] = "default",
    as_json: Annotated[bool, typer.Option("--json", help="Print the reply and its parsed fields as JSON.")] = False,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    config: ConfigOpt = None,
    timeout: TimeoutOpt = None,
    max_image_side: MaxSideOpt = None,
    detail: DetailOpt = None,
    no_cache: NoCacheOpt = False,
    budget: BudgetOpt = None,
    prices: PricesOpt = None,
) -> None:
    """Ask a multimodal model about images; --continue asks a follow-up with the history."""
    from genad.engines.lmm.config import default_cache_dir
    from genad.engines.lmm.conversation import Conversation
    from genad.engines.lmm.detector import _answer_dict
    from genad.engines.lmm.provider import LMMClient

    if not args:
        raise GenadError('give IMAGE... and a question, e.g. genad ask part.png "Is it defective?"')
    question, image_args = args[-1], [Path(a) for a in args[:-1]]
    for p in [*image_args, *(normal or [])]:
        if not p.is_file():
            raise GenadError(f"no such image: {p} (the question must be the last argument)")
    cfg = lmm_config(
        model=model,
        base_url=base_url,
        config=config,
        timeout=timeout,
        max_image_side=max_image_side,
        detail=detail,
        no_cache=no_cache,
        budget=budget,
        prices=prices,
    )
    client = LMMClient(cfg)
    path = Conversation.session_path(session, cfg.cache_dir or default_cache_dir())
    conv = Conversation.load(path, client) if cont else Conversation(client)
    refs = list(normal or [])
    text = question
    if refs:
        lead = (
            "The first image is a normal reference."
            if len(refs) == 1
            else f"The first {len(refs)} images are normal references."
        )
        if image_args:
            lead += " The last image is the one to inspect." if len(image_args) == 1 else ""
        text = f"{lead} {question}"
    reply = conv.ask(text, images=[*refs, *image_args])
    conv.save(path)
    ans = conv.answer()
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "reply": reply.text,
                    "parsed": _answer_dict(ans) if ans else None,
                    "usage": reply.usage.__dict__,
                    "cached": reply.cached,
                    "session": session,
                    "turns": conv.turns,
                    "cost_note": client.price_note,
                },
                indent=2,
            )
        )
        return
    typer.echo(reply.text)
    bits = []
    if ans is not None and ans.effective_score is not None:
        bits.append(f"score {ans.effective_score:.2f}" + (" (from yes/no)" if ans.score is None else ""))
    if ans is not None and ans.anomalous is not None:
        bits.append("anomalous" if ans.anomalous else "normal")
    bits.append(usage_line(reply.usage, client.price_note))
    bits.append(f"session {session!r}, {conv.turns} turn(s); follow up with --continue")
    typer.secho(" | ".join(bits), err=True, dim=True)
