"""`genad calibrate`: set the decision threshold from the user's own data.

    genad calibrate known_good/ --normal golden/ --target-fpr 0.01 --save station.json
    genad calibrate data/magnetic_tile --normal golden/ --save station.json     # labelled: best F1
    genad detect parts/ --normal golden/ --calibration station.json

The data are scored exactly as `genad detect` would score them (the same detector, options and
references); the threshold is chosen on the normalised 0-1 scores (genad.decision), so it is
the `-t` of later runs. A folder of known-normal images gives the lowest threshold whose
false-alarm rate on them is at most --target-fpr; an MVTec-style folder (test/good,
test/<defect>) gives the best-F1 threshold, or with --target-fpr the threshold for that rate on
its normals, with the recall to expect on its defects.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import typer

from genad.cli.app import app
from genad.cli.detect import _pick_detector, parse_params
from genad.decision import Choice, threshold_for_best_f1, threshold_for_fpr
from genad.errors import GenadError
from genad.evaluate import public_params
from genad.run import run_detector
from genad.types import Result, Sample

FILE_KIND = "genad-calibration"
FILE_VERSION = 1


def read_calibration_file(path: Path) -> dict[str, Any]:
    """A file written by `genad calibrate --save`, checked: a JSON object of this kind with a
    normalised threshold in [0, 1]; GenadError (one line) otherwise."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise GenadError(f"no such calibration file: {path}") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GenadError(f"cannot read calibration file {path}: {e}") from e
    if not isinstance(data, dict) or data.get("kind") != FILE_KIND:
        raise GenadError(f"{path} is not a genad calibration file (write one with `genad calibrate --save`)")
    if data.get("version") != FILE_VERSION:
        raise GenadError(f"{path} is calibration format {data.get('version')!r}; this genad reads {FILE_VERSION}")
    t = data.get("threshold")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= float(t) <= 1.0:
        raise GenadError(f"{path}: threshold must be a number in [0, 1], got {t!r}")
    return data


def _score(det: Any, samples: list[Sample], refs: list[Sample]) -> list[tuple[Sample, Result]]:
    pairs: list[tuple[Sample, Result]] = []

    def sink(s: Sample, r: Result) -> None:
        r.anomaly_map = None
        pairs.append((s, r))

    for _ in run_detector(det, samples, refs=refs, sink=sink, progress_bar=True):
        pass
    return pairs


def _raw_at(pairs: list[tuple[Sample, Result]], t: float) -> float | None:
    """The raw score at normalised `t`, read off the scored results (monotone mapping)."""
    pts = sorted((r.normalized_score, r.score) for _, r in pairs if r.ok and r.normalized_score is not None)
    if len(pts) < 2:
        return None
    x = np.array([p[0] for p in pts], dtype=np.float64)
    y = np.array([p[1] for p in pts], dtype=np.float64)
    if t < x[0] or t > x[-1]:
        return None
    return float(np.interp(t, x, y))


def _labelled(data: list[Path]) -> bool:
    from genad.io.mvtec import is_mvtec_root

    return len(data) == 1 and is_mvtec_root(data[0])


def calibration_samples(data: list[Path], refs: list[Sample]) -> list[Sample]:
    """The samples to calibrate on: an MVTec-style folder's test split (labelled), or the
    known-normal files and folders given; the references themselves are left out."""
    from genad.io import load_inputs
    from genad.io.mvtec import load_mvtec

    samples: list[Sample] = list(load_mvtec(data[0])) if _labelled(data) else load_inputs(data)
    if refs:
        ref_paths = {r.path.resolve() for r in refs if r.path is not None}
        samples = [s for s in samples if s.path is None or s.path.resolve() not in ref_paths]
    if not samples:
        raise GenadError("nothing left to calibrate on: the data are the references themselves; give other samples")
    return samples


@dataclass
class Calibrated:
    """A threshold chosen on scored data (calibrate_on)."""

    choice: Choice
    how: str
    raw: float | None
    labelled: bool
    n_scored: int
    n_failed: int
    target_fpr: float | None

    def record(self) -> dict[str, Any]:
        """How it was chosen, for a calibration file or a saved model's manifest."""
        return {
            "method": "best-f1" if self.labelled and self.target_fpr is None else "target-fpr",
            "target_fpr": self.target_fpr if self.target_fpr is not None or self.labelled else 0.01,
            **self.choice.to_dict(),
            "raw_threshold": self.raw,
        }


