"""VideoDetector ("video"): per-frame scores from an image engine, smoothed over time.

    det = genad.create("video", image_detector="embedded", smooth=5)
    det.fit(normal_videos)          # optional few-shot: frames of normal videos (or images)
    [r] = det.predict([load_video("cam.mp4", fps=5)])
    r.anomaly_map                   # (F,) smoothed per-frame scores; r.ranges: anomalous frames

Zero-shot, the frames of each video are scored against each other (the image engine's own
zero-shot: frames that look like the rest of the video are normal), so an event must fill
clearly less than half of the video to stand out (for "embedded", zero-shot averages each
patch's distances over the closest `zero_shot_fraction` = 50% of the other frames). Scores are smoothed with a running median
(drops one-frame flickers) then a small Gaussian; frames above the threshold form the ranges.
The threshold is the image engine's own (few-shot) or median + k * MAD of the video's scores.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from genad import registry
from genad.detector import Detector
from genad.errors import GenadError
from genad.io.video import video_frames
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


def mask_to_ranges(mask: np.ndarray, min_length: int = 1) -> list[tuple[int, int]]:
    """[start, end) runs of True, dropping runs shorter than min_length."""
    m = np.asarray(mask, dtype=bool)
    d = np.diff(np.r_[0, m.astype(np.int8), 0])
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    return [(int(a), int(b)) for a, b in zip(starts, ends) if b - a >= min_length]


def robust_threshold(scores: np.ndarray, k: float = 3.0) -> float:
    """median + k * (scaled MAD): most frames of a video are normal."""
    med = float(np.median(scores))
    mad = 1.4826 * float(np.median(np.abs(scores - med)))
    if mad <= 1e-12:
        mad = float(np.std(scores)) or 1e-6
    return med + k * mad


class VideoDetector(Detector):
    """Frames through any image detector, then temporal smoothing and range finding."""

    modalities = ("video",)
    zero_shot = True
    batch_size = 1  # videos are scored independently: let the evaluator write results as they come

    def __init__(
        self,
        image_detector: str = "embedded",
        image_params: dict[str, Any] | None = None,
        smooth: int = 5,
        sigma: float = 1.0,
        k: float = 3.0,
        threshold: float | None = None,
        min_range: int = 2,
        max_ref_frames: int = 32,
        zero_shot_fraction: float | None = 0.5,
    ) -> None:
        if int(smooth) < 1 or float(sigma) < 0:
            raise GenadError("smooth must be >= 1 frame and sigma >= 0")
        if int(max_ref_frames) < 1 or int(min_range) < 1:
            raise GenadError("max_ref_frames and min_range must be >= 1")
        if image_detector in ("pointcloud", "video", "video-rules"):
            raise GenadError(f"image_detector must be an image detector such as 'embedded', not {image_detector!r}")
        super().__init__(
            image_detector=image_detector, image_params=dict(image_params or {}), smooth=int(smooth),
            sigma=float(sigma), k=float(k), threshold=threshold, min_range=int(min_range),
            max_ref_frames=int(max_ref_frames), zero_shot_fraction=zero_shot_fraction,
        )
        self.image_detector = image_detector
        self.image_params = dict(image_params or {})
        self.smooth, self.sigma, self.k = int(smooth), float(sigma), float(k)
        self.threshold = None if threshold is None else float(threshold)
        self.min_range, self.max_ref_frames = int(min_range), int(max_ref_frames)
        self.zero_shot_fraction = zero_shot_fraction
        self.frame_detector_: Detector | None = None
        registry.get(image_detector)  # fail now if the engine is missing

    def _new(self, zero_shot: bool = False) -> Detector:
        params = dict(self.image_params)
        if zero_shot and self.image_detector == "embedded" and self.zero_shot_fraction is not None:
            # An event spans consecutive frames, so an anomalous frame finds close matches in
            # its neighbours; averaging over half of the other frames (not the closest 30%)
            # keeps those few neighbours from hiding it.
            params.setdefault("fraction", self.zero_shot_fraction)
        return registry.create(self.image_detector, **params)

    def fit(self, normal_samples: Sequence[Sample]) -> VideoDetector:
        """Normal videos (their frames, evenly sampled up to max_ref_frames in all) or images."""
        pools: list[list[ImageSample]] = []
        for s in normal_samples:
            if isinstance(s, VideoSample):
                pools.append([ImageSample(id=f"{s.id}#{j}", array=f) for j, f in enumerate(video_frames(s))])
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
        out = []
        for s in samples:
            t0 = time.perf_counter()
            r = Result(sample_id=s.id)
            try:
                self._predict_one(s, r)
            except GenadError as e:
                r.error = str(e)
            r.timings["total"] = time.perf_counter() - t0
            out.append(r)
        return out

    def _predict_one(self, sample: Sample, result: Result) -> None:
        if not isinstance(sample, VideoSample):
            raise GenadError(f"sample {sample.id!r} is a {sample.modality}, not a video")
        frames = video_frames(sample)
        n = len(frames)
        if self.frame_detector_ is None and n < 3:
            raise GenadError(f"video {sample.id!r} has {n} frame(s): zero-shot needs >= 3, or fit() normal videos first")
        images = [ImageSample(id=f"{sample.id}#{j}", array=f) for j, f in enumerate(frames)]
        det = self.frame_detector_ if self.frame_detector_ is not None else self._new(zero_shot=True)
        frame_results = det.predict(images)
        raw = np.array([r.score if r.ok else np.nan for r in frame_results], dtype=np.float64)
        smoothed = smooth_scores(raw, self.smooth, self.sigma)
        thr = self._threshold(frame_results, smoothed)
        ranges = mask_to_ranges(smoothed > thr, self.min_range)
        result.anomaly_map = smoothed.astype(np.float32)
        result.score = float(smoothed.max())
        result.threshold = thr
        result.decision = bool(ranges)
        result.ranges = ranges
        result.extra["raw_frame_scores"] = raw.astype(np.float32)
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
            result.explanation = f"no frame above the threshold {thr:.3g} (peak at frame {peak}, score {smoothed[peak]:.3g})"

    def _threshold(self, frame_results: list[Result], smoothed: np.ndarray) -> float:
        if self.threshold is not None:
            return self.threshold
        if self.frame_detector_ is not None:
            thr = [r.threshold for r in frame_results if r.threshold is not None]
            if thr:
                return float(np.median(thr))
        return robust_threshold(smoothed, self.k)
