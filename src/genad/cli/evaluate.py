"""`genad eval`: the benchmark protocol on an MVTec-style folder, with a JSON summary."""

from __future__ import annotations

import importlib.util
import json
import shlex
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from genad import registry
from genad.cli.app import app
from genad.cli.detect import MAX_TOKENS_HELP, max_tokens_option, parse_params, saved_model
from genad.detector import Detector
from genad.errors import GenadError
from genad.run import stops_on_signals


def _fmt(v: Any) -> str:
    return "n/a" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def print_summary(s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    head = (
        f"{s['detector']} on {s['data_dir']}: {s['n_images']} images"
        f" ({s['n_anomalous']} anomalous), "
        + (
            f"fitted before on {s['fitted_before']['references']} references"
            if s.get("fitted_before")
            else f"{s['shots']}-shot, seed {s['seed']}"
        )
        + (f", {s['n_failed']} FAILED" if s["n_failed"] else "")
    )
    console.print(head)
    main = Table(show_header=True)
    for k in ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "aupro"):
        main.add_column(k, justify="right")
    main.add_row(
        *(_fmt(s.get(k)) for k in ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "aupro"))
    )
    console.print(main)
    dm = s.get("decision")
    if dm:
        console.print(
            f"the detector's own decisions: precision {dm['precision']:.3f}, recall {dm['recall']:.3f}, "
            f"F1 {dm['f1']:.3f}, accuracy {dm['accuracy']:.3f} ({dm['false_alarms']} false alarms, "
            f"{dm['misses']} misses of {dm['n']})"
        )
        if dm.get("tp") is not None:
            far = dm.get("false_alarm_rate")
            console.print(
                f"  TP {dm['tp']}  FP {dm['fp']}  FN {dm['fn']}  TN {dm['tn']}"
                + (f"; false-alarm rate {100 * far:.1f}%" if far is not None else "")
                + (
                    f"; at threshold {dm['threshold_normalized']:g} (0-1 score)"
                    if dm.get("threshold_normalized") is not None
                    else ""
                )
                + (f", raw {dm['threshold']:.4g}" if dm.get("threshold") is not None else "")
            )
    best_t = s.get("image_f1_threshold_normalized")
    if best_t is not None:
        console.print(f"best F1 in hindsight ({_fmt(s.get('image_f1_max'))}) at -t {best_t:.4f}")
    per = Table("defect type", "n", "image_auroc", "pixel_auroc", "aupro", "mean score")
    for t, e in s.get("per_type", {}).items():
        per.add_row(
            t, str(e["n"]), _fmt(e["image_auroc"]), _fmt(e["pixel_auroc"]), _fmt(e["aupro"]), _fmt(e["mean_score"])
        )
    console.print(per)
    ips = s.get("images_per_second")
    console.print(
        f"{s['seconds']:.1f} s"
        + (f", {ips:.2f} images/s" if ips else "")
        + f", peak memory {s['peak_rss_mb']:.0f} MB"
        + (f", {s['n_resumed']} resumed" if s.get("n_resumed") else "")
    )
    if s.get("usage"):
        u = s["usage"]
        console.print(
            f"LMM: {u['calls']} calls ({u['cached_calls']} cached), {u['prompt_tokens']}+{u['completion_tokens']} tokens, ~${u['cost_usd']:.4f}"
        )
    for f in s.get("failed", [])[:5]:
        console.print(f"[red]failed[/red] {f['id']}: {f['error']}")


