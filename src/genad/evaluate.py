"""The benchmark protocol: pick references, run a detector, score it, write the summary.

    run = run_benchmark("data/magnetic_tile", "embedded", shots=4, seed=0, run_dir="runs/mt")
    run.summary["image_auroc"], run.summary["aupro"]

Protocol
* The scored set is `test/` of an MVTec-style folder (see genad.io.mvtec).
* Few-shot (shots > 0): `shots` normal references are drawn with `seed` from `train/good`;
  where there is no train split (e.g. brain_mri) they come from `test/good` and are left out
  of the scored set.
* `limit`: a subsample stratified by defect type, drawn with `seed`.
* The detector gets `fit(refs)` when shots > 0 (and something is left to score), then runs
  through genad.run's one loop (chunks as the detector's capabilities ask: the whole set at
  once for zero-shot comparison), which reports progress and checks `stop()` in both.
* Every result goes to the run folder (genad.run.rundir) as soon as it is scored: a line of
  `results.jsonl` and its map in `maps/<n>.npz`, so a crash loses nothing and `resume=True`
  scores only what is missing (LMM runs cost money). Failed samples are retried on resume.
* Metrics (genad.metrics) are computed from those files at the end, one accumulator at a
  time, so memory stays bounded however large the set; `summary.json` holds the figures
  (with the detector's own decisions: confusion matrix, rates, thresholds) and `curves.json`
  the curves and the score histogram behind them, which the report draws. Failed samples are
  counted, listed and left out of the metrics.
"""

from __future__ import annotations

import json
import math
import resource
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genad import registry
from genad.decision import BOUNDARY
from genad.detector import Detector
from genad.errors import GenadError
from genad.io.images import image_size
from genad.io.mvtec import categories, load_mvtec, load_mvtec_train
from genad.ops import resize_map
from genad.run import Phase, RunFolder, pending, run_into
from genad.secrets import redact
from genad.types import ImageSample, Result, Sample, Usage, jsonable

# Settings that must match for a run directory to be resumed.
_RESUME_KEYS = ("data_dir", "detector", "params", "shots", "seed", "limit")
CURVE_POINTS = 1000  # points kept per curve in curves.json


@dataclass
class EvalRun:
    """What a benchmark run produced. `results[i]` belongs to `samples[i]`; maps are kept on
    disk (not in memory): read one with `load_map(i)`. `curves` are those behind the summary's
    figures (what the report draws)."""

    summary: dict[str, Any]
    samples: list[Sample]
    results: list[Result]
    run_dir: Path
    refs: list[Sample] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    curves: dict[str, Any] | None = None

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.run_dir)

    def load_map(self, i: int) -> np.ndarray | None:
        """The anomaly map of sample i as float32, or None if it has none."""
        rec = self.records[i] if i < len(self.records) else None
        return None if rec is None else self.folder.load_map(rec)


def public_params(params: dict[str, Any]) -> dict[str, Any]:
    """Detector parameters fit for files and logs: secrets (api_key, tokens...) masked."""
    return redact(dict(params))


# -- choosing what to score -----------------------------------------------------------------
def stratified_subset(samples: Sequence[Sample], limit: int, seed: int) -> list[Sample]:
    """`limit` samples drawn with `seed`, each defect type keeping its share (largest
    remainder; every type keeps at least one sample when limit allows). Original order kept."""
    if limit >= len(samples):
        return list(samples)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[_defect(s)].append(i)
    names = sorted(groups)
    n = len(samples)
    quota = {k: limit * len(groups[k]) / n for k in names}
    take = {k: math.floor(q) for k, q in quota.items()}
    if limit >= len(names):
        for k in names:
            take[k] = max(take[k], 1)
    # Hand out what is left by largest remainder, then trim any excess from the largest groups.
    left = limit - sum(take.values())
    for k in sorted(names, key=lambda k: (-(quota[k] - math.floor(quota[k])), k)):
        if left <= 0:
            break
        if take[k] < len(groups[k]):
            take[k] += 1
            left -= 1
    while sum(take.values()) > limit:
        k = max(names, key=lambda k: (take[k], k))
        take[k] -= 1
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for k in names:
        idx = groups[k]
        chosen.extend(int(i) for i in rng.choice(idx, size=min(take[k], len(idx)), replace=False))
    return [samples[i] for i in sorted(chosen)]


