"""`genad cases ROOT`: run the GPT-4V study's case suite end to end against a model.

Every case's own prompt text is used verbatim, for every variant it defines (naive / with class
information / with human expertise, zero- and one-shot; the localisation cases' single prompt),
with its images in the order the prompt implies ("The first image is normal..." -> the normal
image first; "The second image contains its corresponding marks" -> the set-of-mark image
second). Answers go to --out as answers.jsonl, report.md and index.html beside copies of the
images. A case with missing images is reported as such and the rest go on.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from genad.cli.app import app
from genad.cli.ask import usage_line
from genad.cli.lmm_flags import lmm_config, lmm_flags
from genad.errors import GenadError

STUDY_VARIANTS = {"naive": "naive", "class": "with class_information", "expertise": "with human expertise"}


@dataclass
class CaseRun:
    case_id: str
    task: str
    dataset: str | None
    category: str | None
    expected: str | None
    shot: str
    variant: str
    prompt: str | None
    images: list[tuple[str, Path]] = field(default_factory=list)  # (role, path) in sending order
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)
    reply: str | None = None
    parsed: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    cached: bool | None = None
    error: str | None = None


def normal_first(prompt: str) -> bool:
    """Whether a one-shot prompt puts the normal image first (the study's prompts all do)."""
    second_normal = re.search(r"\bsecond\b[^.]*\bis normal\b", prompt, re.I)
    first_normal = re.search(r"\bfirst\b[^.]*\b(?:is|and is) normal\b", prompt, re.I)
    return not (second_normal and not first_normal)


def marks_first(prompt: str) -> bool:
    """Whether a localisation prompt puts the set-of-mark image first."""
    return bool(re.search(r"\bfirst image\b[^.]*\bmarks?\b", prompt, re.I))


def plan_runs(cases: list[Any], variants: list[str], shots: list[str]) -> list[CaseRun]:
    """Every (case, shot, variant) the suite defines among those asked, with its images."""
    runs: list[CaseRun] = []
    for c in cases:
        base = dict(case_id=c.id, task=c.task, dataset=c.dataset, category=c.category, expected=c.abnormal_states)
        notes = [f"missing upstream: {m}" for m in c.missing]
        if not c.usable:
            runs.append(
                CaseRun(
                    **base,
                    shot="-",
                    variant="-",
                    prompt=c.prompt,
                    skipped="cannot run: missing " + ", ".join(c.missing or ["inputs"]),
                    notes=notes,
                )
            )
            continue
        if c.is_localisation:
            if not c.prompt:
                runs.append(
                    CaseRun(
                        **base,
                        shot="localisation",
                        variant="-",
                        prompt=None,
                        skipped="no prompt in label.json",
                        notes=notes,
                    )
                )
                continue
            imgs = [("inspect", c.abnormal), ("marks", c.som)]
            runs.append(
                CaseRun(
                    **base,
                    shot="localisation",
                    variant="as given",
                    prompt=c.prompt,
                    images=imgs[::-1] if marks_first(c.prompt) else imgs,
                    notes=notes,
                )
            )
            continue
        for shot in shots:
            table = c.prompts.get(shot)
            if not table:
                continue
            for v in variants:
                prompt = table.get(STUDY_VARIANTS[v])
                if prompt is None:
                    continue  # e.g. Logical-AD defines only the expertise (rules) prompt
                run = CaseRun(**base, shot=shot, variant=STUDY_VARIANTS[v], prompt=prompt, notes=list(notes))
                if shot == "one-shot":
                    if c.normal is None:
                        run.skipped = "cannot run: no normal reference image"
                    else:
                        pair = [("normal", c.normal), ("inspect", c.abnormal)]
                        run.images = pair if normal_first(prompt) else pair[::-1]
                else:
                    run.images = [("inspect", c.abnormal)]
                runs.append(run)
    return runs


def _copy_images(runs: list[CaseRun], out: Path) -> dict[Path, str]:
    rel: dict[Path, str] = {}
    for r in runs:
        for _, p in r.images:
            if p in rel:
                continue
            dest = out / "images" / r.case_id / p.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                shutil.copy2(p, dest)
            rel[p] = dest.relative_to(out).as_posix()
    return rel


def _verdict(r: CaseRun) -> str:
    if r.skipped:
        return "skipped"
    if r.error:
        return "failed"
    if r.parsed is None:
        return "not asked"
    if r.parsed.get("refusal"):
        return "refused"
    a = r.parsed.get("anomalous")
    return "undecided" if a is None else ("anomalous" if a else "normal")


def _summary(runs: list[CaseRun]) -> list[tuple[str, dict[str, int]]]:
    groups: dict[str, dict[str, int]] = {}
    for r in runs:
        if r.skipped:
            key = "skipped"
        else:
            key = f"{r.shot} / {r.variant}"
        g = groups.setdefault(key, {})
        v = _verdict(r)
        g[v] = g.get(v, 0) + 1
    return sorted(groups.items())


def write_reports(
    runs: list[CaseRun], out: Path, usage: Any = None, note: str | None = None, model: str | None = None
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rel = _copy_images(runs, out)
    with open(out / "answers.jsonl", "w", encoding="utf-8") as f:
        for r in runs:
            d = {k: v for k, v in r.__dict__.items() if k != "images"}
            d["images"] = [{"role": role, "path": rel.get(p, str(p))} for role, p in r.images]
            d["verdict"] = _verdict(r)
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    cols = ["anomalous", "normal", "undecided", "refused", "failed", "skipped", "not asked"]
    summary = _summary(runs)
    # markdown
    md = ["# GPT-4V case suite", ""]
    if model:
        md.append(f"Model: `{model}`. Every inspected image is anomalous, so 'anomalous' is the right answer.")
    if usage is not None:
        md.append(f"Usage: {usage_line(usage, note)}.")
    md += ["", "| shot / variant | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for key, g in summary:
        md.append(f"| {key} | " + " | ".join(str(g.get(c, 0)) for c in cols) + " |")
    last = None
    for r in runs:
        if r.case_id != last:
            md += ["", f"## {r.case_id}", f"{r.dataset or ''} / {r.category or ''}".strip(" /")]
            if r.expected:
                md.append(f"Reference abnormal state: {r.expected}")
            for n in r.notes:
                md.append(f"- note: {n}")
            last = r.case_id
        md += ["", f"### {r.shot}, {r.variant}: {_verdict(r)}"]
        if r.skipped:
            md.append(f"_{r.skipped}_")
            continue
        md.append(" ".join(f"![{role}]({rel[p]})" for role, p in r.images))
        md.append("")
        md.append("> " + (r.prompt or "").replace("\n", "\n> "))
        md.append("")
        md.append(f"**error:** {r.error}" if r.error else (r.reply or "").strip())
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    # html
    from genad.report.html import render

    shown, last = [], None
    for r in runs:
        shown.append(
            {
                "first": r.case_id != last,
                "case_id": r.case_id,
                "dataset": r.dataset or "",
                "category": r.category or "",
                "expected": r.expected,
                "notes": r.notes,
                "shot": r.shot,
                "variant": r.variant,
                "verdict": _verdict(r),
                "skipped": r.skipped,
                "prompt": r.prompt or "",
                "error": r.error,
                "reply": r.reply or "",
                "images": [] if r.skipped else [(role, rel[p]) for role, p in r.images],
            }
        )
        last = r.case_id
    page = render(
        "cases.html.j2",
        title="GPT-4V case suite",
        model=model,
        cols=cols,
        summary=summary,
        runs=shown,
        usage=None if usage is None else usage_line(usage, note),
    )
    (out / "index.html").write_text(page, encoding="utf-8")


def run_cases(runs: list[CaseRun], client: Any, on_done: Any = None) -> Exception | None:
    """Ask the model every runnable prompt (concurrently, cached); fill in replies in place.
    Returns what stopped it (a spent budget, a failing server, ignored images), if anything did."""
    from genad.engines.lmm.base import is_stop
    from genad.engines.lmm.detector import _answer_dict
    from genad.engines.lmm.parse import parse_answer

    todo = [r for r in runs if not r.skipped]
    encoded: dict[Path, dict[str, Any]] = {}  # each image is read and encoded once, not per prompt
    for r in todo:
        for _, p in r.images:
            if p not in encoded:
                encoded[p] = client.user(p)["content"][0]
    requests = [{"messages": [client.user(*[encoded[p] for _, p in r.images], r.prompt or "")]} for r in todo]
    replies = client.chat_many(requests, on_done=on_done)
    stop = None
    for r, rep in zip(todo, replies, strict=True):
        if isinstance(rep, Exception):
            r.error = str(rep) if isinstance(rep, GenadError) else f"{type(rep).__name__}: {rep}"
            if is_stop(rep) and stop is None:
                stop = rep
            continue
        r.reply, r.cached, r.usage = rep.text, rep.cached, rep.usage.__dict__.copy()
        r.parsed = _answer_dict(parse_answer(rep.text, rep.data, prompt=r.prompt))
    return stop


@app.command("cases")
@lmm_flags
def cases(
    root: Annotated[Path, typer.Argument(help="The suite's folder (Cases/ or its parent).")],
    variant: Annotated[str, typer.Option("--variant", help="naive, class, expertise or all.")] = "all",
    shots: Annotated[str, typer.Option("--shots", help="zero, one or all (zero-/one-shot prompts).")] = "all",
    case: Annotated[
        list[str] | None, typer.Option("--case", help="Only cases whose id contains this (repeatable).")
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for answers.jsonl, report.md, index.html and images.")
    ] = Path("cases-out"),
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Build and report the prompts without calling a model.")
    ] = False,
    concurrency: Annotated[int | None, typer.Option("--concurrency", help="Requests in flight at once.")] = None,
    lmm_flags: dict[str, Any] | None = None,
) -> None:
    """Run the GPT-4V study's cases with their own prompts and write a report of the answers."""
    from genad.io.gpt4v_cases import load_gpt4v_cases

    if variant not in (*STUDY_VARIANTS, "all"):
        raise GenadError(f"--variant must be naive, class, expertise or all, not {variant!r}")
    shot_map = {"zero": ["zero-shot"], "one": ["one-shot"], "all": ["zero-shot", "one-shot"]}
    if shots not in shot_map:
        raise GenadError(f"--shots must be zero, one or all, not {shots!r}")
    all_cases = load_gpt4v_cases(root)
    if case:
        all_cases = [c for c in all_cases if any(s.lower() in c.id.lower() for s in case)]
        if not all_cases:
            raise GenadError(f"no case id contains {', '.join(case)}: see {out}/report.md of a full run for ids")
    variants = list(STUDY_VARIANTS) if variant == "all" else [variant]
    runs = plan_runs(all_cases, variants, shot_map[shots])
    n_todo = sum(1 for r in runs if not r.skipped)
    if dry_run:
        write_reports(runs, out)
        typer.echo(f"{n_todo} prompts from {len(all_cases)} cases written to {out}/report.md (not asked)")
        return
    from genad.engines.lmm.provider import LMMClient

    more = {"max_concurrency": concurrency} if concurrency else {}
    cfg = lmm_config(lmm_flags or {}, **more)
    client = LMMClient(cfg)
    done = [0]

    def progress(i: int, rep: Any) -> None:
        done[0] += 1
        typer.echo(f"\r{done[0]}/{n_todo} answers", nl=False, err=True)

    stop = run_cases(runs, client, on_done=progress)
    typer.echo("", err=True)
    write_reports(runs, out, client.usage_total, client.price_note, cfg.model)
    counts: dict[str, int] = {}
    for r in runs:
        counts[_verdict(r)] = counts.get(_verdict(r), 0) + 1
    typer.echo(f"{len(all_cases)} cases, {n_todo} prompts: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    typer.echo(usage_line(client.usage_total, client.price_note))
    typer.echo(f"report: {out / 'report.md'} and {out / 'index.html'}; answers: {out / 'answers.jsonl'}")
    if stop is not None:
        raise stop
