"""The benchmark protocol: pick references, run a detector, score it, write the summary.

    run = run_benchmark("data/magnetic_tile", "embedded", shots=4, seed=0, run_dir="runs/mt")
    run.summary["image_auroc"], run.summary["aupro"]

Protocol
* The scored set is `test/` of an MVTec-style folder (see genad.io.mvtec).
* Few-shot (shots > 0): `shots` normal references are drawn with `seed` from `train/good`;
  where there is no train split (e.g. brain_mri) they come from `test/good` and are left out
  of the scored set.
* `limit`: a subsample stratified by defect type, drawn with `seed`.
* The detector gets `fit(refs)` when shots > 0, then `predict` on chunks of its `batch_size`
  (None = the whole set at once).
* Every result is appended to `run_dir/results.jsonl` as soon as its chunk is scored, and its
  map to `run_dir/maps/<n>.npz` (float16, compressed), so a crash loses nothing and
  `resume=True` scores only what is missing (LMM runs cost money). Failed samples are retried
  on resume.
* Metrics (genad.metrics) are computed from those files at the end, one accumulator at a
  time, so memory stays bounded however large the set. Failed samples are counted, listed and
  left out of the metrics.
"""

from __future__ import annotations

import json
import math
import re
import resource
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genad import registry
from genad.detector import Detector
from genad.errors import GenadError
from genad.io.images import image_size
from genad.io.mvtec import categories, load_mvtec, load_mvtec_train
from genad.types import ImageSample, Region, Result, Sample, Usage, jsonable

RESULTS_FILE = "results.jsonl"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
MAPS_DIR = "maps"
# Settings that must match for a run directory to be resumed.
_RESUME_KEYS = ("data_dir", "detector", "params", "shots", "seed", "limit")


@dataclass
class EvalRun:
    """What a benchmark run produced. `results[i]` belongs to `samples[i]`; maps are kept on
    disk (not in memory): read one with `load_map(i)`."""

    summary: dict[str, Any]
    samples: list[Sample]
    results: list[Result]
    run_dir: Path
    refs: list[Sample] = field(default_factory=list)
    map_files: list[Path | None] = field(default_factory=list)

    def load_map(self, i: int) -> np.ndarray | None:
        """The anomaly map of sample i as float32, or None if it has none."""
        path = self.map_files[i] if i < len(self.map_files) else None
        return None if path is None else read_map(path)


def read_map(path: Path) -> np.ndarray:
    with np.load(path) as z:
        return z["map"].astype(np.float32)


def _write_map(path: Path, amap: np.ndarray) -> None:
    a = np.asarray(amap, dtype=np.float32)
    info = np.finfo(np.float16)
    # float16 halves the disk cost; clip so that a huge score does not become inf.
    a = np.clip(np.nan_to_num(a, nan=0.0, posinf=info.max, neginf=info.min), info.min, info.max)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, map=a.astype(np.float16))
    tmp.replace(path)  # atomic: a crash never leaves half a map behind


_SECRET = re.compile(r"key|token|secret|password|authorization", re.IGNORECASE)


def public_params(params: dict[str, Any]) -> dict[str, Any]:
    """Detector parameters fit for files and logs: secrets (api_key, tokens...) masked."""
    return {k: ("***" if _SECRET.search(str(k)) and v else jsonable(v)) for k, v in params.items()}


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


def draw_references(data_dir: Path, test: list[ImageSample], shots: int, seed: int) -> tuple[list[ImageSample], list[ImageSample], str]:
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
                f"mask {s.truth.mask_path} is {mw}x{mh} but its image {s.path} is {w}x{h}: "
                f"fix or remove the mask"
            )


# -- the run directory -----------------------------------------------------------------------
def _read_done(path: Path) -> dict[str, dict[str, Any]]:
    """Lines of results.jsonl by sample id; a later line for the same id wins. A torn last
    line (a crash mid-write) is ignored."""
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    with path.open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[rec["id"]] = rec
    return done


