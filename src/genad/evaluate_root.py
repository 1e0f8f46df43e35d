"""Benchmarks over a root of categories (MVTec AD's 15, VisA's 12, ...): each category is one
run of the benchmark protocol (genad.evaluate.run_benchmark) in its own run folder, and the root
summary holds every category's summary and the mean of each figure over the categories, as
papers report it.

    root = run_categories("data/mvtec", "baseline", shots=4, run_dir="runs/mvtec")
    root["mean"]["image_auroc"], root["categories"]["bottle"]["aupro"]

* Each category is one independent call, `run_category`: plain arguments in (folders,
  detector name and options, shots, seed, limit), a plain JSON-able dict out, with a fresh
  detector (built by name, or a clone of the instance given). Nothing is shared between
  categories, so they can run anywhere in any order: with `ray=ADDRESS` each is one task on
  a Ray cluster (genad.run.ray_backend).
* `run_dir/<category>/` is that category's run folder (results.jsonl, maps/, summary.json,
  curves.json); `run_dir/categories.json` the root summary so far, rewritten after each
  category. With `resume`, a category whose run is complete with the same settings is skipped
  (its stored summary counts) and a partial one continues.
* A category that fails (an unreadable folder, a mask of the wrong size, every image failing)
  is reported as failed, with one line, and the others still run.
* The mean of each figure is taken over the categories that have it (pixel figures need
  masks); `mean["over"]` says over how many.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from genad.atomic import atomic_write_text
from genad.detector import Detector
from genad.errors import GenadError
from genad.evaluate import (
    build_detector,
    check_detector,
    check_run_dir,
    check_settings,
    finished_summary,
    public_params,
    run_benchmark,
    run_settings,
)
from genad.io.mvtec import categories as category_folders
from genad.types import jsonable

log = logging.getLogger(__name__)

ROOT_FILE = "categories.json"  # the root summary, in the root's run folder
FIGURES = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "aupro")
DECISION_FIGURES = ("precision", "recall", "f1", "accuracy", "false_alarm_rate")
# the per-category table (console, CSV, markdown, HTML overview): one row per category, then the mean
COLUMNS = ("category", "status", "n_images", "n_failed", *FIGURES, "decision_f1", "note")


# -- which categories ------------------------------------------------------------------------
def category_dirs(root: Path | str, names: Sequence[str] | None = None) -> list[Path]:
    """The category folders of `root` (all, sorted, or those `names` picks, in that order)."""
    root = Path(root)
    if not root.exists():
        raise GenadError(f"no such folder: {root}")
    found = category_folders(root)
    if not found:
        raise GenadError(
            f"{root} holds no MVTec-style category: expected {root}/<category>/test/<type>/<images>, "
            "see `genad eval --help`"
        )
    if names is None:
        return found
    wanted = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    if not wanted:
        raise GenadError("--categories names no category: give names separated by commas, e.g. --categories a,b")
    by_name = {c.name: c for c in found}
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise GenadError(f"no category {', '.join(repr(n) for n in unknown)} in {root}: it holds {', '.join(by_name)}")
    return [by_name[n] for n in wanted]


# -- one category ----------------------------------------------------------------------------
def run_category(
    data_dir: Path | str,
    run_dir: Path | str,
    detector: str | Detector = "embedded",
    detector_params: dict[str, Any] | None = None,
    shots: int = 0,
    seed: int = 0,
    limit: int | None = None,
    resume: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate one category from start to end, in its own run folder `run_dir`; returns
    {"category", "data_dir", "run_dir", "status", "summary", "error"} (plain, JSON-able).

    status: "done" (run now; `summary` is run_benchmark's), "skipped" (`resume` and `run_dir`
    already holds a complete run with these settings: its stored summary) or "failed"
    (`error`, one line; `summary` too where the run finished but every image failed). The
    category's own failures never raise; Ctrl-C / SIGTERM (KeyboardInterrupt) do."""
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    out: dict[str, Any] = {
        "category": data_dir.name,
        "data_dir": str(data_dir),
        "run_dir": str(run_dir),
        "status": "failed",
        "summary": None,
        "error": None,
    }
    try:
        det = build_detector(detector, detector_params)
        if isinstance(detector, Detector):
            det = det.clone()  # a fresh detector per category: nothing fitted carries over
        if resume:
            done = finished_summary(run_dir, run_settings(data_dir, det, shots, seed, limit))
            if done is not None:
                return {**out, "status": "skipped", "summary": done}
        run = run_benchmark(
            data_dir, det, shots=shots, seed=seed, limit=limit, run_dir=run_dir, resume=resume, progress=progress
        )
    except GenadError as e:
        return {**out, "error": str(e)}
    except Exception as e:  # a bug or an OS error in one category must not lose the others
        log.debug("category %s failed", data_dir, exc_info=True)
        return {**out, "error": f"{type(e).__name__}: {e}"}
    s = run.summary
    if s["n_images"] and s["n_failed"] == s["n_images"]:
        first = (s["failed"][0].get("error") if s.get("failed") else None) or "no score"
        return {**out, "summary": s, "error": f"all {s['n_images']} images failed (first: {first})"}
    return {**out, "status": "done", "summary": s}


