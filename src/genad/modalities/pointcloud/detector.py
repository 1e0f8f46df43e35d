"""PointCloudDetector ("pointcloud"): an image engine inspects rendered views of each shape.

    det = genad.create("pointcloud", image_detector="embedded", views=6)
    det.fit(normal_clouds)                 # few-shot: one image detector per view
    results = det.predict(clouds)          # Result.anomaly_map: one score per point (N,)

Each cloud is normalised and rendered from `views` directions (render.py). Few-shot: the
references' renders of view v fit the image detector of view v. Zero-shot: with >= 3 clouds
in the batch, view v of every cloud is scored against view v of the others (the image
detector's own zero-shot); with fewer, all views of all clouds are pooled into one batch.
Per-view anomaly maps go back to the points (mean over the views that see a point); the
object score is the max (or mean) of the per-view image scores.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from genad import registry
from genad.detector import Capabilities, Detector, check_image_detector, image_detector_class, param
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
        per_sample_time = (time.perf_counter() - t0) / len(ok)
        for i in ok:
            self._finish(results[i], samples[i], rendered[i], view_results[i])  # type: ignore[arg-type]
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

    def _finish(self, result: Result, sample: PointCloudSample, views: list[View], vres: list[Result]) -> None:
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
        decisions = [r.decision for r in good if r.decision is not None]
        if decisions:
            result.decision = bool(any(decisions)) if self.view_reduce == "max" else bool(np.mean(decisions) >= 0.5)
        thresholds = [r.threshold for r in good if r.threshold is not None]
        if thresholds and self.view_reduce == "max":
            result.threshold = float(min(thresholds))
        best = int(np.argmax([float(r.score) if r.ok and r.score is not None else -np.inf for r in vres]))
        result.explanation = f"most anomalous in view {best + 1} of {len(views)} (score {vres[best].score:.3g})"
        if point_scores is not None:
            hot = point_scores >= np.nanpercentile(point_scores, 99)
            centre = np.asarray(sample.points, dtype=np.float64)[hot].mean(axis=0)
            result.extra["hot_spot"] = [float(c) for c in centre]
            result.explanation += f"; highest point scores around ({centre[0]:.3g}, {centre[1]:.3g}, {centre[2]:.3g})"
        result.extra["view_scores"] = [None if not r.ok else float(r.score) for r in vres]  # type: ignore[arg-type]
        result.extra["best_view"] = best
        if self.keep_views:
            overlays = colorize_points(views, point_scores) if point_scores is not None else [None] * len(views)
            result.views = [ResultView(v.image, m, o) for v, m, o in zip(views, maps, overlays)]


def views_points(sample: PointCloudSample) -> np.ndarray:
    """The points exactly as rendered (normalised), so nearest-neighbour filling is isotropic."""
    pts = np.asarray(sample.points, dtype=np.float64)
    return pts - pts.mean(axis=0)
