"""VideoDetector ("video"): per-frame scores from an image engine, smoothed over time.

    det = genad.create("video", image_detector="embedded", smooth=5)
    det.fit(normal_videos)          # optional few-shot: frames of normal videos (or images)
    [r] = det.predict([load_video("cam.mp4", fps=5)])
    r.anomaly_map                   # (F,) smoothed per-frame scores; r.ranges: anomalous frames

Zero-shot, the frames of each video are scored against each other (the image engine's own
zero-shot: frames that look like the rest of the video are normal), so an event must fill
clearly less than half of the video to stand out (the image engine is asked for its settings
for video frames: "embedded" then averages each patch's distances over the closest 50% of
the other frames, see `Detector.tuned`). Scores are smoothed with a running median
(drops one-frame flickers) then a small Gaussian; frames above the threshold form the ranges.
The threshold is the image engine's own (few-shot) or median + k * MAD of the video's scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from genad import registry
from genad.detector import Detector, check_image_detector, image_detector_class, param, predict_each
from genad.errors import GenadError
from genad.ops import check_min_batch, robust_threshold, runs_to_ranges
from genad.types import ImageSample, Result, Sample, VideoSample


def smooth_scores(scores: np.ndarray, window: int = 5, sigma: float = 1.0) -> np.ndarray:
    """Running median over `window` frames then a Gaussian of `sigma` frames; NaN (frames that
    failed) are interpolated from their neighbours first."""
    s = np.asarray(scores, dtype=np.float64).copy()
    bad = ~np.isfinite(s)
    if bad.all():
        raise GenadError("no frame could be scored")
    if bad.any():
        idx = np.arange(len(s))
        s[bad] = np.interp(idx[bad], idx[~bad], s[~bad])
    if window > 1:
        s = ndimage.median_filter(s, size=int(window), mode="nearest")
    if sigma > 0:
        s = ndimage.gaussian_filter1d(s, sigma, mode="nearest")
    return s


class VideoDetector(Detector):
    """Frames through any image detector, then temporal smoothing and range finding."""

    name = "video"
    modalities = ("video",)
    zero_shot = True
    chunk_size = 1  # videos are scored independently: a run writes results as they come

    image_detector: str = param("embedded", convert=check_image_detector, doc="the image detector that scores frames")
    image_params: dict = param({}, doc="options of that image detector")
    smooth: int = param(5, low=1, high=1001, doc="running median over this many frames")
    sigma: float = param(1.0, low=0.0, high=100.0, doc="then a Gaussian of this many frames")
    k: float = param(3.0, low=0.0, high=100.0, doc="zero-shot threshold: median + k * MAD of the frame scores")
    threshold: float | None = param(None, "float", doc="fixed threshold on the smoothed frame scores")
    min_range: int = param(2, low=1, doc="shortest anomalous range, in frames")
    max_ref_frames: int = param(32, low=1, high=100_000, doc="normal frames kept for fit()")

    frame_detector_: Detector | None = None  # fitted: the image detector, fit on normal frames

    def _new(self, zero_shot: bool = False) -> Detector:
        cls = image_detector_class(self.image_detector)
        params = cls.tuned(self.image_params, "video_frames") if zero_shot else dict(self.image_params)
        return registry.create(self.image_detector, **params)

    def fit(self, normal_samples: Sequence[Sample]) -> VideoDetector:
        """Normal videos (their frames, evenly sampled up to max_ref_frames in all) or images."""
        pools: list[list[ImageSample]] = []
        for s in normal_samples:
            if isinstance(s, VideoSample):
                pools.append([ImageSample(id=f"{s.id}#{j}", array=f) for j, f in enumerate(s.load_frames())])
            elif isinstance(s, ImageSample):
                pools.append([s])
            else:
                raise GenadError(f"fit() takes normal videos or frame images, got a {s.modality} ({s.id})")
        refs = [im for pool in pools for im in pool]
        if not refs:
            raise GenadError("fit() needs at least one normal video or frame")
        if len(refs) > self.max_ref_frames:
            pick = np.linspace(0, len(refs) - 1, self.max_ref_frames).round().astype(int)
            refs = [refs[i] for i in np.unique(pick)]
        self.frame_detector_ = self._new().fit(refs)
        self.fitted_ = True
        return self

    def predict(self, samples: Sequence[Sample]) -> list[Result]:
        return predict_each(samples, self._predict_one)

    def _predict_one(self, sample: Sample, result: Result) -> None:
        if not isinstance(sample, VideoSample):
            raise GenadError(f"sample {sample.id!r} is a {sample.modality}, not a video")
        frames = sample.load_frames()
        n = len(frames)
        if self.frame_detector_ is None:
            try:
                check_min_batch(n, "frames")
            except GenadError as e:
                raise GenadError(f"video {sample.id!r} has {n} frame(s): {e}") from None
        images = [ImageSample(id=f"{sample.id}#{j}", array=f) for j, f in enumerate(frames)]
        det = self.frame_detector_ if self.frame_detector_ is not None else self._new(zero_shot=True)
        frame_results = det.predict(images)
        raw = np.array([r.score if r.ok else np.nan for r in frame_results], dtype=np.float64)
        smoothed = smooth_scores(raw, self.smooth, self.sigma)
        thr = self._threshold(frame_results, smoothed)
        ranges = runs_to_ranges(smoothed > thr, self.min_range)
        result.anomaly_map = smoothed.astype(np.float32)
        result.score = float(smoothed.max())
        result.threshold = thr
        result.decision = bool(ranges)
        result.ranges = ranges
        result.frame_scores = raw.astype(np.float32)
        failed = int(np.isnan(raw).sum())
        if failed:
            result.extra["failed_frames"] = failed
        idx = sample.meta.get("frame_index")
        if idx is not None and len(idx) == n:
            idx = np.asarray(idx)
            result.extra["source_ranges"] = [(int(idx[a]), int(idx[b - 1]) + 1) for a, b in ranges]
        peak = int(np.argmax(smoothed))
        if ranges:
            spans = ", ".join(f"{a}-{b - 1}" for a, b in ranges[:5])
            result.explanation = f"anomalous frames {spans} of {n} (peak at frame {peak}, score {smoothed[peak]:.3g})"
        else:
            result.explanation = (
                f"no frame above the threshold {thr:.3g} (peak at frame {peak}, score {smoothed[peak]:.3g})"
            )

    def _threshold(self, frame_results: list[Result], smoothed: np.ndarray) -> float:
        if self.threshold is not None:
            return self.threshold
        if self.frame_detector_ is not None:
            thr = [r.threshold for r in frame_results if r.threshold is not None]
            if thr:
                return float(np.median(thr))
        return robust_threshold(smoothed, self.k)