def calibrate_on(
    det: Any, samples: list[Sample], refs: list[Sample], target_fpr: float | None, *, labelled: bool
) -> Calibrated:
    """Score `samples` with `det` (fitted on `refs` first when given, as `genad detect` would)
    and choose the normalised threshold: for a false-alarm rate (known-normal data, 0.01 by
    default) or best F1 (labelled data without a target)."""
    if target_fpr is not None and not 0.0 <= target_fpr < 1.0:
        raise GenadError(f"--target-fpr must be in [0, 1), e.g. 0.01; got {target_fpr}")
    pairs = _score(det, samples, refs)
    scored = [(s, r) for s, r in pairs if r.ok and r.normalized_score is not None]
    if not scored:
        raise GenadError("no sample could be scored; see `genad detect` on the same data for the errors")
    scores = [float(r.normalized_score) for _, r in scored if r.normalized_score is not None]
    if labelled:
        labels = [int(s.label or 0) for s, _ in scored]
        if target_fpr is None:
            choice, how = threshold_for_best_f1(scores, labels), "best F1 on the labelled data"
        else:
            choice, how = threshold_for_fpr(scores, target_fpr, labels), f"false-alarm rate <= {target_fpr:g}"
    else:
        fpr = 0.01 if target_fpr is None else target_fpr
        choice, how = threshold_for_fpr(scores, fpr), f"false-alarm rate <= {fpr:g} on known-normal data"
    rate = target_fpr if target_fpr is not None else (None if labelled else 0.01)
    if rate and choice.n_normal < 1.0 / rate:
        typer.echo(
            f"note: {choice.n_normal} normal samples cannot measure a false-alarm rate of {rate:g} "
            f"(that needs at least {int(round(1.0 / rate))}); the threshold is the highest normal score's",
            err=True,
        )
    return Calibrated(
        choice, how, _raw_at(scored, choice.threshold), labelled, len(scored), len(pairs) - len(scored), target_fpr
    )


def _say(choice: Choice, how: str, raw: float | None) -> str:
    lines = [
        f"threshold {choice.threshold:.4f} on the normalised 0-1 score ({how})"
        + (f"; raw score about {raw:.4g}" if raw is not None else ""),
        f"expected false-alarm rate {100 * choice.expected_fpr:.1f}% "
        f"({round(choice.expected_fpr * choice.n_normal)} of {choice.n_normal} normal samples above it)",
    ]
    if choice.recall is not None:
        lines.append(
            f"expected recall {choice.recall:.3f} ({round(choice.recall * choice.n_anomalous)} of "
            f"{choice.n_anomalous} anomalous samples above it), precision {choice.precision:.3f}, F1 {choice.f1:.3f}"
        )
    return "\n".join(lines)


@app.command("calibrate")
def calibrate(
    data: list[Path] = typer.Argument(
        ...,
        show_default=False,
        help="Known-normal files or folders, or one MVTec-style folder (test/good, test/<defect>) with labels.",
    ),
    normal: list[Path] = typer.Option(
        None, "--normal", "-n", show_default=False, help="Normal references, as for `genad detect` (few-shot)."
    ),
    detector: str = typer.Option(None, "--detector", "-d", show_default=False, help="Detector name."),
    param: list[str] = typer.Option(None, "--param", "-p", show_default=False, help="Detector option key=value."),
    target_fpr: float = typer.Option(
        None,
        "--target-fpr",
        show_default=False,
        help="Largest share of normal samples to flag (e.g. 0.01). Default: 0.01 for known-normal data; best F1 for labelled data.",
    ),
    save: Path = typer.Option(
        None, "--save", show_default=False, help="Write the threshold to this JSON file (for --calibration)."
    ),
) -> None:
    """Choose the decision threshold from your own data; print the false-alarm rate and recall to expect."""
    from genad.io import load_inputs

    params = parse_params(param)
    for key in ("threshold", "raw_threshold"):
        if key in params:
            raise GenadError(f"-p {key} makes no sense here: calibrate chooses the threshold")
    refs: list[Sample] = load_inputs(normal) if normal else []
    samples = calibration_samples(data, refs)
    det = _pick_detector(detector, samples[0].modality, params)
    if not refs and not det.zero_shot:
        raise GenadError(f"detector {det.name!r} needs normal examples: add --normal DIR")
    got = calibrate_on(det, samples, refs, target_fpr, labelled=_labelled(data))
    typer.echo(
        f"{det.name}, {'few-shot, ' + str(len(refs)) + ' references' if refs else 'zero-shot'}: "
        f"{got.n_scored} samples scored" + (f", {got.n_failed} failed" if got.n_failed else "")
    )
    typer.echo(_say(got.choice, got.how, got.raw))
    if det.capabilities().whole_batch:
        typer.echo(
            "note: zero-shot scores are relative to the batch that was scored: this threshold carries over to "
            "batches like this one; for a fixed station, calibrate few-shot (--normal DIR)"
        )
    choice = got.choice
    record = {
        "kind": FILE_KIND,
        "version": FILE_VERSION,
        "detector": det.name,
        "params": public_params(det.params),
        "references": [str(p) for p in normal or []],
        "data": [str(p) for p in data],
        **got.record(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    if save is not None:
        try:
            save.parent.mkdir(parents=True, exist_ok=True)
            save.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        except OSError as e:
            raise GenadError(f"cannot write {save}: {e}") from e
        typer.echo(f"saved: {save}  (use: genad detect ... --calibration {save}, or -t {choice.threshold:.4f})")
    else:
        typer.echo(f"use: genad detect ... -t {choice.threshold:.4f}")
