"""The benchmark protocol for series, point clouds and videos: what `genad eval` runs on a NAB
folder, UCR files, a labelled CSV, a labelled point-cloud folder or videos with frame labels
(genad.io.datasets names the layouts; MVTec-style images go through genad.evaluate).

    run = run_modality_benchmark("data/nab")                       # the modality's default detector
    run.summary["point_auroc"], run.summary["nab_score"]
    run = evaluate_samples(clouds, "pointcloud", refs=normals)     # samples made in memory

Protocol
* The scored set is the data set's labelled samples (genad.io.datasets.load_labelled).
* Few-shot (shots > 0): `shots` normal references drawn with `seed` from the data set's normal
  references (a point-cloud folder's train/good, a video folder's train/); where there are
  none, from the scored set's normal samples, which are then not scored. Series carry their
  own normal reference where they have one (UCR's training prefix, `train_end`).
* `limit`: a subsample stratified by defect type (normal / anomalous for series and videos),
  drawn with `seed` (genad.evaluate.stratified_subset).
* The detector runs through genad.run's one loop (fit on the references when something is
  left to score; chunks as its capabilities ask), every result written to the run folder as
  it comes: so `--run-dir` / `--resume` work as for images, and failed samples are retried.
  Per-point and per-frame scores are stored at full precision (genad.run.rundir.write_map).
* The figures are computed at the end from the stored results and scores, by the modality's
  metrics: genad.modalities.timeseries.metrics.series_metrics (point AUROC / AP,
  point-adjusted F1, range precision / recall / F1, flagged-point figures, the NAB score,
  UCR hit rate; `per_series` rows), genad.modalities.pointcloud.metrics (object and point
  AUROC / AP, the detector's own decisions; `per_type`), genad.modalities.video.metrics
  (frame AUROC / AP, flagged frames, verdicts per video; `per_video` rows). NaN figures are
  written as null.
"""

from __future__ import annotations

import math
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from genad import registry
from genad.detector import Detector
from genad.errors import GenadError
from genad.evaluate import EvalRun, build_detector, check_settings, public_params, stratified_subset, timed_run_into
from genad.run import Phase, RunFolder, pending
from genad.types import Result, Sample, Usage, jsonable

#: settings that must match for a run folder to be resumed
RESUME_KEYS = ("data_dir", "kind", "detector", "params", "shots", "seed", "limit")
#: the figures `genad eval` prints first, by modality (all of them are in the summary)
HEADLINE: dict[str, tuple[str, ...]] = {
    "timeseries": ("point_auroc", "point_ap", "point_adjusted_f1", "range_f1", "nab_score"),
    "pointcloud": ("object_auroc", "object_ap", "point_auroc", "point_ap", "point_auroc_defective"),
    "video": ("frame_auroc", "frame_ap", "frame_f1", "video_f1"),
}
#: the detector's own decisions, by modality
DECISIONS: dict[str, tuple[str, ...]] = {
    "timeseries": (
        "range_precision",
        "range_recall",
        "point_precision",
        "point_recall",
        "point_f1",
        "anomalous_series_flagged",
        "normal_series_flagged",
    ),
    "pointcloud": ("object_precision", "object_recall", "object_f1", "point_precision", "point_recall", "point_f1"),
    "video": ("frame_precision", "frame_recall", "video_precision", "video_recall"),
}


def modality_figures(modality: str, samples: Sequence[Sample], results: Sequence[Result]) -> dict[str, Any]:
    """The figures of `results` (each with its anomaly_map) against the samples' labels, by the
    modality's metrics (see the module doc)."""
    if modality == "timeseries":
        from genad.modalities.timeseries.metrics import series_metrics

        m = series_metrics(samples, results)  # type: ignore[arg-type]
        return {**m["summary"], "per_series": m["per_series"]}
    if modality == "pointcloud":
        from genad.modalities.pointcloud.metrics import pointcloud_metrics, pointcloud_per_type

        return {
            **pointcloud_metrics(samples, results),  # type: ignore[arg-type]
            "per_type": pointcloud_per_type(samples, results),  # type: ignore[arg-type]
        }
    if modality == "video":
        from genad.modalities.video.metrics import video_metrics

        return video_metrics(samples, results)  # type: ignore[arg-type]
    raise GenadError(f"no figures for {modality!r} here: images are evaluated by genad.evaluate")


