"""VideoDetector ("video"): per-frame scores from an image engine, smoothed over time.

    det = genad.create("video", image_detector="embedded", smooth=5)
    det.fit(normal_videos)          # optional few-shot: frames of normal videos (or images)
    [r] = det.predict([load_video("cam.mp4", fps=5)])
    r.anomaly_map                   # (F,) smoothed per-frame scores; r.ranges: anomalous frames

Zero-shot, the frames of each video are scored against each other (the image engine's own
zero-shot: frames that look like the rest of the video are normal), so an event must fill
clearly less than half of the video to stand out (the image engine is asked for its settings
for video frames, see `Detector.tuned`; "embedded" averages each patch's distances over all
the other frames there). Scores are smoothed with a running median (drops one-frame flickers)
then a small Gaussian.

Decisions (genad.decision). The frames of a video are one batch for the image engine, which
calibrates them itself: on its references (few-shot) or, zero-shot, on the batch's own maps
(`from_map_bulk`, which holds when most frames are normal). The video is decided with that
calibration, recovered from the frames' results (genad.decision.recover_calibration: the boundary
each frame result carries and its normalised score): `Result.score` = the highest smoothed
frame score (raw, in the engine's units), normalised and decided by the engine's calibration;
`threshold` (normalised) and `raw_threshold` (in those raw units: a fixed boundary on the
smoothed frame scores) move it. The ranges follow the decision: the runs of smoothed frame
scores above `Result.threshold`, at least `min_range` frames long; when none is that long
although the decision is True, the run around the peak frame; none when it is False. An
engine whose results carry no boundary (an old-style image detector) is calibrated by
`from_values` on the smoothed frame scores: median + `k` robust sigmas.

Why the engine's calibration rather than median + k MAD of the video's own frame scores (the
rule before): a relative rule always finds an upper tail, so a clip whose normal motion varies
(the generated clip of tests/video_helpers.py without its event: the square's passes near the
borders score highest) flags frames, while its event (frames 40-59) sat below median + 3 MAD:
no range at all. Measured with the embedded engine on that clip with the red square shown over
frames 40-59, 10-19, 30-33, 20-49 or 5-12, and without it, at 96, 160 and 320 px: with
`fraction=1.0` the boundary finds 10 of the 15 events (all 5 at 96 px, the tests' size; at
320 px the 10- and 20-frame events stay below it, frame AUROC 0.97-0.99) and flags 5 frames
outside them in all 18 clips (1 in the clip without an event at 160 and at 320 px, 0 at 96);
with the engine's `fraction=0.5` it finds 11 but flags 25 frames outside them and misses the
40-59 event at every size. Zero-shot video stays weak on busier scenes (several objects moving
at random: few events found, but no false frames either).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from genad import registry
from genad.decision import from_values, recover_calibration
from genad.detector import (
    Detector,
    check_image_detector,
    image_detector_class,
    param,
    predict_each,
    raw_threshold_param,
    threshold_param,
)
from genad.errors import GenadError
from genad.ops import check_min_batch, runs_to_ranges
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
    k: float = param(
        3.0, low=0.0, high=100.0, doc="frames without a normalised score: median + k robust sigmas of the raw ones"
    )
    threshold: float = threshold_param()
    raw_threshold: float | None = raw_threshold_param()
    min_range: int = param(2, low=1, doc="shortest anomalous range, in frames")
    max_ref_frames: int = param(32, low=1, high=100_000, doc="normal frames kept for fit()")

    frame_detector_: Detector | None = None  # fitted: the image detector, fit on normal frames

    def _new(self, zero_shot: bool = False) -> Detector:
        cls = image_detector_class(self.image_detector)
        if zero_shot:
            params = cls.tuned(dict(self.image_params), "video_frames")
        else:
            params = dict(self.image_params)
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
        auto = recover_calibration(frame_results, float(getattr(det, "threshold", 0.5)))
        if auto is None:  # the engine decides nothing: the video's own robust spread
            auto = from_values(smoothed, self.k, f"frame scores: median + {self.k:g} robust sigmas")
        result.anomaly_map = smoothed.astype(np.float32)
        result.frame_scores = raw.astype(np.float32)
        result.score = float(smoothed.max())
        self.decide(result, auto)
        thr = self.calibrated(auto).raw_at(self.threshold)
        ranges: list[tuple[int, int]] = []
        if result.decision:  # the ranges follow the decision
            ranges = runs_to_ranges(smoothed > thr, self.min_range) or [_peak_run(smoothed, thr)]
        result.ranges = ranges
        result.extra["calibration"] = self.calibrated(auto).to_dict()
        failed = int(np.isnan(raw).sum())
        if failed:
            result.extra["failed_frames"] = failed
        idx = sample.meta.get("frame_index")
        if idx is not None and len(idx) == n:
            idx = np.asarray(idx)
            result.extra["source_ranges"] = [(int(idx[a]), int(idx[b - 1]) + 1) for a, b in ranges]
        peak = int(np.argmax(smoothed))
        at_peak = f"peak at frame {peak}, score {smoothed[peak]:.3g}, normalised {result.normalized_score:.3g}"
        if ranges:
            spans = ", ".join(f"{a}-{b - 1}" for a, b in ranges[:5])
            result.explanation = f"anomalous frames {spans} of {n} ({at_peak})"
        else:
            result.explanation = f"no frame above the threshold {thr:.3g} ({at_peak})"


def _peak_run(scores: np.ndarray, threshold: float) -> tuple[int, int]:
    """The run of scores > threshold around the highest one (that frame alone if it does not
    pass): the range of an anomalous video whose runs are all shorter than min_range."""
    i = int(np.argmax(scores))
    above = scores > threshold
    a, b = i, i + 1
    while a > 0 and above[a - 1]:
        a -= 1
    while b < len(scores) and above[b]:
        b += 1
    return a, b