# -- the root --------------------------------------------------------------------------------
def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v else None


def _decision(summary: dict[str, Any]) -> dict[str, Any]:
    d = summary.get("decision")
    return d if isinstance(d, dict) else {}


def mean_figures(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The mean of each figure over `summaries`, each over those that have it; `over` says
    over how many ("decision.f1" for the decision figures), `n_categories` of how many."""
    out: dict[str, Any] = {}
    over: dict[str, int] = {}

    def mean(key: str, values: list[float | None]) -> float | None:
        have = [v for v in values if v is not None]
        over[key] = len(have)
        return statistics.fmean(have) if have else None

    for k in FIGURES:
        out[k] = mean(k, [_num(s.get(k)) for s in summaries])
    decisions = [_decision(s) for s in summaries]
    out["decision"] = {k: mean(f"decision.{k}", [_num(d.get(k)) for d in decisions]) for k in DECISION_FIGURES}
    out["n_categories"] = len(summaries)
    out["over"] = over
    return out


def root_summary(root: Path | str, outcomes: Sequence[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """The root summary from the categories' outcomes (run_category's dicts), in their order:
    `categories` {name: summary} (every category with one), `failed` {name: error}, `status`
    {name: done | skipped | failed}, `mean` (over the categories that did not fail), totals."""
    cats = {o["category"]: o["summary"] for o in outcomes if o.get("summary") is not None}
    failed = {o["category"]: o["error"] for o in outcomes if o["status"] == "failed"}
    ok = [o["summary"] for o in outcomes if o["status"] != "failed"]
    return jsonable(
        {
            "root": str(root),
            **settings,
            "categories": cats,
            "mean": mean_figures(ok),
            "status": {o["category"]: o["status"] for o in outcomes},
            "failed": failed,
            "n_categories": len(outcomes),
            "n_images": sum(int(s.get("n_images") or 0) for s in cats.values()),
            "n_failed_images": sum(int(s.get("n_failed") or 0) for s in cats.values()),
            "seconds": round(sum(float(s.get("seconds") or 0.0) for s in cats.values()), 3),
        }
    )


def run_categories(
    root: Path | str,
    detector: str | Detector = "embedded",
    detector_params: dict[str, Any] | None = None,
    *,
    categories: Sequence[str] | None = None,
    shots: int = 0,
    seed: int = 0,
    limit: int | None = None,
    run_dir: Path | str | None = None,
    resume: bool = False,
    progress: bool = True,
    on_start: Callable[[str, int, int], None] | None = None,
    on_done: Callable[[dict[str, Any]], None] | None = None,
    ray: str | None = None,
) -> dict[str, Any]:
    """Evaluate every category of `root` (or those `categories` names), one `run_category`
    each in `run_dir/<category>/`, and return the root summary (see root_summary). `limit`
    applies per category. `on_start(name, i, n)` before and `on_done(outcome)` after each.
    `ray`: the address of a Ray cluster that runs each category as one task
    (genad.run.ray_backend.map_tasks; the folders must be at the same paths on its nodes):
    the categories run at once and `on_start` comes when a category's outcome does.
    Raises GenadError, before any work, for a bad root or name, a detector this protocol
    cannot run, or a category folder that already holds results (without `resume`) or
    results of other settings (with it)."""
    check_settings(shots, limit)
    if ray is not None:  # joined first: a wrong address fails before anything is written
        from genad.run.ray_backend import connect

        connect(ray)
    cats = category_dirs(root, categories)
    configured = build_detector(detector, detector_params)  # checked once; each category gets a fresh one
    check_detector(configured, shots)
    run_dir = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="genad-run-"))
    for cat in cats:  # one line now rather than the same failure in every category later
        check_run_dir(run_dir / cat.name, run_settings(cat, configured, shots, seed, limit), resume)
    settings = {
        "detector": configured.name,
        "params": public_params(configured.params),
        "shots": shots,
        "seed": seed,
        "limit": limit,
        "run_dir": str(run_dir),
    }
    # plain arguments for each category: the name and options (built afresh), or the instance (cloned)
    params = None if isinstance(detector, Detector) else dict(detector_params or {})
    by_index: dict[int, dict[str, Any]] = {}
    summary = root_summary(root, [], settings)

    def finished(i: int, outcome: dict[str, Any]) -> None:
        nonlocal summary
        by_index[i] = outcome
        summary = root_summary(root, [by_index[k] for k in sorted(by_index)], settings)  # in category order
        atomic_write_text(run_dir / ROOT_FILE, json.dumps(summary, indent=2), fsync=False)
        if on_done is not None:
            on_done(outcome)

    if ray is not None:
        _run_on_ray(ray, cats, run_dir, configured, detector, params, shots, seed, limit, resume, on_start, finished)
        return summary
    for i, cat in enumerate(cats):
        if on_start is not None:
            on_start(cat.name, i, len(cats))
        outcome = run_category(
            cat, run_dir / cat.name, detector, params, shots, seed, limit, resume=resume, progress=progress
        )
        finished(i, outcome)
    return summary


def _run_on_ray(
    address: str,
    cats: list[Path],
    run_dir: Path,
    configured: Detector,
    detector: str | Detector,
    params: dict[str, Any] | None,
    shots: int,
    seed: int,
    limit: int | None,
    resume: bool,
    on_start: Callable[[str, int, int], None] | None,
    finished: Callable[[int, dict[str, Any]], None],
) -> None:
    """Each category as one Ray task (run_category on a worker, its folders at absolute paths);
    outcomes handed to `finished` as they come."""
    from genad.run.ray_backend import map_tasks, uses_lmm

    if isinstance(detector, Detector):  # a task builds its own from the name and the options
        declared = type(detector).declared
        params = {
            k: v
            for k, v in detector.get_params().items()
            if k in declared and (declared[k].public or (declared[k].secret and v is not None))
        }
        detector = detector.name
    calls = [
        ((cat.absolute(), (run_dir / cat.name).absolute(), detector, params, shots, seed, limit), {"resume": resume})
        for cat in cats
    ]
    for i, outcome, error in map_tasks(address, run_category, calls, lmm=uses_lmm(configured)):
        cat = cats[i]
        if on_start is not None:
            on_start(cat.name, i, len(cats))
        if outcome is None:  # the task itself failed (its worker died): the category failed
            outcome = {
                "category": cat.name,
                "data_dir": str(cat.absolute()),
                "run_dir": str((run_dir / cat.name).absolute()),
                "status": "failed",
                "summary": None,
                "error": f"Ray task failed: {error}",
            }
        finished(i, outcome)


# -- the table -------------------------------------------------------------------------------
def mean_note(mean: dict[str, Any]) -> str:
    """The mean row's note: over how many categories, and the figures averaged over fewer."""
    n = mean["n_categories"]
    fewer: dict[int, list[str]] = {}
    for k, c in mean["over"].items():
        if c < n and (k in FIGURES or k == "decision.f1"):
            fewer.setdefault(c, []).append(k.replace(".", "_"))
    note = f"over {n} {'category' if n == 1 else 'categories'}"
    parts = [f"{', '.join(ks)} over {c}" for c, ks in sorted(fewer.items(), reverse=True)]
    return note + (f" ({'; '.join(parts)})" if parts else "")