def draw_references(
    test: list[Sample], train: list[Sample], shots: int, seed: int
) -> tuple[list[Sample], list[Sample], str]:
    """(refs, scored set, where the refs came from): `shots` drawn with `seed` from `train`,
    or, where there is none, from the normal samples of `test` (then left out of it)."""
    if shots <= 0:
        return [], test, "none"
    pool, source = train, "train"
    if not pool:
        pool, source = [s for s in test if s.label == 0], "test (normal samples, not scored)"
    if shots > len(pool):
        raise GenadError(
            f"--shots {shots} asks for more normal samples than the {len(pool)} in the data's {source.split()[0]}: "
            f"use --shots {len(pool)} or fewer" + (" (or 0: zero-shot)" if not pool else "")
        )
    rng = np.random.default_rng(seed)
    picked = sorted(int(i) for i in rng.choice(len(pool), size=shots, replace=False))
    refs = [pool[i] for i in picked]
    if source != "train":
        ids = {r.id for r in refs}
        test = [s for s in test if s.id not in ids]
    return refs, test, source


def check_modality_detector(det: Detector, modality: str, shots: int) -> None:
    """Refuse, before any work, a detector that does not read the data or needs references."""
    if modality not in det.modalities:
        default = registry.DEFAULT_BY_MODALITY.get(modality)
        raise GenadError(
            f"detector {det.name!r} reads {', '.join(det.modalities)}, not {modality}: "
            f"choose a {modality} detector (default {default}; see `genad detectors`)"
        )
    if shots == 0 and not det.zero_shot:
        raise GenadError(f"detector {det.name!r} needs normal references: pass --shots K (e.g. --shots 4)")


def run_modality_benchmark(
    data_dir: Path | str,
    detector: str | Detector | None = None,
    detector_params: dict[str, Any] | None = None,
    shots: int = 0,
    seed: int = 0,
    limit: int | None = None,
    run_dir: Path | str | None = None,
    resume: bool = False,
    progress: bool = True,
    kind: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    stop: Callable[[], str | None] | None = None,
    on_phase: Callable[[Phase], None] | None = None,
) -> EvalRun:
    """Run `detector` (default: the modality's, genad.registry.DEFAULT_BY_MODALITY) on the
    labelled series, point clouds or videos at `data_dir` (`kind` as genad.io.datasets.data_kind
    finds it, when not given) and compute its figures; see the module doc. `run_dir`, `resume`,
    `on_progress`, `stop`, `on_phase` as for genad.evaluate.run_benchmark (without `run_dir`
    a temporary folder is used and removed). Raises GenadError for a bad folder, a detector of
    another modality, too many shots, or a run folder that holds a different run."""
    from genad.io.datasets import MODALITY_OF_KIND, data_kind, load_labelled

    t_start = time.perf_counter()
    data_dir = Path(data_dir)
    check_settings(shots, limit)
    kind = kind or data_kind(data_dir)
    if kind == "images":
        raise GenadError(f"{data_dir} holds images: genad.evaluate.run_benchmark evaluates those")
    modality = MODALITY_OF_KIND[kind]
    det = build_detector(detector or registry.DEFAULT_BY_MODALITY[modality], detector_params)
    check_modality_detector(det, modality, shots)
    test, train = load_labelled(data_dir, kind)
    refs, test, source = draw_references(test, train, shots, seed)
    if limit is not None:
        test = stratified_subset(test, limit, seed)
    if not test:
        raise GenadError(f"nothing left to score in {data_dir} after taking the references")
    settings = {"data_dir": str(data_dir.resolve()), "kind": kind, "shots": shots, "seed": seed, "limit": limit}
    return evaluate_samples(
        test,
        det,
        modality=modality,
        refs=refs,
        run_dir=run_dir,
        resume=resume,
        progress=progress,
        settings=settings,
        reference_source=source,
        on_progress=on_progress,
        stop=stop,
        on_phase=on_phase,
        started=t_start,
    )