def _defect(s: Sample) -> str:
    return (s.truth.defect_type if s.truth and s.truth.defect_type else None) or (
        "good" if s.label == 0 else "anomalous"
    )


def draw_references(
    data_dir: Path, test: list[ImageSample], shots: int, seed: int
) -> tuple[list[ImageSample], list[ImageSample], str]:
    """(refs, scored test set, where refs came from)."""
    if shots <= 0:
        return [], test, "none"
    pool: list[ImageSample] = load_mvtec_train(data_dir)
    source = "train/good"
    if not pool:
        pool = [s for s in test if s.label == 0]
        source = "test/good"
    if shots > len(pool):
        raise GenadError(
            f"--shots {shots} asks for more normal images than the {len(pool)} in {data_dir}/{source}: "
            f"use --shots {len(pool)} or fewer"
        )
    rng = np.random.default_rng(seed)
    picked = sorted(int(i) for i in rng.choice(len(pool), size=shots, replace=False))
    refs = [pool[i] for i in picked]
    if source == "test/good":  # never score an image the detector was shown as normal
        ref_ids = {r.id for r in refs}
        test = [s for s in test if s.id not in ref_ids]
    return refs, test, source


def check_masks(samples: Sequence[ImageSample]) -> None:
    """Fail early, before any (possibly paid) scoring, if a mask's size differs from its image."""
    for s in samples:
        if s.truth is None or s.truth.mask_path is None or s.path is None:
            continue
        try:
            w, h = image_size(s.path)
        except GenadError:
            continue  # an unreadable image is reported as that sample's failure later
        mw, mh = image_size(s.truth.mask_path)
        if (mw, mh) != (w, h):
            raise GenadError(
                f"mask {s.truth.mask_path} is {mw}x{mh} but its image {s.path} is {w}x{h}: fix or remove the mask"
            )


# -- the protocol ----------------------------------------------------------------------------
def check_settings(shots: int, limit: int | None) -> None:
    """Refuse impossible numbers before any work."""
    if shots < 0:
        raise GenadError(f"--shots must be 0 or more, got {shots}")
    if limit is not None and limit <= 0:
        raise GenadError(f"--limit must be a positive number, got {limit}")


def build_detector(detector: str | Detector, detector_params: dict[str, Any] | None = None) -> Detector:
    """The detector a run uses: built by name with `detector_params`, or the instance given."""
    if isinstance(detector, Detector):
        if detector_params:
            raise GenadError("detector_params apply only when the detector is given by name")
        return detector
    return registry.create(detector, **(detector_params or {}))


def check_detector(det: Detector, shots: int) -> None:
    """Refuse, before any work, a detector this protocol cannot run."""
    if "image" not in det.modalities:
        raise GenadError(
            f"detector {det.name!r} does not read images: choose an image detector (see `genad detectors`)"
        )
    if shots == 0 and not det.zero_shot:
        raise GenadError(f"detector {det.name!r} needs normal references: pass --shots K (e.g. --shots 4)")


def run_settings(data_dir: Path | str, det: Detector, shots: int, seed: int, limit: int | None) -> dict[str, Any]:
    """The settings that make a run what it is (`_RESUME_KEYS`): a run folder is resumed, or
    counted as done, only with the same ones."""
    return {
        "data_dir": str(Path(data_dir).resolve()),
        "detector": det.name,
        "params": public_params(det.params),
        "shots": shots,
        "seed": seed,
        "limit": limit,
    }


def check_run_dir(run_dir: Path | str, settings: dict[str, Any], resume: bool) -> None:
    """Refuse, before any work, a run folder run_benchmark would refuse with these settings
    (see run_settings): results there without `resume`, or a resume with other settings."""
    RunFolder(run_dir).check_start(settings, resume=resume, must_match=_RESUME_KEYS)