@app.command("eval")
@stops_on_signals
def evaluate(
    data_dir: Path = typer.Argument(
        ...,
        help="An MVTec-style folder: test/good, test/<defect>, optional train/good and ground_truth/<defect>/<name>_mask.png; or a root of several such categories (each is run on its own). Also: a NAB folder, UCR files, a labelled CSV, a point-cloud folder or videos with frame labels (see below).",
        show_default=False,
    ),
    detector: str = typer.Option(
        None,
        "--detector",
        "-d",
        show_default=False,
        help="Detector name (see `genad detectors`); default: the data's modality's (embedded for images, ts-matrix-profile for series, pointcloud, video).",
    ),
    shots: int = typer.Option(
        0,
        "--shots",
        "-k",
        help="Normal references per run (0 = zero-shot). Drawn from train/good, or from test/good (and then not scored) when there is no train split.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for drawing references and the --limit subsample."),
    limit: int = typer.Option(
        None,
        "--limit",
        "-l",
        show_default=False,
        help="Score only N test samples (stratified by defect type; normal/anomalous for series and videos).",
    ),
    json_out: Path = typer.Option(
        None,
        "--json",
        show_default=False,
        help='Write the summary JSON to this file (a root of categories: {"categories": {name: summary}, "mean": {...}, ...}).',
    ),
    categories: str = typer.Option(
        None,
        "--categories",
        show_default=False,
        help="A root of several categories: run only these, e.g. bottle,cable (default: all).",
    ),
    csv_out: Path = typer.Option(
        None,
        "--csv",
        show_default=False,
        help="A root of categories: write the per-category table, with a mean row, as CSV.",
    ),
    markdown_out: Path = typer.Option(
        None,
        "--markdown",
        show_default=False,
        help="A root of categories: write the per-category table, with the mean, as markdown (for papers).",
    ),
    run_dir: Path = typer.Option(
        None,
        "--run-dir",
        show_default=False,
        help="Keep results.jsonl, maps/ and summary.json here (needed for --resume); a root of categories keeps each in DIR/<category>/. Without it the run uses a temporary folder, removed at the end (kept only when the run is interrupted, and then named).",
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the run in --run-dir: score only what is missing or failed (a root of categories: complete categories are skipped).",
    ),
    report: Path = typer.Option(
        None,
        "--report",
        show_default=False,
        help="Write an HTML report (index.html) to this folder (a root of categories: an overview linking DIR/<category>/index.html).",
    ),
    param: list[str] = typer.Option(
        None, "--param", "-p", show_default=False, help="Detector option as key=value (repeatable)."
    ),
    model: Path = typer.Option(
        None, "--model", show_default=False, help="Score with a model saved by `genad fit --save` (no fitting)."
    ),
    max_tokens: int = typer.Option(
        None, "--max-tokens", min=1, max=1_000_000, show_default=False, help=MAX_TOKENS_HELP
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ray: str = typer.Option(
        None,
        "--ray",
        metavar="ADDRESS",
        show_default=False,
        help="Run on an existing Ray cluster (its head's host:port, or auto): each category of a root as one task; one category's images in chunks as tasks, results written here as they come. Paths must be the same on every node. Needs pip install 'genad\\[ray]'.",
    ),
) -> None:
    """Benchmark a detector on a labelled dataset and print image/pixel AUROC, AP, F1-max, AUPRO (or the series, point-cloud and video figures).

    Examples:

      genad eval data/magnetic_tile -d baseline --limit 100 --json mt.json

      genad eval /data/mvtec/bottle --shots 4 --seed 1 --report bottle-report

      genad eval /data/mvtec/bottle --detector lmm --run-dir runs/lmm --resume

      genad eval /data/mvtec -d baseline --run-dir runs/mvtec --csv mvtec.csv --markdown mvtec.md

    The data folder is MVTec-AD style (MVTec AD, VisA, MPDD, BTAD, magnetic tile). Results are written as they come (results.jsonl in --run-dir), so an interrupted run (Ctrl-C or SIGTERM: it stops within moments, exit code 130) continues with --resume and paid LMM calls are never repeated.

    Series, point clouds and videos: the kind of data is found from its layout and -d defaults to that modality's detector; they go through the same run loop (--run-dir, --resume, --json, --shots, --limit as for images; --report, --csv, --markdown and --categories are for images):

      genad eval data/nab --json nab.json

      genad eval data/ucr -d ts-iforest

      genad eval machine.csv

      genad eval parts/ --shots 4 -p image_detector=baseline

      genad eval clips/ --run-dir runs/clips

    NAB: data/<group>/*.csv with labels/combined_windows.json. UCR: ID_UCR_Anomaly_NAME_trainEnd_anomStart_anomEnd.txt files, or one. A labelled series: a .csv/.tsv with a 0/1 is_anomaly, anomaly or label column, or a folder of them. Series report point AUROC/AP, point-adjusted F1, range precision/recall/F1 and the NAB score (UCR: also the hit rate). Point clouds: test/good and test/<defect> of .ply/.pcd/.xyz/.pts/.npy files with point labels in a per-point anomaly or label property, optional train/good, or MVTec 3D-AD's test/<type>/xyz/*.tiff with gt/*.png: object and point AUROC/AP. Videos: test/<clip>.mp4 or test/<clip>/<frames> with frame_labels/<clip>.npy|.txt (0/1 per frame) or frame_labels.json (each clip's anomalous start, end frame ranges), optional train/ normal clips: frame AUROC/AP, flagged frames, verdicts per video.

    A root that holds several categories runs each on its own (a fresh detector, its own run folder DIR/<category>/; --limit applies per category) and prints a per-category table with the mean of each figure over the categories, as papers report it. A category that fails is reported as failed and the others still run (exit code 1).
    """
    if resume and run_dir is None:
        raise GenadError("--resume needs --run-dir: the folder of the run to continue")
    params = max_tokens_option(parse_params(param), max_tokens)
    from genad.io.datasets import data_kind

    kind = data_kind(data_dir)  # images (as below), or series, point clouds, videos
    if kind != "images":
        from genad.cli.eval_modalities import evaluate_modality

        image_only = {"--categories": categories, "--csv": csv_out, "--markdown": markdown_out, "--report": report}
        image_only["--ray"] = ray
        evaluate_modality(
            data_dir, kind, detector, params, model, image_only, shots, seed, limit, run_dir, resume, json_out, quiet
        )
        return
    named, detector = detector, detector or registry.DEFAULT_BY_MODALITY["image"]
    picked = None if categories is None else categories.split(",")
    if _several_categories(data_dir, picked):
        if model is not None:
            raise GenadError(
                f"--model is fitted on one category and {data_dir} holds several: evaluate one category folder "
                "with --model, or leave --model out to fit each category afresh"
            )
        _evaluate_root(
            data_dir,
            detector,
            params,
            picked,
            shots=shots,
            seed=seed,
            limit=limit,
            run_dir=run_dir,
            resume=resume,
            outputs=(json_out, csv_out, markdown_out, report),
            quiet=quiet,
            ray=ray,
        )
        return
    if csv_out is not None or markdown_out is not None:
        raise GenadError(
            "--csv and --markdown write the per-category table of a root of several categories: "
            "for one category use --json"
        )
    from genad.evaluate import run_benchmark

    chosen: str | Detector = detector
    if model is not None:
        chosen, params = fitted_model(model, named, params, shots), {}

    def go(folder: Path) -> Any:
        return run_benchmark(
            data_dir,
            detector=chosen,
            detector_params=params,
            shots=shots,
            seed=seed,
            limit=limit,
            run_dir=folder,
            resume=resume,
            progress=not quiet,
            ray=ray,
        )

    in_run_folder(data_dir, run_dir, go, lambda run: _finish(run, json_out, report), "n_images")


def fitted_model(model: Path, named: str | None, params: dict[str, Any], shots: int) -> Detector:
    """The saved model `--model` names, for scoring without a fit (--shots is refused)."""
    if shots:
        raise GenadError("--model is already fitted: give --shots (fit on the data's normals) or --model, not both")
    return saved_model(model, named, None, params, {})


def in_run_folder(
    data_dir: Path, run_dir: Path | None, go: Callable[[Path], Any], finish: Callable[[Any], None], count_key: str
) -> None:
    """`run = go(folder)` then `finish(run)`, in `run_dir` or, without one, a temporary folder
    removed at the end (results always go to disk: maps stay out of memory, an interrupted run
    can resume). Ctrl-C keeps the folder, says how many results it holds and how to continue,
    and exits 130; exit code 1 when every one of the summary's `count_key` failed."""
    temp = run_dir is None
    folder = Path(tempfile.mkdtemp(prefix="genad-run-")) if run_dir is None else run_dir
    keep = False
    try:
        try:
            run = go(folder)
        except KeyboardInterrupt:
            keep = True
            typer.secho(
                f"interrupted: {_count_results(folder)} result(s) so far are kept in {folder}"
                + (" (a temporary folder)" if temp else ""),
                err=True,
            )
            typer.secho(f"to continue: {_resume_command(data_dir, folder)}", err=True)
            raise typer.Exit(130) from None
        finish(run)
        typer.echo(f"run dir: {run.run_dir}" if not temp else "run dir: not kept (pass --run-dir DIR to keep it)")
    finally:
        if temp and not keep:
            shutil.rmtree(folder, ignore_errors=True)
    if run.summary[count_key] and run.summary["n_failed"] == run.summary[count_key]:
        raise typer.Exit(1)


def _several_categories(data_dir: Path, picked: list[str] | None) -> bool:
    """True when `data_dir` is a root of categories to run one by one: it holds several, or
    --categories picks some (refused for a folder that is itself one category)."""
    from genad.io.mvtec import categories, is_mvtec_root

    one = data_dir.is_dir() and is_mvtec_root(data_dir)
    if picked is not None:
        if one:
            raise GenadError(f"{data_dir} is one category: --categories picks from a root that holds several (drop it)")
        return True
    return data_dir.is_dir() and not one and len(categories(data_dir)) > 1


def _evaluate_root(
    data_dir: Path,
    detector: str,
    params: dict[str, Any],
    picked: list[str] | None,
    *,
    shots: int,
    seed: int,
    limit: int | None,
    run_dir: Path | None,
    resume: bool,
    outputs: tuple[Path | None, Path | None, Path | None, Path | None],
    quiet: bool,
    ray: str | None = None,
) -> None:
    """`genad eval ROOT` for a root of categories: genad.evaluate_root.run_categories, each
    category's summary as it finishes, then the table, the files and the reports. `outputs`:
    --json, --csv, --markdown, --report."""
    from rich.console import Console
    from rich.markup import escape

    from genad.evaluate_root import run_categories

    console = Console()

    def started(name: str, i: int, n: int) -> None:
        console.rule(f"{name} ({i + 1}/{n})")

    def finished(o: dict[str, Any]) -> None:
        if o["status"] == "skipped":
            console.print(f"{o['category']}: complete in {o['run_dir']} with these settings, not rerun", markup=False)
        elif o["summary"] is not None:
            print_summary(o["summary"])
        if o["status"] == "failed":
            console.print(f"[red]failed[/red] {escape(o['category'])}: {escape(o['error'])}", highlight=False)

    temp = run_dir is None
    if run_dir is None:
        run_dir = Path(tempfile.mkdtemp(prefix="genad-run-"))
    keep = False
    try:
        try:
            root = run_categories(
                data_dir,
                detector,
                params,
                categories=picked,
                shots=shots,
                seed=seed,
                limit=limit,
                run_dir=run_dir,
                resume=resume,
                progress=not quiet,
                on_start=started,
                on_done=finished,
                ray=ray,
            )
        except KeyboardInterrupt:
            keep = True
            done = sum(_count_results(d) for d in run_dir.iterdir() if d.is_dir()) if run_dir.is_dir() else 0
            typer.secho(
                f"interrupted: finished categories and {done} result(s) in all are kept in {run_dir}"
                + (" (a temporary folder)" if temp else ""),
                err=True,
            )
            typer.secho(f"to continue: {_resume_command(data_dir, run_dir)}", err=True)
            raise typer.Exit(130) from None
        _finish_root(root, run_dir, *outputs)
        typer.echo(f"run dir: {run_dir}" if not temp else "run dir: not kept (pass --run-dir DIR to keep it)")
    finally:
        if temp and not keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    if root["failed"]:
        raise typer.Exit(1)


def print_root_summary(root: dict[str, Any]) -> None:
    """The per-category table with its mean row, and what failed."""
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from genad.evaluate_root import COLUMNS, table_rows

    console = Console()
    shots = root.get("shots")
    console.rule("all categories")
    console.print(
        f"{root['detector']} on {root['root']}: {root['n_categories']} categories, "
        f"{f'{shots}-shot' if shots else 'zero-shot'}, seed {root['seed']}, {root['seconds']:.1f} s"
        + (f", {len(root['failed'])} FAILED" if root["failed"] else ""),
        highlight=False,
    )
    # narrow enough for 80 columns: headers on two lines, "scored/all" images where some failed
    columns = [c for c in COLUMNS if c not in ("n_failed", "note")]
    heads = {"n_images": "images", "decision_f1": "own\nF1"}
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 0, 0, 1), show_edge=False, pad_edge=False)
    for c in columns:
        if c in ("category", "status"):
            table.add_column(c, overflow="fold")
        else:
            table.add_column(heads.get(c, c.replace("_", "\n", 1)), justify="right", no_wrap=True, min_width=6)
    rows = table_rows(root)
    for row in rows:
        if row["status"] == "mean":
            cells = ["" if c in ("status", "n_images") else _fmt(row[c]) for c in columns]
            table.add_section()
        else:
            cells = [_fmt(row[c]) for c in columns]
            cells[1] = {"skipped": "kept"}.get(row["status"], row["status"])  # kept: complete before, not rerun
            if row["n_failed"]:
                cells[2] = f"{row['n_images'] - row['n_failed']}/{row['n_images']}"
        table.add_row(*(escape(c) for c in cells), style={"mean": "bold", "failed": "red"}.get(row["status"]))
    console.print(table)
    console.print(
        f"mean {rows[-1]['note']}; own F1: the F1 of the detector's own decisions"
        + ("; images: scored/all where some failed" if any(r["n_failed"] for r in rows[:-1]) else "")
        + ("; kept: complete before, not rerun" if "skipped" in root["status"].values() else ""),
        highlight=False,
    )
    for name, error in root["failed"].items():
        console.print(f"[red]failed[/red] {escape(name)}: {escape(error)}", highlight=False)


