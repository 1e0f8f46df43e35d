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
from genad.cli.lmm_flags import lmm_config, lmm_flags
from genad.errors import GenadError


def usage_line(usage: Any, note: str | None = None) -> str:
    s = (
        f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens, "
        f"${usage.cost_usd:.4f}, {usage.calls} call(s), {usage.cached_calls} from cache"
    )
    return s + (f" ({note})" if note else "")


@app.command("ask")
@lmm_flags
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
    lmm_flags: dict[str, Any] | None = None,
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
    cfg = lmm_config(lmm_flags or {})
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
                    "no_usable_score": None
                    if ans is None or ans.usable
                    else ans.why_unusable(reply.finish_reason, reply.max_tokens),
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
    if ans is not None and not ans.usable:
        bits.append(ans.why_unusable(reply.finish_reason, reply.max_tokens))
    bits.append(usage_line(reply.usage, client.price_note))
    bits.append(f"session {session!r}, {conv.turns} turn(s); follow up with --continue")
    typer.secho(" | ".join(bits), err=True, dim=True)