def finished_summary(run_dir: Path | str, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The summary of the complete run in `run_dir` (every image scored, none failed) made
    with `settings` (see run_settings), or None: there is none, it is partial, it had failed
    images (a resume retries them) or other settings."""
    folder = RunFolder(run_dir)
    try:
        summary, config = folder.summary(), folder.config()
    except (OSError, ValueError):  # unreadable or torn: not complete
        return None
    if not isinstance(summary, dict) or not isinstance(config, dict):
        return None
    n = summary.get("n_images")
    if not isinstance(n, int) or n <= 0 or summary.get("n_failed") != 0 or summary.get("n_scored") != n:
        return None
    want = json.loads(json.dumps(jsonable(settings)))
    if any(config.get(k) != want.get(k) for k in _RESUME_KEYS):
        return None
    return summary


def load_run(run_dir: Path | str) -> EvalRun:
    """The EvalRun of a finished run folder (its summary, curves and results; the samples
    reloaded from its data folder by id), e.g. to write its report again."""
    folder = RunFolder(run_dir)
    summary, config = folder.summary(), folder.config()
    if summary is None:
        raise GenadError(f"{run_dir} holds no finished evaluation (no summary.json)")
    data_dir = Path(config.get("data_dir") or summary["data_dir"])
    by_id: dict[str, Sample] = {s.id: s for s in load_mvtec(data_dir, "test")}
    records = [r for r in folder.ordered() if r["id"] in by_id]
    samples = [by_id[r["id"]] for r in records]
    results = [folder.result(r) for r in records]
    return EvalRun(summary, samples, results, Path(run_dir), [], records, folder.curves())


def timed_run_into(
    folder: RunFolder,
    det: Detector,
    samples: Sequence[Sample],
    done: Any,
    *,
    refs: Sequence[Sample],
    runner: Any = None,
    on_progress: Any = None,
    on_phase: Callable[[Phase], None] | None = None,
    stop: Any = None,
    progress: bool = False,
) -> tuple[list[dict[str, Any]], float, float]:
    """genad.run.run_into for a benchmark: (the run's records, the fit's seconds, the
    scoring's seconds), each timed from when its phase began."""
    began: dict[str, float] = {}

    def phase(p: Phase) -> None:
        began.setdefault(p.name, time.perf_counter())
        if on_phase is not None:
            on_phase(p)

    records = run_into(
        folder,
        det,
        samples,
        done,
        refs=list(refs),
        runner=runner,
        on_progress=on_progress,
        on_phase=phase,
        stop=stop,
        progress_bar=progress,
        desc=f"genad eval {det.name}",
    )
    t_end = time.perf_counter()
    t_fit = began["scoring"] - began["fitting"] if "fitting" in began and "scoring" in began else 0.0
    t_pred = t_end - began["scoring"] if "scoring" in began else 0.0
    return records, t_fit, t_pred


def run_benchmark(
    data_dir: Path | str,
    detector: str | Detector = "embedded",
    detector_params: dict[str, Any] | None = None,
    shots: int = 0,
    seed: int = 0,
    limit: int | None = None,
    run_dir: Path | str | None = None,
    resume: bool = False,
    progress: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
    stop: Callable[[], str | None] | None = None,
    on_phase: Callable[[Phase], None] | None = None,
    ray: str | None = None,
) -> EvalRun:
    """Run `detector` on the MVTec-style dataset at `data_dir` and compute its figures.

    `detector` is a registry name (built with `detector_params`) or a Detector instance.
    `run_dir` keeps results.jsonl, maps/, summary.json and curves.json (a fresh temporary
    folder when None). `resume=True` continues a run in `run_dir`, scoring only samples not
    yet done. `on_progress(done, total)`, `on_phase(Phase)` and `stop()` as for
    genad.run.run_detector (the fit is one of its phases). `ray`: the address of a Ray
    cluster that scores the images in chunks as tasks (genad.run.ray_backend: the fit here,
    results written here as they come; the same figures).
    Raises GenadError for a bad folder, too many shots, a mask of the wrong size, or a run
    directory that holds a different run.
    """
    t_start = time.perf_counter()
    data_dir = Path(data_dir)
    check_settings(shots, limit)
    runner = None
    if ray is not None:  # joined first: a wrong address fails before anything is written
        from genad.run.ray_backend import runner as ray_runner

        runner = ray_runner(ray)
    cats = categories(data_dir) if data_dir.is_dir() else []
    if len(cats) > 1:
        names = ", ".join(c.name for c in cats[:6])
        raise GenadError(
            f"{data_dir} holds {len(cats)} categories ({names}{', ...' if len(cats) > 6 else ''}): "
            f"run_benchmark evaluates one (e.g. {cats[0]}); genad.evaluate_root.run_categories runs them all"
        )
    loaded = load_mvtec(data_dir, "test")

    det = build_detector(detector, detector_params)
    check_detector(det, shots)

    refs, scored, ref_source = draw_references(data_dir, loaded, shots, seed)
    test: list[Sample] = list(scored)
    if limit is not None:
        test = stratified_subset(test, limit, seed)
    if not test:
        raise GenadError(f"nothing left to score in {data_dir}/test after taking the references")
    check_masks([s for s in test if isinstance(s, ImageSample)])

    config = {
        **run_settings(data_dir, det, shots, seed, limit),
        "references": [r.id for r in refs],
        "reference_source": ref_source,
    }
    run_dir = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="genad-run-"))
    folder = RunFolder(run_dir)
    done = folder.start(config, resume=resume, must_match=_RESUME_KEYS)

    todo = pending(test, done)
    n_resumed = len(test) - len(todo)

    records, t_fit, t_pred = timed_run_into(
        folder,
        det,
        test,
        done,
        refs=refs,  # fitted only when something is left to score
        runner=runner,
        on_progress=on_progress,
        on_phase=on_phase,
        stop=stop,
        progress=progress,
    )

    own = det.params.get("threshold", BOUNDARY)
    own_t = float(own) if isinstance(own, (int, float)) and 0.0 <= float(own) <= 1.0 else BOUNDARY
    summary, curves = summarise(test, records, folder, threshold_normalized=own_t)
    summary.update(
        {
            "seconds": round(time.perf_counter() - t_start, 3),
            "fit_seconds": round(t_fit, 3),
            "predict_seconds": round(t_pred, 3),
            "images_per_second": round(len(todo) / t_pred, 3) if t_pred > 0 else None,
            "n_resumed": n_resumed,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
            "detector": det.name,
            "params": public_params(det.params),
            "shots": shots,
            "seed": seed,
            "limit": limit,
            "data_dir": str(data_dir),
            "reference_source": ref_source,
            "references": [r.id for r in refs],
            "run_dir": str(run_dir),
        }
    )
    if not refs and getattr(det, "fit_info_", None):  # a detector fitted before (a saved model)
        summary["fitted_before"] = {"references": det.fit_info_.get("count"), "at": det.fit_info_.get("at")}  # type: ignore[union-attr]
    folder.write_curves(curves)
    folder.write_summary(summary)  # last: a summary.json marks a finished run
    results = [folder.result(r) for r in records]
    return EvalRun(summary, list(test), results, run_dir, list(refs), records, curves)