def _write(path: Path, text: str, what: str) -> None:
    from genad.atomic import atomic_write_text

    try:
        atomic_write_text(path, text, fsync=False)
    except OSError as e:
        raise GenadError(f"cannot write the {what} {path}: {e}") from e
    typer.echo(f"{what}: {path}")


def _finish_root(
    root: dict[str, Any],
    run_dir: Path,
    json_out: Path | None,
    csv_out: Path | None,
    markdown_out: Path | None,
    report: Path | None,
) -> None:
    """The table on stdout; the JSON, CSV, markdown and the HTML reports where asked."""
    from genad.evaluate_root import to_csv, to_markdown

    print_root_summary(root)
    if json_out is not None:
        _write(json_out, json.dumps(root, indent=2), "summary")
    if csv_out is not None:
        _write(csv_out, to_csv(root), "table")
    if markdown_out is not None:
        _write(markdown_out, to_markdown(root), "markdown")
    if report is not None:
        if importlib.util.find_spec("genad.report.eval_report") is None:
            raise GenadError("the HTML report is not part of this install: drop --report")
        from genad.evaluate import load_run
        from genad.report.eval_report import write_eval_overview, write_eval_report

        reports: dict[str, str | None] = {}
        for name in root["categories"]:
            try:
                write_eval_report(report / name, load_run(run_dir / name))
                reports[name] = f"{name}/index.html"
            except GenadError as e:
                reports[name] = None
                typer.secho(f"no report for {name}: {e}", err=True)
        typer.echo(f"report: {write_eval_overview(report, root, reports)}")


