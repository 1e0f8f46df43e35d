"""`genad fit NORMAL... --save FILE`: fit a detector once on normal examples and keep it.

    genad fit golden/ --save station.genad                          # embedded, few-shot
    genad fit golden/ --save station.genad --calibrate known_good/ --target-fpr 0.01
    genad detect parts/ --model station.genad                       # months later, no refit

The model file (genad.model_file) holds the detector's options, its fitted state, the weights it
needs (checked on load), its preprocessing and its decision threshold; `--calibrate DIR` sets
that threshold from your own data as `genad calibrate` does (known-normal files for a
false-alarm rate, or a labelled MVTec-style folder for best F1).
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from genad.cli.app import app
from genad.cli.calibrate import _labelled, _say, calibrate_on, calibration_samples
from genad.cli.detect import MAX_TOKENS_HELP, _pick_detector, max_tokens_option, parse_params
from genad.errors import GenadError


@app.command("fit")
def fit(
    normal: list[Path] = typer.Argument(..., show_default=False, help="Normal examples: files or folders."),
    save: Path = typer.Option(..., "--save", "-s", show_default=False, help="Write the fitted model to this file."),
    detector: str = typer.Option(
        None, "--detector", "-d", show_default=False, help="Detector name (default: the modality's)."
    ),
    modality: str = typer.Option(
        None, "--modality", "-m", show_default=False, help="image | timeseries | pointcloud | video."
    ),
    param: list[str] = typer.Option(None, "--param", "-p", show_default=False, help="Detector option key=value."),
    calibrate: list[Path] = typer.Option(
        None,
        "--calibrate",
        show_default=False,
        help="Set the threshold on these known-normal files/folders (or one labelled MVTec-style folder).",
    ),
    target_fpr: float = typer.Option(
        None,
        "--target-fpr",
        show_default=False,
        help="With --calibrate: the largest share of normal samples to flag (default 0.01; labelled data: best F1).",
    ),
    max_tokens: int = typer.Option(
        None, "--max-tokens", min=1, max=1_000_000, show_default=False, help=MAX_TOKENS_HELP
    ),
    recursive: bool = typer.Option(True, "--recursive/--no-recursive", help="Search sub-folders."),
) -> None:
    """Fit a detector on normal examples and save it as one model file (no pickle)."""
    from genad.io import load_inputs

    if target_fpr is not None and not calibrate:
        raise GenadError("--target-fpr needs --calibrate DIR: the data the false-alarm rate is measured on")
    params = max_tokens_option(parse_params(param), max_tokens)
    refs = load_inputs(normal, modality=modality, recursive=recursive)
    kinds = sorted({r.modality for r in refs})
    if len(kinds) > 1:
        raise GenadError(f"the normal examples mix {', '.join(kinds)}: fit one kind at a time")
    det = _pick_detector(detector, kinds[0], params)
    t0 = time.perf_counter()
    det.fit(refs)
    took = time.perf_counter() - t0
    typer.echo(f"fitted {det.name} on {len(refs)} normal examples in {took:.1f} s")
    info = {}
    if calibrate:
        if "threshold" in params or "raw_threshold" in params:
            raise GenadError("give -p threshold or --calibrate, not both: --calibrate chooses the threshold")
        samples = calibration_samples(calibrate, refs)
        got = calibrate_on(det, samples, [], target_fpr, labelled=_labelled(calibrate))
        det.set_params(threshold=got.choice.threshold)
        typer.echo(_say(got.choice, got.how, got.raw))
        info["calibrated"] = {**got.record(), "data": [str(p) for p in calibrate], "samples": got.n_scored}
    path = det.save(save, **info)
    size = path.stat().st_size / 2**20
    typer.echo(f"saved {path} ({size:.1f} MiB); use: genad detect PATH... --model {path}")