# -- figures ---------------------------------------------------------------------------------
def _add_maps(
    pm: Any, samples: Sequence[Sample], records: Sequence[dict[str, Any]], folder: RunFolder, keep: Sequence[int]
) -> None:
    """Add the samples `keep` that have a map and pixel truth (normal images count as
    all-normal masks) to the accumulator, reading maps from disk one at a time."""
    for i in keep:
        s = samples[i]
        if not isinstance(s, ImageSample):
            continue
        if s.label == 1 and (s.truth is None or (s.truth.mask_path is None and s.truth.mask is None)):
            continue  # anomalous but no mask: no pixel truth for it
        amap = folder.load_map(records[i])
        if amap is None:
            continue
        from_disk = s.truth is not None and s.truth.mask is None
        mask = None if s.label == 0 else s.truth.get_mask()  # type: ignore[union-attr]
        if mask is not None and amap.shape != mask.shape:
            amap = resize_map(amap, mask.shape)
        pm.add(amap, mask)
        if s.truth is not None and from_disk:
            s.truth.mask = None  # do not keep every mask in memory


def _pixel_figures(
    samples: Sequence[Sample],
    records: Sequence[dict[str, Any]],
    folder: RunFolder,
    good: Sequence[int],
    by_type: dict[str, list[int]],
) -> tuple[dict[str, float | None], dict[str, dict[str, float | None]], dict[str, Any] | None]:
    """Pixel AUROC / AP / AUPRO over everything, and per defect type (that type + the good
    images), and the curves over everything. The good images are read once: their
    accumulated state is copied for each type, so maps are read about twice in all and at
    most two accumulators live at a time."""
    import copy

    from genad.metrics.pixel import PixelMetrics

    base = PixelMetrics()
    _add_maps(base, samples, records, folder, good)
    per: dict[str, dict[str, float | None]] = {}
    for t, idx in by_type.items():
        pm = copy.deepcopy(base)
        _add_maps(pm, samples, records, folder, idx)
        per[t] = pm.compute()
        del pm
    _add_maps(base, samples, records, folder, [i for idx in by_type.values() for i in idx])
    curves = base.curves(max_points=CURVE_POINTS)
    return base.compute(), per, curves