def table_rows(root: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-category table (COLUMNS): one row per category in run order, then the mean
    (status "mean"; its note says over how many categories)."""
    rows = []
    for name, status in root["status"].items():
        s = root["categories"].get(name) or {}
        dec = _decision(s)
        rows.append(
            {
                "category": name,
                "status": status,
                "n_images": s.get("n_images"),
                "n_failed": s.get("n_failed"),
                **{k: s.get(k) for k in FIGURES},
                "decision_f1": dec.get("f1"),
                "note": root["failed"].get(name, ""),
            }
        )
    m = root["mean"]
    rows.append(
        {
            "category": "mean",
            "status": "mean",  # marks the row (a category may be called "mean")
            "n_images": None,
            "n_failed": None,
            **{k: m.get(k) for k in FIGURES},
            "decision_f1": m["decision"].get("f1"),
            "note": mean_note(m),
        }
    )
    return rows


def to_csv(root: dict[str, Any]) -> str:
    """The table as CSV (full precision; empty cells for what is unknown)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in table_rows(root):
        w.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    text = f"{v:.4f}" if isinstance(v, float) else str(v)
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(root: dict[str, Any]) -> str:
    """The table in markdown for a paper: figures to 4 decimals, the mean in bold, notes below."""
    cols = ["category", "images", *FIGURES, "decision_f1"]
    lines = ["| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]
    notes: list[str] = []
    for row in table_rows(root):
        cells = [_cell(row["category"]), _cell(row["n_images"]), *(_cell(row[k]) for k in (*FIGURES, "decision_f1"))]
        if row["status"] == "mean":
            cells = [f"**{c}**" if c not in ("–", "") else c for c in cells]
            cells[1] = ""
            notes.insert(0, f"Mean {row['note']}.")
        elif row["status"] == "failed":
            notes.append(f"{_cell(row['category'])} failed: {_cell(row['note'])}")
        lines.append("| " + " | ".join(cells) + " |")
    shots = root.get("shots")
    notes.append(
        f"Detector {root.get('detector')}, {f'{shots}-shot' if shots else 'zero-shot'}, seed {root.get('seed')}"
        + (f", {root['limit']} images per category" if root.get("limit") else "")
        + "."
    )
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"
