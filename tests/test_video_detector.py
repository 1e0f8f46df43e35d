"""VideoDetector: per-frame image scores + temporal smoothing on a video with a known event."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import genad
from genad.errors import GenadError
from genad.io.video import load_video
from genad.modalities.video.detector import smooth_scores
from genad.ops import robust_threshold
from genad.ops import runs_to_ranges as mask_to_ranges
from genad.types import ImageSample, VideoSample
from video_helpers import SPAN, labels, moving_square_frames, write_test_video

FAST = {"resolution": 96, "threads": 1}


def test_smoothing_drops_single_frame_flicker_and_fills_failed_frames():
    s = np.zeros(30)
    s[5] = 10.0  # one-frame flicker
    s[15:25] = 5.0  # a real event
    s[20] = np.nan  # a frame that failed
    out = smooth_scores(s, window=5, sigma=0.0)
    assert out[5] == 0.0 and (out[16:24] == 5.0).all()
    assert mask_to_ranges(out > 2.5) == [(15, 25)]
    assert mask_to_ranges(np.array([1, 1, 0, 1, 0, 0, 1, 1, 1], bool), min_length=2) == [(0, 2), (6, 9)]
    # median 2.5, MAD 1.5 (x 1.4826 to a standard deviation)
    assert robust_threshold(np.array([0, 1, 2, 3, 4, 100.0]), 3.0) == pytest.approx(2.5 + 3 * 1.4826 * 1.5)
    with pytest.raises(GenadError, match="no frame"):
        smooth_scores(np.full(4, np.nan))


def _flagged(r) -> np.ndarray:
    f = np.zeros(len(r.anomaly_map), bool)
    for a, b in r.ranges:
        f[a:b] = True
    return f


def _check_decision(r, t=0.5):
    assert r.ok and 0.0 <= r.normalized_score <= 1.0
    assert r.decision == (r.score > r.threshold) == (r.normalized_score > t) == bool(r.ranges)
    for a, b in r.ranges:
        assert r.anomaly_map[a:b].max() > r.threshold


def test_zero_shot_embedded_finds_the_event_and_flags_nothing_without_one(tmp_path):
    video = load_video(write_test_video(tmp_path / "clip.mp4"))
    [r] = genad.create("video", image_detector="embedded", image_params=FAST).predict([video])
    assert r.ok and r.anomaly_map.shape == (80,)
    assert SPAN[0] <= int(np.argmax(r.anomaly_map)) < SPAN[1]
    assert roc_auc_score(labels(), r.anomaly_map) > 0.9
    assert r.frame_scores.shape == (80,)
    # the event is found: one range, inside the event (within the smoothing), most of it
    _check_decision(r)
    assert r.decision is True and len(r.ranges) == 1, r.ranges
    flagged = _flagged(r)
    assert (flagged & labels()).sum() >= 15 and (flagged & ~labels()).sum() <= 2, r.ranges
    assert r.extra["calibration"]["method"] == "the image engine's own calibration"
    # the same clip without the event: nothing flagged
    clean = load_video(write_test_video(tmp_path / "clean.mp4", anomaly=False))
    [c] = genad.create("video", image_detector="embedded", image_params=FAST).predict([clean])
    _check_decision(c)
    assert c.decision is False and c.ranges == [] and c.normalized_score < 0.5
    assert "no frame above the threshold" in c.explanation


def test_zero_shot_thresholds_move_the_frame_boundary():
    video = VideoSample(id="v", frames=moving_square_frames())
    det = genad.create("video", image_detector="embedded", image_params=FAST)
    [r] = det.predict([video])
    [strict] = det.set_params(threshold=0.9).predict([video])
    [loose] = det.set_params(threshold=0.2).predict([video])
    for x, t in ((strict, 0.9), (loose, 0.2)):
        _check_decision(x, t)
        assert x.normalized_score == pytest.approx(r.normalized_score, abs=1e-6)  # the score does not move
    assert loose.threshold < r.threshold < strict.threshold
    assert _flagged(loose).sum() > _flagged(r).sum() > _flagged(strict).sum()
    # raw_threshold: a boundary on the smoothed frame scores, normalised to 0.5 there
    [at] = det.set_params(threshold=0.5, raw_threshold=r.score).predict([video])
    assert at.threshold == r.score and at.normalized_score == pytest.approx(0.5)
    assert at.decision is False and at.ranges == []
    low = float(np.percentile(r.anomaly_map, 10))
    [lots] = det.set_params(raw_threshold=low).predict([video])
    _check_decision(lots)
    assert _flagged(lots).sum() > 60 and lots.threshold == low


def test_a_decision_with_only_short_runs_reports_the_run_around_the_peak():
    video = VideoSample(id="v", frames=moving_square_frames())
    [r] = genad.create("video", image_detector="embedded", image_params=FAST, min_range=50).predict([video])
    _check_decision(r)
    assert r.decision is True and len(r.ranges) == 1
    a, b = r.ranges[0]
    assert a <= int(np.argmax(r.anomaly_map)) < b and b - a < 50


def test_few_shot_embedded_finds_the_event_range():
    frames, lab = moving_square_frames()[::2], labels()[::2]  # 40 frames, event in [20, 30)
    normal = VideoSample(id="normal", frames=moving_square_frames(anomaly=False)[1::5])
    det = genad.create("video", image_detector="embedded", image_params=FAST, max_ref_frames=8).fit([normal])
    [r] = det.predict([VideoSample(id="v", frames=frames, meta={"frame_index": np.arange(0, 80, 2)})])
    assert roc_auc_score(lab, r.anomaly_map) > 0.95
    _check_decision(r)
    assert r.decision is True and len(r.ranges) == 1
    # few-shot: the boundary is the frame detector's own calibrated one
    assert r.threshold == pytest.approx(det.frame_detector_.calibration_.threshold)
    a, b = r.ranges[0]
    assert abs(a - 20) <= 2 and abs(b - 30) <= 2
    assert r.extra["source_ranges"] == [(2 * a, 2 * (b - 1) + 1)]
    assert f"{a}-{b - 1}" in r.explanation


def test_few_shot_baseline_from_frame_images_and_bad_samples():
    refs = [ImageSample(id=f"n{i}", array=f) for i, f in enumerate(moving_square_frames(anomaly=False)[::4])]
    det = genad.create("video", image_detector="baseline").fit(refs)
    good = VideoSample(id="v", frames=moving_square_frames())
    results = det.predict([good, ImageSample(id="img", array=moving_square_frames(1)[0])])
    assert roc_auc_score(labels(), results[0].anomaly_map) > 0.9
    assert results[1].error and "not a video" in results[1].error
    [r] = genad.create("video", image_detector="baseline").predict(
        [VideoSample(id="short", frames=moving_square_frames(2))]
    )
    assert r.error and "zero-shot needs >= 3" in r.error
    with pytest.raises(GenadError, match="smooth"):
        genad.create("video", smooth=0)


def test_an_engine_without_boundaries_is_calibrated_on_the_frame_scores():
    from genad.detector import Detector
    from genad.registry import register
    from genad.types import Result

    @register("test-redness")
    class Redness(Detector):  # raw scores only, no threshold, no normalised score
        def predict(self, samples):
            noise = np.random.default_rng(0).normal(0.0, 0.2, len(samples))  # a sensor's jitter
            return [
                Result(s.id, score=float((s.load()[..., 0].astype(int) - s.load()[..., 1]).mean() + e))
                for s, e in zip(samples, noise)
            ]

    [r] = genad.create("video", image_detector="test-redness").predict(
        [VideoSample(id="v", frames=moving_square_frames())]
    )
    _check_decision(r)
    assert "median + 3 robust sigmas" in r.extra["calibration"]["method"]
    assert r.decision is True and all(abs(a - SPAN[0]) <= 3 and abs(b - SPAN[1]) <= 3 for a, b in r.ranges)


def test_frame_labels_follow_subsampling_and_frame_metrics_match_scikit_learn():
    from genad.modalities.video.metrics import frame_metrics, sampled_frame_labels
    from genad.types import GroundTruth, Result

    src = labels()  # 80 source frames, event in [40, 60)
    v = VideoSample(
        id="v",
        frames=moving_square_frames(20),
        meta={"frame_index": np.arange(0, 80, 4)},
        truth=GroundTruth(label=1, frame_labels=src),
    )
    lab = sampled_frame_labels(v)
    assert lab.tolist() == [10 <= i < 15 for i in range(20)]
    by_ranges = VideoSample(id="r", frames=v.frames, meta=v.meta, truth=GroundTruth(label=1, ranges=[(40, 60)]))
    assert sampled_frame_labels(by_ranges).tolist() == lab.tolist()
    scores = np.linspace(0, 1, 20)[::-1].copy()
    scores[12] = 2.0
    m = frame_metrics([v], [Result("v", score=2.0, anomaly_map=scores)])
    assert m["frame_auroc"] == pytest.approx(roc_auc_score(lab, scores)) and m["n_frames"] == 20
    with pytest.raises(GenadError, match="frame scores"):
        frame_metrics([v], [Result("v", score=1.0, anomaly_map=np.zeros(7))])