def _thin(points: dict[str, np.ndarray], n: int = CURVE_POINTS) -> dict[str, list[float]]:
    """Curves thinned to about n points each, as rounded lists for curves.json."""
    out = {}
    for k, v in points.items():
        v = np.asarray(v, dtype=np.float64)
        if v.size > n:
            v = v[np.unique(np.linspace(0, v.size - 1, n).round().astype(int))]
        out[k] = [round(float(x), 6) for x in v]
    return out


def _normalized(rec: dict[str, Any]) -> float | None:
    v = rec.get("normalized_score")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        return None
    return float(v)


def _histogram(
    labels: list[int],
    scores: list[float],
    units: str,
    own: float | None,
    best: float | None,
) -> dict[str, Any]:
    """The score histogram the report draws (normal vs anomalous), with the detector's own
    and the best-F1 threshold in the same units. Normalised scores get fixed bins over
    [0, 1]; raw ones span the scores and both thresholds."""
    from genad.metrics.image import score_histogram

    if units == "normalized":
        lo, hi = 0.0, 1.0
    else:
        span = [*scores, *(t for t in (own, best) if t is not None and math.isfinite(t))]
        lo, hi = min(span), max(span)
    h = score_histogram(labels, scores, lo=lo, hi=hi)
    return {"units": units, **h, "own_threshold": own, "best_f1_threshold": best}