def evaluate_samples(
    samples: Sequence[Sample],
    detector: str | Detector | None = None,
    detector_params: dict[str, Any] | None = None,
    *,
    modality: str | None = None,
    refs: Sequence[Sample] = (),
    run_dir: Path | str | None = None,
    resume: bool = False,
    progress: bool = False,
    settings: dict[str, Any] | None = None,
    reference_source: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    stop: Callable[[], str | None] | None = None,
    on_phase: Callable[[Phase], None] | None = None,
    started: float | None = None,
) -> EvalRun:
    """Score labelled `samples` (series, clouds or videos, all of one modality) with `detector`
    (fitted on `refs` first when given) through the run loop into `run_dir`, and compute the
    figures from what was stored. `settings` (data_dir, kind, shots, seed, limit) go into
    config.json and the summary; a resumed run must match them. Without `run_dir` a temporary
    folder is used and removed at the end (the returned results hold their scores)."""
    t_start = time.perf_counter() if started is None else started
    samples = list(samples)
    if not samples:
        raise GenadError("nothing to score: no samples")
    modality = modality or samples[0].modality
    if any(s.modality != modality for s in samples):
        raise GenadError(f"the samples mix modalities ({', '.join(sorted({s.modality for s in samples}))})")
    det = build_detector(detector or registry.DEFAULT_BY_MODALITY[modality], detector_params)
    check_modality_detector(det, modality, len(refs))
    settings = {"data_dir": None, "kind": modality, "shots": len(refs), "seed": None, "limit": None, **(settings or {})}
    config = {
        **settings,
        "detector": det.name,
        "params": public_params(det.params),
        "references": [r.id for r in refs],
        "reference_source": reference_source,
    }
    temp = run_dir is None
    folder_path = Path(tempfile.mkdtemp(prefix="genad-run-")) if run_dir is None else Path(run_dir)
    try:
        folder = RunFolder(folder_path)
        done = folder.start(config, resume=resume, must_match=RESUME_KEYS)
        todo = pending(samples, done)
        records, t_fit, t_pred = timed_run_into(
            folder,
            det,
            samples,
            done,
            refs=refs,
            on_progress=on_progress,
            on_phase=on_phase,
            stop=stop,
            progress=progress,
        )
        results = []
        for rec in records:
            r = folder.result(rec)
            r.anomaly_map = folder.load_map(rec)
            results.append(r)
        figures = modality_figures(modality, samples, results)
        usage: Usage | None = None
        for r in results:
            if r.usage is not None:
                usage = r.usage if usage is None else usage + r.usage
        summary = {
            **figures,
            "kind": settings["kind"],
            "modality": modality,
            "n_samples": len(samples),
            "n_scored": sum(1 for r in results if r.ok),
            "n_failed": sum(1 for r in results if not r.ok),
            "n_anomalous": sum(1 for s in samples if s.label == 1),
            "n_normal": sum(1 for s in samples if s.label == 0),
            "failed": [{"id": s.id, "error": r.error or "no score"} for s, r in zip(samples, results) if not r.ok],
            "usage": None if usage is None else usage.to_dict(),
            "seconds": round(time.perf_counter() - t_start, 3),
            "fit_seconds": round(t_fit, 3),
            "predict_seconds": round(t_pred, 3),
            "samples_per_second": round(len(todo) / t_pred, 3) if t_pred > 0 and todo else None,
            "n_resumed": len(samples) - len(todo),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
            "detector": det.name,
            "params": public_params(det.params),
            "shots": settings["shots"],
            "seed": settings["seed"],
            "limit": settings["limit"],
            "data_dir": settings["data_dir"],
            "reference_source": reference_source,
            "references": [r.id for r in refs],
            "run_dir": None if temp else str(folder_path),
        }
        summary = _no_nan(jsonable(summary))
        folder.write_summary(summary)  # last: a summary.json marks a finished run
    finally:
        if temp:
            shutil.rmtree(folder_path, ignore_errors=True)
    return EvalRun(summary, samples, results, folder_path, list(refs), records)


def _no_nan(v: Any) -> Any:
    """NaN and inf figures as None (JSON null), through dicts and lists."""
    if isinstance(v, dict):
        return {k: _no_nan(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_no_nan(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