def _prepare_run_dir(run_dir: Path, config: dict[str, Any], resume: bool) -> dict[str, dict[str, Any]]:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / MAPS_DIR).mkdir(exist_ok=True)
    results = run_dir / RESULTS_FILE
    cfg_path = run_dir / CONFIG_FILE
    if results.exists() and results.stat().st_size > 0 and not resume:
        raise GenadError(
            f"{run_dir} already holds results: pass --resume to continue that run, or choose a new --run-dir"
        )
    if resume and cfg_path.exists():
        old = json.loads(cfg_path.read_text(encoding="utf-8"))
        diff = [k for k in _RESUME_KEYS if old.get(k) != config.get(k)]
        if diff:
            raise GenadError(
                f"cannot resume {run_dir}: it was run with different {', '.join(diff)} "
                f"(was {', '.join(f'{k}={old.get(k)!r}' for k in diff)}); use the same options or a new --run-dir"
            )
    cfg_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return _read_done(results) if resume else {}


def _result_from_record(rec: dict[str, Any]) -> Result:
    usage = Usage(**rec["usage"]) if rec.get("usage") else None
    regions = [
        Region(
            score=float(r["score"]), box=tuple(r["box"]) if r.get("box") else None,
            label=r.get("label"), index=r.get("index"), explanation=r.get("explanation"),
        )
        for r in rec.get("regions") or []
    ]
    return Result(
        rec["id"], score=rec.get("score"), decision=rec.get("decision"), regions=regions,
        ranges=[tuple(x) for x in rec.get("ranges") or []], explanation=rec.get("explanation"),
        threshold=rec.get("threshold"), timings=rec.get("timings") or {}, usage=usage,
        error=rec.get("error"), extra=rec.get("extra") or {},
    )


# -- the protocol ----------------------------------------------------------------------------
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
) -> EvalRun:
    """Run `detector` on the MVTec-style dataset at `data_dir` and compute its figures.

    `detector` is a registry name (built with `detector_params`) or a Detector instance.
    `run_dir` keeps results.jsonl, maps/ and summary.json (a fresh temporary folder when
    None). `resume=True` continues a run in `run_dir`, scoring only samples not yet done.
    Raises GenadError for a bad folder, too many shots, a mask of the wrong size, or a run
    directory that holds a different run.
    """
    t_start = time.perf_counter()
    data_dir = Path(data_dir)
    if shots < 0:
        raise GenadError(f"--shots must be 0 or more, got {shots}")
    if limit is not None and limit <= 0:
        raise GenadError(f"--limit must be a positive number, got {limit}")
    cats = categories(data_dir) if data_dir.is_dir() else []
    if len(cats) > 1:
        names = ", ".join(c.name for c in cats[:6])
        raise GenadError(
            f"{data_dir} holds {len(cats)} categories ({names}{', ...' if len(cats) > 6 else ''}): "
            f"evaluate one at a time, e.g. genad eval {cats[0]}"
        )
    test = load_mvtec(data_dir, "test")

    if isinstance(detector, Detector):
        det = detector
        if detector_params:
            raise GenadError("detector_params apply only when the detector is given by name")
    else:
        det = registry.create(detector, **(detector_params or {}))
    if "image" not in det.modalities:
        raise GenadError(f"detector {det.name!r} does not read images: choose an image detector (see `genad detectors`)")
    if shots == 0 and not det.zero_shot:
        raise GenadError(f"detector {det.name!r} needs normal references: pass --shots K (e.g. --shots 4)")

    refs, test, ref_source = draw_references(data_dir, test, shots, seed)
    if limit is not None:
        test = stratified_subset(test, limit, seed)
    if not test:
        raise GenadError(f"nothing left to score in {data_dir}/test after taking the references")
    check_masks(test)

    config = {
        "data_dir": str(data_dir.resolve()),
        "detector": det.name,
        "params": public_params(det.params),
        "shots": shots,
        "seed": seed,
        "limit": limit,
        "references": [r.id for r in refs],
        "reference_source": ref_source,
    }
    run_dir = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="genad-run-"))
    done = _prepare_run_dir(run_dir, config, resume)

    index = {s.id: n for n, s in enumerate(test)}
    todo = [s for s in test if s.id not in done or done[s.id].get("error") or done[s.id].get("score") is None]
    n_resumed = len(test) - len(todo)

    t_fit = t_pred = 0.0
    if todo:
        t0 = time.perf_counter()
        if refs:
            det.fit(refs)
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        for rec in _score(det, test, todo, index, run_dir, progress, on_progress, n_resumed):
            done[rec["id"]] = rec
        t_pred = time.perf_counter() - t0
    elif on_progress is not None:
        on_progress(len(test), len(test))

    records = [done[s.id] for s in test]
    results = [_result_from_record(r) for r in records]
    map_files = [run_dir / r["map"] if r.get("map") and (run_dir / r["map"]).is_file() else None for r in records]
    summary = _summarise(test, records, map_files)
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
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return EvalRun(summary, list(test), results, run_dir, list(refs), map_files)