def _count_results(run_dir: Path) -> int:
    from genad.run import RunFolder

    try:
        return sum(1 for r in RunFolder(run_dir).records().values() if r.get("score") is not None)
    except OSError:
        return 0


def _resume_command(data_dir: Path, run_dir: Path) -> str:
    """The command that continues an interrupted run: this one's arguments, --run-dir and --resume."""
    import sys

    args = sys.argv[1:]
    if "eval" not in args:  # called from Python (main([...]) in tests): the gist
        return f"genad eval {shlex.quote(str(data_dir))} ... --run-dir {shlex.quote(str(run_dir))} --resume"
    args = args[args.index("eval") + 1 :]
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--run-dir":
            skip = True
            continue
        if a.startswith("--run-dir=") or a == "--resume":
            continue
        out.append(a)
    return shlex.join(["genad", "eval", *out, "--run-dir", str(run_dir), "--resume"])


def _finish(run: Any, json_out: Path | None, report: Path | None) -> None:
    """The summary on stdout, and the JSON and the HTML report where asked."""
    print_summary(run.summary)
    if json_out is not None:
        _write(json_out, json.dumps(run.summary, indent=2), "summary")
    if report is not None:
        if importlib.util.find_spec("genad.report.eval_report") is None:
            raise GenadError("the HTML report is not part of this install: drop --report")
        from genad.report.eval_report import write_eval_report

        typer.echo(f"report: {write_eval_report(report, run)}")
