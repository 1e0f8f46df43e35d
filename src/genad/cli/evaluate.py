"""`genad eval`: the benchmark protocol on an MVTec-style folder, with a JSON summary."""

from __future__ import annotations

import importlib.util
import json
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

import typer

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
        help="An MVTec-style folder: test/good, test/<defect>, optional train/good and ground_truth/<defect>/<name>_mask.png.",
        show_default=False,
    ),
    detector: str = typer.Option("embedded", "--detector", "-d", help="Detector name (see `genad detectors`)."),
    shots: int = typer.Option(
        0,
        "--shots",
        "-k",
        help="Normal references per run (0 = zero-shot). Drawn from train/good, or from test/good (and then not scored) when there is no train split.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for drawing references and the --limit subsample."),
    limit: int = typer.Option(
        None, "--limit", "-l", show_default=False, help="Score only N test images (stratified by defect type)."
    ),
    json_out: Path = typer.Option(None, "--json", show_default=False, help="Write the summary JSON to this file."),
    run_dir: Path = typer.Option(
        None,
        "--run-dir",
        show_default=False,
        help="Keep results.jsonl, maps/ and summary.json here (needed for --resume). Without it the run uses a temporary folder, removed at the end (kept only when the run is interrupted, and then named).",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --run-dir: score only what is missing or failed."
    ),
    report: Path = typer.Option(
        None, "--report", show_default=False, help="Write an HTML report (index.html) to this folder."
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
) -> None:
    """Benchmark a detector on a labelled dataset and print image/pixel AUROC, AP, F1-max, AUPRO.

    Examples:

      genad eval data/magnetic_tile -d baseline --limit 100 --json mt.json

      genad eval /data/mvtec/bottle --shots 4 --seed 1 --report bottle-report

      genad eval /data/mvtec/bottle --detector lmm --run-dir runs/lmm --resume

    The data folder is MVTec-AD style (MVTec AD, VisA, MPDD, BTAD, magnetic tile). Results are written as they come (results.jsonl in --run-dir), so an interrupted run (Ctrl-C or SIGTERM: it stops within moments, exit code 130) continues with --resume and paid LMM calls are never repeated.
    """
    if resume and run_dir is None:
        raise GenadError("--resume needs --run-dir: the folder of the run to continue")
    params = max_tokens_option(parse_params(param), max_tokens)
    from genad.evaluate import run_benchmark

    chosen: str | Detector = detector
    if model is not None:
        if shots:
            raise GenadError("--model is already fitted: give --shots (fit on the data's normals) or --model, not both")
        chosen = saved_model(model, None if detector == "embedded" else detector, None, params, {})
        params = {}

    temp = run_dir is None
    if run_dir is None:
        # Results always go to disk (maps stay out of memory; an interrupted run can resume):
        # a temporary folder, removed at the end unless the run is interrupted.
        run_dir = Path(tempfile.mkdtemp(prefix="genad-run-"))
    keep = False
    try:
        try:
            run = run_benchmark(
                data_dir,
                detector=chosen,
                detector_params=params,
                shots=shots,
                seed=seed,
                limit=limit,
                run_dir=run_dir,
                resume=resume,
                progress=not quiet,
            )
        except KeyboardInterrupt:
            keep = True
            done = _count_results(run_dir)
            typer.secho(
                f"interrupted: {done} result(s) so far are kept in {run_dir}"
                + (" (a temporary folder)" if temp else ""),
                err=True,
            )
            typer.secho(f"to continue: {_resume_command(data_dir, run_dir)}", err=True)
            raise typer.Exit(130) from None
        _finish(run, json_out, report)
        typer.echo(f"run dir: {run.run_dir}" if not temp else "run dir: not kept (pass --run-dir DIR to keep it)")
    finally:
        if temp and not keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    if run.summary["n_images"] and run.summary["n_failed"] == run.summary["n_images"]:
        raise typer.Exit(1)


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
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(run.summary, indent=2), encoding="utf-8")
        typer.echo(f"summary: {json_out}")
    if report is not None:
        if importlib.util.find_spec("genad.report.eval_report") is None:
            raise GenadError("the HTML report is not part of this install: drop --report")
        from genad.report.eval_report import write_eval_report

        typer.echo(f"report: {write_eval_report(report, run)}")