def _chunks(det: Detector, test: list[Sample], todo: list[Sample]) -> Iterator[tuple[list[Sample], set[str]]]:
    """(batch to predict, ids in it to record). A zero-shot detector that scores the whole
    set at once (batch_size None) must see every sample even when some are already done."""
    caps = det.capabilities()
    bs = None if caps.whole_batch else (caps.chunk_size or 32)
    want = {s.id for s in todo}
    if bs is None:
        batch = todo if det.fitted_ else test
        yield batch, want
        return
    for i in range(0, len(todo), max(1, int(bs))):
        chunk = todo[i : i + int(bs)]
        yield chunk, {s.id for s in chunk}


def _score(
    det: Detector,
    test: list[Sample],
    todo: list[Sample],
    index: dict[str, int],
    run_dir: Path,
    progress: bool,
    on_progress: Callable[[int, int], None] | None,
    n_done: int,
) -> Iterator[dict[str, Any]]:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(test), initial=n_done, disable=not progress, unit="img", desc=f"genad eval {det.name}", leave=False)
    done = n_done
    try:
        with (run_dir / RESULTS_FILE).open("a", encoding="utf-8") as out:
            for batch, want in _chunks(det, test, todo):
                try:
                    results = det.predict(batch)
                    if len(results) != len(batch):
                        raise RuntimeError(f"predict returned {len(results)} results for {len(batch)} samples")
                except (GenadError, KeyboardInterrupt):
                    raise
                except Exception as e:  # noqa: BLE001 - one broken chunk must not end a paid run
                    msg = f"{type(e).__name__}: {e}"
                    results = [Result(s.id, error=msg) for s in batch]
                for s, r in zip(batch, results):
                    if s.id not in want:
                        continue
                    rec = _record(s, r, index[s.id], run_dir)
                    out.write(json.dumps(rec) + "\n")
                    out.flush()
                    done += 1
                    bar.update(1)
                    if on_progress is not None:
                        on_progress(done, len(test))
                    yield rec
    finally:
        bar.close()


def _record(s: Sample, r: Result, n: int, run_dir: Path) -> dict[str, Any]:
    d = r.to_dict()
    if r.score is not None and not math.isfinite(float(r.score)):
        d["score"], d["error"] = None, d["error"] or f"non-finite score {r.score}"
    map_rel = None
    if r.anomaly_map is not None and d["error"] is None:
        map_rel = f"{MAPS_DIR}/{n}.npz"
        _write_map(run_dir / map_rel, r.anomaly_map)
    d.pop("sample_id", None)
    return {
        "id": s.id,
        "n": n,
        "label": s.label,
        "defect_type": s.truth.defect_type if s.truth else None,
        **d,
        "map": map_rel,
    }


# -- figures ---------------------------------------------------------------------------------
def _add_maps(pm: Any, samples: Sequence[Sample], map_files: Sequence[Path | None], keep: Sequence[int]) -> None:
    """Add the samples `keep` that have a map and pixel truth (normal images count as
    all-normal masks) to the accumulator, reading maps from disk one at a time."""
    from genad.report.overlay import resize_map

    for i in keep:
        s, path = samples[i], map_files[i]
        if path is None or not isinstance(s, ImageSample):
            continue
        if s.label == 1 and (s.truth is None or s.truth.mask_path is None):
            continue  # anomalous but no mask: no pixel truth for it
        mask = None if s.label == 0 else s.truth.get_mask()  # type: ignore[union-attr]
        amap = read_map(path)
        if mask is not None and amap.shape != mask.shape:
            amap = resize_map(amap, mask.shape)
        pm.add(amap, mask)
        if s.truth is not None:
            s.truth.mask = None  # do not keep every mask in memory


