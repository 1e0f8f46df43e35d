"""PointCloudDetector on generated parts with known defects: few-shot, zero-shot, bad samples."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import genad
from genad.errors import GenadError
from genad.modalities.pointcloud.detector import flagged_points
from genad.modalities.pointcloud.metrics import pointcloud_metrics
from genad.modalities.pointcloud.synth import make_dataset
from genad.types import PointCloudSample


@pytest.fixture(scope="module")
def planes():
    return make_dataset(
        "plane",
        n_train=3,
        n_normal=5,
        n_defective=5,
        n_points=4000,
        seed=1,
        defects=("bump", "dent"),
        size=0.25,
        depth=0.1,
    )


def _check_decisions(results, t=0.5):
    """The decision contract: normalised score in [0, 1] with the boundary at t, decision =
    raw score above Result.threshold, and point outputs only for anomalous clouds."""
    for r in results:
        assert r.ok and 0.0 <= r.normalized_score <= 1.0
        assert r.decision == (r.score > r.threshold) == (r.normalized_score > t), (r.score, r.threshold)
        assert r.extra["calibration"]["threshold"] <= r.threshold or t < 0.5
        if r.anomaly_map is not None:
            flagged = flagged_points(r)
            assert flagged.any() == r.decision and r.extra["flagged_points"] == int(flagged.sum())
            assert ("hot_spot" in r.extra) == r.decision


def _aurocs(test, results):
    assert all(r.ok for r in results), [r.error for r in results]
    obj = roc_auc_score([s.truth.label for s in test], [r.score for r in results])
    pl = np.concatenate([s.truth.point_labels for s in test if s.truth.label])
    ps = np.concatenate([r.anomaly_map for r, s in zip(results, test) if s.truth.label])
    return obj, roc_auc_score(pl, ps)


def test_few_shot_with_the_baseline_finds_the_defective_parts_and_points(planes):
    train, test = planes
    det = genad.create("pointcloud", image_detector="baseline", views=3, size=96).fit(train)
    results = det.predict(test)
    for r, s in zip(results, test):
        assert r.anomaly_map.shape == (len(s.points),) and r.anomaly_map.dtype == np.float32
        assert len(r.extra["view_scores"]) == 3
    obj, pt = _aurocs(test, results)
    assert obj >= 0.9 and pt > 0.9
    _check_decisions(results)


def test_decisions_use_the_views_calibrations_and_points_follow_them(planes):
    train, test = planes
    det = genad.create("pointcloud", image_detector="baseline", views=3, size=96).fit(train)
    base = det.predict(test)
    _check_decisions(base)
    assert all(r.decision for r, s in zip(base, test) if s.truth.label)  # every defective part
    cal = base[0].extra["calibration"]
    assert cal["method"].startswith("the views' calibrations, pooled + ln(3) scales")
    # the boundary is the views' own, pooled: the median of the view detectors' calibrated
    # boundaries and scales, moved up ln(3) scales for the highest of 3 views
    views = [d.calibration_ for d in det.view_detectors_]
    scale = float(np.median([c.scale for c in views]))
    assert cal["scale"] == pytest.approx(scale, rel=1e-6)
    assert base[0].threshold == pytest.approx(float(np.median([c.threshold for c in views])) + scale * np.log(3))
    m = pointcloud_metrics(test, base)
    assert m["object_recall"] == 1.0 and 0.0 < m["object_precision"] <= 1.0 and m["point_f1"] > 0.0
    # a stricter normalised threshold: a higher boundary, the same scores, fewer anomalous parts
    strict = det.set_params(threshold=0.9).predict(test)
    _check_decisions(strict, 0.9)
    assert [r.score for r in strict] == [r.score for r in base]
    assert strict[0].threshold > base[0].threshold
    assert sum(r.decision for r in strict) < sum(r.decision for r in base)
    assert all(b.decision for s_, b in zip(strict, base) if s_.decision)
    # raw_threshold replaces the boundary: at a cloud's own score it normalises to 0.5
    at = det.set_params(threshold=0.5, raw_threshold=base[0].score).predict(test)
    assert at[0].threshold == base[0].score and at[0].normalized_score == pytest.approx(0.5)
    assert at[0].decision is False and flagged_points(at[0]).sum() == 0
    never = det.set_params(raw_threshold=1e9).predict(test)
    assert not any(r.decision for r in never) and all("hot_spot" not in r.extra for r in never)


def test_zero_shot_with_the_embedded_engine(planes):
    _, test = planes
    det = genad.create(
        "pointcloud",
        image_detector="embedded",
        views=2,
        size=96,
        image_params={"resolution": 96, "threads": 1},
        keep_views=True,
    )
    results = det.predict(test)
    obj, pt = _aurocs(test, results)
    assert obj >= 0.8 and pt > 0.85
    _check_decisions(results)
    assert results[0].extra["calibration"]["method"] == "the views' calibrations, pooled"  # zero-shot: no shift
    assert not any(r.decision for r, s in zip(results, test) if not s.truth.label)  # no false alarm
    assert sum(r.decision for r, s in zip(results, test) if s.truth.label) >= 3
    r = results[-1]
    assert len(r.views) == 2 and r.views[0].overlay.shape == (96, 96, 3)


def test_few_clouds_zero_shot_pools_views_and_bad_clouds_get_an_error(planes):
    _, test = planes
    tiny = PointCloudSample(id="tiny", points=np.zeros((3, 3)))
    det = genad.create("pointcloud", image_detector="baseline", views=4, size=64)
    results = det.predict([test[0], tiny, test[-1]])
    assert [r.sample_id for r in results] == [test[0].id, "tiny", test[-1].id]
    assert results[1].error and "too few" in results[1].error and results[1].score is None
    assert results[0].ok and results[2].ok


def test_bad_options_are_clear_errors():
    with pytest.raises(GenadError, match="views"):
        genad.create("pointcloud", views=0)
    with pytest.raises(GenadError, match="image detector"):
        genad.create("pointcloud", image_detector="video")
    with pytest.raises(GenadError, match="unknown detector"):
        genad.create("pointcloud", image_detector="nope")
    with pytest.raises(GenadError, match="bad option"):
        genad.create("pointcloud", colour="red")


def test_an_image_detector_without_maps_gives_object_scores_only(planes):
    from genad.detector import Detector
    from genad.registry import register
    from genad.types import Result

    @register("test-brightness-only")
    class BrightnessOnly(Detector):  # scores without maps, like an LMM
        def predict(self, samples):
            return [Result(s.id, score=float(s.load().mean())) for s in samples]

    _, test = planes
    results = genad.create("pointcloud", image_detector="test-brightness-only", views=2, size=64).predict(test[:3])
    assert all(r.ok and r.anomaly_map is None for r in results)
    assert "hot_spot" not in results[0].extra
    assert results[0].explanation.startswith("most anomalous in view ") and " of 2 " in results[0].explanation
    assert results[0].score == pytest.approx(max(results[0].extra["view_scores"]))
    # views without boundaries: calibrated on the batch's view scores (median + 3 robust sigmas)
    assert "median + 3" in results[0].extra["calibration"]["method"]
    assert all(r.decision == (r.score > r.threshold) and 0 <= r.normalized_score <= 1 for r in results)


def test_depth_views_use_the_fine_embedded_grid_unless_told_otherwise() -> None:
    det = genad.create("pointcloud")._new_image_detector()
    assert det.strides == (8, 16) and det.resolution == 256
    det = genad.create("pointcloud", image_params={"strides": "16", "resolution": 320})._new_image_detector()
    assert det.strides == (16,) and det.resolution == 320
