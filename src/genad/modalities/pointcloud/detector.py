"""PointCloudDetector ("pointcloud"): an image engine inspects rendered views of each shape.

    det = genad.create("pointcloud", image_detector="embedded", views=6)
    det.fit(normal_clouds)                 # few-shot: one image detector per view
    results = det.predict(clouds)          # Result.anomaly_map: one score per point (N,)

Each cloud is normalised and rendered from `views` directions (render.py). Few-shot: the
references' renders of view v fit the image detector of view v. Zero-shot: with >= 3 clouds
in the batch, view v of every cloud is scored against view v of the others (the image
detector's own zero-shot); with fewer, all views of all clouds are pooled into one batch.
Per-view anomaly maps go back to the points (mean over the views that see a point).

Decisions (genad.decision): each view is scored and calibrated by the image engine itself
(its references in few-shot, its zero-shot batch otherwise). The object score stays the max
(`view_reduce="mean"`: mean) of the views' raw image scores, in the engine's units, and is
decided on the views' own calibrations pooled: the boundary and normalised scale recovered
from the view results (genad.decision.recover_calibration), the median over views. Pooling, not
each view's own normalised score: all views are scored by the same engine at the same size,
and a few-shot view's calibration rests on a handful of references; the max of the views'
normalised scores ranked clouds worse (baseline engine, benchmarks/pointcloud.py, few-shot
object AUROC plane 0.818 -> 0.713, wavy 0.930 -> 0.858). Few-shot with `view_reduce="max"`,
the boundary moves up by ln(views) normalised scales: each view's boundary, set on its
references, lets some normal views through, and the highest of V views passes about V times
as often (a Bonferroni correction in logistic tails). Measured on benchmarks/pointcloud.py's
parts (4 shapes, 20 good + 20 defective each, 6 views): embedded few-shot flagged 60 of the 80
good parts without it and 7 with it, finding 80 and 78 of the 80 defective ones. Zero-shot
the boundary is kept: the engine's zero-shot boundary (map level + 2 peak heights) already
sits above a normal view's highest stretch, and embedded zero-shot flagged 0 of 80 good parts
(56 of 80 defective found; with the shift only 10).

`threshold` (normalised) and `raw_threshold` (a boundary on the object score, in the engine's
units) move the boundary `Result.threshold`; `Result.decision` = object score > it. An engine
whose results carry no boundary (an old-style image detector) is calibrated by `from_values`
over all the batch's view scores (median + 3 robust sigmas). `extra["view_scores"]` holds the
raw view scores, `extra["view_normalized"]` the engine's normalised ones.

Point-level outputs follow the decision: an anomalous cloud flags the points whose score is
above the object's boundary (`extra["point_threshold"]` = `Result.threshold`: the points the
views show above it) or, when none is, its top 1% (`point_threshold` then sits just below
them); `extra["flagged_points"]` counts them and `extra["hot_spot"]` is their centre;
`flagged_points(result)` gives the mask. A cloud judged normal flags no point and has no hot
spot.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from genad import registry
from genad.decision import Calibration, from_values, recover_calibration
from genad.detector import (
    Capabilities,
    Detector,
    check_image_detector,
    image_detector_class,
    param,
    raw_threshold_param,
    threshold_param,
)
from genad.errors import GenadError
from genad.modalities.pointcloud.render import View, colorize_points, project_to_points, render_views
from genad.types import ImageSample, PointCloudSample, Result, Sample
from genad.types import View as ResultView


class PointCloudDetector(Detector):
    """Multi-view rendering + any image detector, scores mapped back to the points."""

    name = "pointcloud"
    modalities = ("pointcloud",)
    zero_shot = True

    image_detector: str = param("embedded", convert=check_image_detector, doc="the image detector that scores views")
    image_params: dict = param({}, doc="options of that image detector (they win over its tuning for depth views)")
    views: int = param(6, low=1, high=64, doc="rendered views per cloud")
    layout: str = param("top", choices=("top", "sphere"), doc="top: parts seen from above; sphere: all around")
    size: int = param(224, low=32, high=2048, doc="side of each rendered view, in pixels")
    elevation: float = param(45.0, low=-90.0, high=90.0, doc="camera elevation of the side views, in degrees")
    point_reduce: str = param("mean", choices=("mean", "max"), doc="a point's score over the views that see it")
    view_reduce: str = param("max", choices=("mean", "max"), doc="the object score over the views")
    keep_views: bool = param(False, doc="keep the rendered views in Result.views")
    threshold: float = threshold_param()
    raw_threshold: float | None = raw_threshold_param()

    view_detectors_: list[Detector] | None = None  # fitted: one image detector per view

    def capabilities(self) -> Capabilities:
        few = self.view_detectors_ is not None
        # zero-shot, view v of every cloud is scored against view v of the others
        return Capabilities(self.modalities, True, whole_batch=not few, chunk_size=self.chunk_size)

    def _new_image_detector(self) -> Detector:
        cls = image_detector_class(self.image_detector)
        return registry.create(self.image_detector, **cls.tuned(self.image_params, "depth_views"))

    def render(self, sample: PointCloudSample) -> list[View]:
        """The views this detector shows the image engine (for reports and debugging)."""
        if not isinstance(sample, PointCloudSample):
            raise GenadError(f"sample {sample.id!r} is a {sample.modality}, not a point cloud")
        if len(sample.points) < 10:
            raise GenadError(f"point cloud {sample.id!r} has {len(sample.points)} points: too few to render")
        return render_views(sample.points, self.views, self.size, self.layout, elevation_deg=self.elevation)

    def fit(self, normal_samples: Sequence[Sample]) -> PointCloudDetector:
        refs = [s for s in normal_samples]
        if not refs:
            raise GenadError("fit() needs at least one normal point cloud (or call predict() for zero-shot)")
        per_view: list[list[ImageSample]] = [[] for _ in range(self.views)]
        for s in refs:
            for v, view in enumerate(self.render(s)):  # type: ignore[arg-type]
                per_view[v].append(ImageSample(id=f"{s.id}#view{v}", array=view.image))
        self.view_detectors_ = [self._new_image_detector().fit(imgs) for imgs in per_view]
        self.fitted_ = True
        return self

    def predict(self, samples: Sequence[Sample]) -> list[Result]:
        samples = list(samples)
        results = [Result(sample_id=s.id) for s in samples]
        rendered: dict[int, list[View]] = {}
        for i, s in enumerate(samples):
            t0 = time.perf_counter()
            try:
                rendered[i] = self.render(s)  # type: ignore[arg-type]
            except GenadError as e:
                results[i].error = str(e)
            results[i].timings["render"] = time.perf_counter() - t0
        ok = sorted(rendered)
        if not ok:
            return results
        t0 = time.perf_counter()
        view_results = self._score_views(samples, rendered, ok)  # view_results[i][v]
        calibration = self._calibration(view_results)
        per_sample_time = (time.perf_counter() - t0) / len(ok)
        for i in ok:
            self._finish(results[i], samples[i], rendered[i], view_results[i], calibration)  # type: ignore[arg-type]
            results[i].timings["detect"] = per_sample_time
        return results

    def _score_views(
        self, samples: list[Sample], rendered: dict[int, list[View]], ok: list[int]
    ) -> dict[int, list[Result]]:
        out: dict[int, list[Result]] = {i: [] for i in ok}
        images = {
            (i, v): ImageSample(id=f"{samples[i].id}#view{v}", array=rendered[i][v].image)
            for i in ok
            for v in range(self.views)
        }
        if self.view_detectors_ is not None:
            for v in range(self.views):
                res = self.view_detectors_[v].predict([images[i, v] for i in ok])
                for i, r in zip(ok, res):
                    out[i].append(r)
        elif len(ok) >= 3:  # zero-shot per view: each view against the same view of the others
            for v in range(self.views):
                res = self._new_image_detector().predict([images[i, v] for i in ok])
                for i, r in zip(ok, res):
                    out[i].append(r)
        else:  # too few clouds: every view of every cloud in one zero-shot batch
            keys = [(i, v) for i in ok for v in range(self.views)]
            res = self._new_image_detector().predict([images[k] for k in keys])
            for (i, _), r in zip(keys, res):
                out[i].append(r)
        return out

    def _calibration(self, view_results: dict[int, list[Result]]) -> Calibration:
        """The views' own calibrations, pooled (see the module doc); from_values over the
        batch's view scores for an engine that decides nothing."""
        flat = [r for vs in view_results.values() for r in vs]
        try:  # the engine's own normalised threshold (its results' boundaries sit there)
            engine_t = float(self.image_params.get("threshold", 0.5))
        except (TypeError, ValueError):
            engine_t = 0.5
        got = recover_calibration(flat, engine_t, "the views' calibrations, pooled")
        if got is not None:
            if self.view_detectors_ is not None and self.view_reduce == "max" and self.views > 1:
                # few-shot: each view's boundary passes some of its normal views, and the
                # highest of V views passes about V times as often; in logistic tails that is
                # undone by moving the boundary ln(V) scales up (see the module doc)
                return Calibration(
                    got.threshold + got.scale * math.log(self.views),
                    got.scale,
                    f"{got.method} + ln({self.views}) scales (the highest of {self.views} few-shot views)",
                )
            return got
        raw = np.array([float(r.score) for r in flat if r.ok], dtype=np.float64)  # type: ignore[arg-type]
        return from_values(raw, 3.0, "view scores of the batch: median + 3 robust sigmas")

    def _finish(
        self, result: Result, sample: PointCloudSample, views: list[View], vres: list[Result], auto: Calibration
    ) -> None:
        good = [r for r in vres if r.ok]
        if not good:
            errs = "; ".join(sorted({r.error or "no score" for r in vres}))
            result.error = f"no view could be scored: {errs}"
            return
        maps = [r.anomaly_map if r.ok else None for r in vres]
        point_scores = None  # engines that give no maps (e.g. an LMM) give no point scores
        if any(m is not None for m in maps):
            point_scores = project_to_points(views, maps, views_points(sample), self.point_reduce)
        scores = np.array([r.score for r in good], dtype=np.float64)
        result.score = float(scores.max() if self.view_reduce == "max" else scores.mean())
        result.anomaly_map = point_scores
        self.decide(result, auto)
        best = int(np.argmax([float(r.score) if r.ok and r.score is not None else -np.inf for r in vres]))
        result.explanation = (
            f"most anomalous in view {best + 1} of {len(views)} (score {vres[best].score:.3g}; "
            f"object normalised score {result.normalized_score:.3g})"
        )
        if point_scores is not None and result.decision:  # point outputs follow the decision
            thr = self.calibrated(auto).raw_at(self.threshold)
            if not (point_scores > thr).any():  # no point passes: the top 1%
                thr = float(np.nextafter(np.nanpercentile(point_scores, 99), -np.inf))
            hot = point_scores > thr
            centre = np.asarray(sample.points, dtype=np.float64)[hot].mean(axis=0)
            result.extra["point_threshold"] = float(thr)
            result.extra["flagged_points"] = int(hot.sum())
            result.extra["hot_spot"] = [float(c) for c in centre]
            result.explanation += (
                f"; {int(hot.sum())} points flagged around ({centre[0]:.3g}, {centre[1]:.3g}, {centre[2]:.3g})"
            )
        elif point_scores is not None:
            result.extra["flagged_points"] = 0
        result.extra["view_scores"] = [None if not r.ok else float(r.score) for r in vres]  # type: ignore[arg-type]
        result.extra["view_normalized"] = [r.normalized_score if r.ok else None for r in vres]
        result.extra["best_view"] = best
        result.extra["calibration"] = self.calibrated(auto).to_dict()
        if self.keep_views:
            overlays = colorize_points(views, point_scores) if point_scores is not None else [None] * len(views)
            result.views = [ResultView(v.image, m, o) for v, m, o in zip(views, maps, overlays)]


def flagged_points(result: Result) -> np.ndarray | None:
    """The flagged points of a point-cloud Result as a bool (N,) mask (all False for a cloud
    judged normal); None when the result has no point scores."""
    if result.anomaly_map is None:
        return None
    thr = result.extra.get("point_threshold")
    if not result.decision or thr is None:
        return np.zeros(len(result.anomaly_map), dtype=bool)
    return np.asarray(result.anomaly_map) > float(thr)


def views_points(sample: PointCloudSample) -> np.ndarray:
    """The points exactly as rendered (normalised), so nearest-neighbour filling is isotropic."""
    pts = np.asarray(sample.points, dtype=np.float64)
    return pts - pts.mean(axis=0)