def summarise(
    samples: list[Sample],
    records: list[dict[str, Any]],
    folder: RunFolder,
    threshold_normalized: float = BOUNDARY,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary, curves) of a run from its records (`records[i]` belongs to `samples[i]`) and
    the maps in its folder. `threshold_normalized`: the detector's own decision threshold in
    normalised units (its `threshold` option; 0.5, the calibrated boundary, by default)."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    from genad.metrics.image import best_f1_threshold_normalized, decision_metrics, f1_max, image_ap, image_auroc

    ok = [i for i, r in enumerate(records) if r.get("error") is None and r.get("score") is not None]
    labelled = [i for i in ok if samples[i].label is not None]
    labels = [int(samples[i].label) for i in labelled]  # type: ignore[arg-type]
    scores = [float(records[i]["score"]) for i in labelled]
    f1, f1_thr = f1_max(labels, scores) if labelled else (None, None)
    # normalised units where every scored result has a normalised score, else raw ones
    normalized = bool(ok) and all(_normalized(records[i]) is not None for i in ok)
    nscores = [_normalized(records[i]) or 0.0 for i in labelled] if normalized else []
    f1_thr_norm = best_f1_threshold_normalized(labels, nscores) if normalized and labelled else None
    decided = [i for i in labelled if records[i].get("decision") is not None]
    decision = decision_metrics(
        [int(samples[i].label) for i in decided],  # type: ignore[arg-type]
        [bool(records[i]["decision"]) for i in decided],
        [records[i].get("threshold") for i in decided],
    )
    if decision is not None:
        decision["threshold_normalized"] = float(threshold_normalized) if normalized else None
    has_masks = any(
        isinstance(s, ImageSample)
        and s.truth is not None
        and (s.truth.mask_path is not None or s.truth.mask is not None)
        for s in samples
    )
    per_type: dict[str, dict[str, Any]] = {}
    by_type: dict[str, list[int]] = defaultdict(list)
    for i in range(len(samples)):
        by_type[_defect(samples[i])].append(i)
    ok_set = set(ok)
    good_ok = [i for i in by_type.get("good", []) if i in ok_set]
    none: dict[str, float | None] = {"pixel_auroc": None, "pixel_ap": None, "aupro": None}
    pixel, pixel_curves = none, None
    pixel_per_type: dict[str, dict[str, float | None]] = {}
    if has_masks:
        defect_ok = {
            t: [i for i in idx if i in ok_set and samples[i].label is not None]
            for t, idx in by_type.items()
            if t != "good"
        }
        pixel, pixel_per_type, pixel_curves = _pixel_figures(
            samples, records, folder, [i for i in good_ok if samples[i].label is not None], defect_ok
        )
    for t in sorted(by_type):
        idx = by_type[t]
        idx_ok = [i for i in idx if i in ok_set]
        entry: dict[str, Any] = {
            "n": len(idx),
            "n_failed": len(idx) - len(idx_ok),
            "mean_score": float(np.mean([records[i]["score"] for i in idx_ok])) if idx_ok else None,
            "image_auroc": None,
            "pixel_auroc": None,
            "aupro": None,
        }
        if t != "good" and idx_ok and good_ok:
            both = good_ok + idx_ok
            entry["image_auroc"] = image_auroc(
                [int(samples[i].label or 0) for i in both], [float(records[i]["score"]) for i in both]
            )
            px = pixel_per_type.get(t, none)
            entry["pixel_auroc"], entry["aupro"] = px["pixel_auroc"], px["aupro"]
        per_type[t] = entry

    usage: Usage | None = None
    for r in records:
        if r.get("usage"):
            usage = (usage or Usage()) + Usage(**r["usage"])
    failed = [{"id": r["id"], "error": r["error"]} for r in records if r.get("error") or r.get("score") is None]
    summary = {
        "image_auroc": image_auroc(labels, scores) if labelled else None,
        "image_ap": image_ap(labels, scores) if labelled else None,
        "image_f1_max": f1,
        "image_f1_threshold": f1_thr,
        "image_f1_threshold_normalized": f1_thr_norm,
        "decision": decision,
        **pixel,
        "n_images": len(samples),
        "n_scored": len(ok),
        "n_failed": len(samples) - len(ok),
        "n_anomalous": sum(1 for s in samples if s.label == 1),
        "n_normal": sum(1 for s in samples if s.label == 0),
        "per_type": per_type,
        "usage": None if usage is None else usage.to_dict(),
        "failed": failed,
    }
    curves: dict[str, Any] = {"image": None, "pixel": None, "histogram": None}
    if labelled:
        key = "threshold_normalized" if normalized else "threshold"
        own = None if decision is None or decision[key] is None else float(decision[key])  # type: ignore[arg-type]
        curves["histogram"] = (
            _histogram(labels, nscores, "normalized", own, f1_thr_norm)
            if normalized
            else _histogram(labels, scores, "raw", own, f1_thr)
        )
    if labelled and 0 < sum(labels) < len(labels):
        fpr, tpr, _ = roc_curve(labels, scores)
        precision, recall, _ = precision_recall_curve(labels, scores)
        curves["image"] = _thin({"fpr": fpr, "tpr": tpr, "recall": recall, "precision": precision})
    if pixel_curves is not None:
        curves["pixel"] = _thin(pixel_curves)
    return summary, curves