def _pixel_figures(
    samples: Sequence[Sample], map_files: Sequence[Path | None], good: Sequence[int], by_type: dict[str, list[int]]
) -> tuple[dict[str, float | None], dict[str, dict[str, float | None]]]:
    """Pixel AUROC / AP / AUPRO over everything, and per defect type (that type + the good
    images). The good images are read once: their accumulated state is copied for each type,
    so maps are read about twice in all and at most two accumulators live at a time."""
    import copy

    from genad.metrics.pixel import PixelMetrics

    base = PixelMetrics()
    _add_maps(base, samples, map_files, good)
    per: dict[str, dict[str, float | None]] = {}
    for t, idx in by_type.items():
        pm = copy.deepcopy(base)
        _add_maps(pm, samples, map_files, idx)
        per[t] = pm.compute()
        del pm
    _add_maps(base, samples, map_files, [i for idx in by_type.values() for i in idx])
    return base.compute(), per


def _summarise(samples: list[Sample], records: list[dict[str, Any]], map_files: list[Path | None]) -> dict[str, Any]:
    from genad.metrics.image import decision_metrics, f1_max, image_ap, image_auroc

    ok = [i for i, r in enumerate(records) if r.get("error") is None and r.get("score") is not None]
    labelled = [i for i in ok if samples[i].label is not None]
    labels = [int(samples[i].label) for i in labelled]  # type: ignore[arg-type]
    scores = [float(records[i]["score"]) for i in labelled]
    f1, f1_thr = f1_max(labels, scores) if labelled else (None, None)
    decided = [i for i in labelled if records[i].get("decision") is not None]
    decision = decision_metrics([int(samples[i].label) for i in decided],  # type: ignore[arg-type]
                                [bool(records[i]["decision"]) for i in decided])
    has_masks = any(
        isinstance(s, ImageSample) and s.truth is not None and s.truth.mask_path is not None for s in samples
    )
    per_type: dict[str, dict[str, Any]] = {}
    by_type: dict[str, list[int]] = defaultdict(list)
    for i in range(len(samples)):
        by_type[_defect(samples[i])].append(i)
    ok_set = set(ok)
    good_ok = [i for i in by_type.get("good", []) if i in ok_set]
    none: dict[str, float | None] = {"pixel_auroc": None, "pixel_ap": None, "aupro": None}
    pixel, pixel_per_type = none, {}
    if has_masks:
        defect_ok = {
            t: [i for i in idx if i in ok_set and samples[i].label is not None]
            for t, idx in by_type.items() if t != "good"
        }
        pixel, pixel_per_type = _pixel_figures(samples, map_files, [i for i in good_ok if samples[i].label is not None], defect_ok)
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
                [samples[i].label for i in both], [records[i]["score"] for i in both]
            )
            px = pixel_per_type.get(t, none)
            entry["pixel_auroc"], entry["aupro"] = px["pixel_auroc"], px["aupro"]
        per_type[t] = entry

    usage: Usage | None = None
    for r in records:
        if r.get("usage"):
            usage = (usage or Usage()) + Usage(**r["usage"])
    failed = [{"id": r["id"], "error": r["error"]} for r in records if r.get("error") or r.get("score") is None]
    return {
        "image_auroc": image_auroc(labels, scores) if labelled else None,
        "image_ap": image_ap(labels, scores) if labelled else None,
        "image_f1_max": f1,
        "image_f1_threshold": f1_thr,
        "decision": decision,
        **pixel,
        "n_images": len(samples),
        "n_scored": len(ok),
        "n_failed": len(samples) - len(ok),
        "n_anomalous": sum(1 for s in samples if s.label == 1),
        "n_normal": sum(1 for s in samples if s.label == 0),
        "per_type": per_type,
        "usage": None if usage is None else usage.__dict__.copy(),
        "failed": failed,
    }
