"""`genad eval` on series, point clouds and videos: genad.evaluate_modalities through the same
run folder, interrupt and resume handling as images, and a table of the summary's figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from genad.cli.evaluate import _fmt, _write, fitted_model, in_run_folder
from genad.detector import Detector
from genad.errors import GenadError

#: rows of the per-series / per-video table printed; the JSON holds them all
MAX_ROWS = 20
_UNITS = {"timeseries": "series", "pointcloud": "clouds", "video": "videos"}


def evaluate_modality(
    data_dir: Path,
    kind: str,
    detector: str | None,
    params: dict[str, Any],
    model: Path | None,
    image_only: dict[str, Any],
    shots: int,
    seed: int,
    limit: int | None,
    run_dir: Path | None,
    resume: bool,
    json_out: Path | None,
    quiet: bool,
) -> None:
    """`genad eval` on series, point clouds or videos (`kind` as genad.io.datasets.data_kind
    names it): genad.evaluate_modalities.run_modality_benchmark, its figures printed, --json
    written; exit code 1 when every sample failed, 130 when interrupted (the run folder kept).
    `image_only`: the options that apply to MVTec-style images only, by flag (refused when
    given); `model`: a saved model to score with (no fitting)."""
    from genad.evaluate_modalities import run_modality_benchmark

    given = [flag for flag, value in image_only.items() if value is not None]
    if given:
        one = len(given) == 1
        raise GenadError(
            f"{', '.join(given)} {'is' if one else 'are'} for MVTec-style images and {data_dir} holds {kind} data: "
            f"drop {'it' if one else 'them'} (--json writes the summary)"
        )
    chosen: str | Detector | None = detector
    if model is not None:
        chosen, params = fitted_model(model, detector, params, shots), {}

    def go(folder: Path) -> Any:
        return run_modality_benchmark(
            data_dir,
            chosen,
            params,
            shots=shots,
            seed=seed,
            limit=limit,
            run_dir=folder,
            resume=resume,
            progress=not quiet,
            kind=kind,
        )

    def finish(run: Any) -> None:
        print_modality_summary(run.summary)
        if json_out is not None:
            _write(json_out, json.dumps(run.summary, indent=2), "summary")

    in_run_folder(data_dir, run_dir, go, finish, "n_samples")


def _figures_table(s: dict[str, Any], keys: tuple[str, ...]) -> Any:
    """One row of figures, narrow enough for 80 columns: the names wrapped at their underscores."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, padding=(0, 0, 0, 1), show_edge=False, pad_edge=False)
    for k in keys:
        table.add_column(k.replace("_", "\n"), justify="right", no_wrap=True, min_width=6)
    table.add_row(*(_fmt(s.get(k)) for k in keys))
    return table


def print_modality_summary(s: dict[str, Any]) -> None:
    """The run in one line, a table of the headline figures, one of the detector's own
    decisions, the first rows per series / defect type / video, time and memory."""
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from genad.evaluate_modalities import DECISIONS, HEADLINE

    console = Console()
    modality = s["modality"]
    shots = s.get("shots") or 0
    console.print(
        f"{s['detector']} on {s['data_dir']} ({s['kind']}): {s['n_samples']} {_UNITS[modality]}"
        f" ({s['n_anomalous']} anomalous), "
        + (f"{shots}-shot from {s['reference_source']}, seed {s['seed']}" if shots else "zero-shot")
        + (f", {s['n_failed']} FAILED" if s["n_failed"] else ""),
        highlight=False,
        markup=False,
    )
    headline = HEADLINE[modality] + (("ucr_hit_rate",) if "ucr_hit_rate" in s else ())
    console.print(_figures_table(s, headline))
    console.print("the detector's own decisions:", highlight=False)
    console.print(_figures_table(s, DECISIONS[modality]))
    if modality == "timeseries":
        rows = s.get("per_series", [])
        table = Table(
            "series", "points", "point\nauroc", "point\nap", "pa_f1", "range\nf1", "decision", box=box.SIMPLE_HEAD
        )
        table.columns[0].overflow = "fold"
        for r in rows[:MAX_ROWS]:
            table.add_row(
                escape(r["id"]),
                str(r["n"]),
                *(_fmt(r.get(k)) for k in ("auroc", "ap", "pa_f1", "range_f1")),
                r["error"] and f"error: {escape(r['error'])}" or ("anomalous" if r.get("decision") else "normal"),
            )
    elif modality == "pointcloud":
        rows = list(s.get("per_type", {}).items())
        table = Table("defect type", "n", "object_auroc", "mean score", box=box.SIMPLE_HEAD)
        for t, e in rows:
            table.add_row(escape(t), str(e["n"]), _fmt(e["object_auroc"]), _fmt(e["mean_score"]))
    else:
        rows = s.get("per_video", [])
        table = Table(
            "video",
            "frames",
            "frame\nauroc",
            "peak\nframe",
            "decision",
            "ranges",
            "flagged\nin/out",
            box=box.SIMPLE_HEAD,
        )
        table.columns[0].overflow = "fold"
        for r in rows[:MAX_ROWS]:
            if r["error"]:
                table.add_row(escape(r["id"]), "", "", "", f"error: {escape(r['error'])}", "", "")
                continue
            flagged = "" if r["flagged_in"] is None else f"{r['flagged_in']}/{r['labelled_frames']}, {r['flagged_out']}"
            table.add_row(
                escape(r["id"]),
                str(r["frames"]),
                _fmt(r["frame_auroc"]),
                str(r["peak_frame"]) + ("" if r["peak_in_event"] is None else (" (in)" if r["peak_in_event"] else "")),
                "anomalous" if r["decision"] else "normal",
                escape(str(r["ranges"] or "none")),
                flagged,
            )
    console.print(table)
    if modality != "pointcloud" and len(rows) > MAX_ROWS:
        console.print(f"... and {len(rows) - MAX_ROWS} more (all of them in --json)", highlight=False)
    console.print(
        f"{s['seconds']:.1f} s"
        + (f", {s['samples_per_second']:.2f} {_UNITS[modality]}/s" if s.get("samples_per_second") else "")
        + f", peak memory {s['peak_rss_mb']:.0f} MB"
        + (f", {s['n_resumed']} resumed" if s.get("n_resumed") else ""),
        highlight=False,
    )
    if s.get("usage"):
        u = s["usage"]
        console.print(
            f"LMM: {u['calls']} calls ({u['cached_calls']} cached), {u['prompt_tokens']}+{u['completion_tokens']} "
            f"tokens, ~${u['cost_usd']:.4f}",
            highlight=False,
        )
    for f in s.get("failed", [])[:5]:
        console.print(f"[red]failed[/red] {escape(f['id'])}: {escape(f['error'])}", highlight=False)
