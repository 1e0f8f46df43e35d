"""Classical series detectors on generated series with a known, injected anomaly."""

from __future__ import annotations

import numpy as np
import pytest

from genad.errors import GenadError
from genad.modalities.timeseries.common import estimate_period, peak_run, ranges_above, windows_to_points
from genad.registry import create
from genad.types import ImageSample, TimeSeriesSample

N, PERIOD = 2000, 40
DETECTORS = ["ts-matrix-profile", "ts-iforest"]


def base(seed: int = 0, n: int = N) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return np.sin(2 * np.pi * t / PERIOD) + 0.05 * rng.standard_normal(n)


def spike() -> tuple[np.ndarray, tuple[int, int]]:
    x = base()
    x[1300] += 4.0
    return x, (1300, 1301)


def level_shift() -> tuple[np.ndarray, tuple[int, int]]:
    x = base()
    x[1000:1150] += 3.0
    return x, (1000, 1150)


def changed_period() -> tuple[np.ndarray, tuple[int, int]]:
    x = base()
    t = np.arange(1200, 1360)
    x[1200:1360] = np.sin(2 * np.pi * (t - 1200) / 13)
    return x, (1200, 1360)


CASES = {"spike": spike, "level shift": level_shift, "changed period": changed_period}


def test_period_estimate():
    assert estimate_period(base()) == PERIOD
    assert estimate_period(np.random.default_rng(1).standard_normal(2000)) is None


@pytest.mark.parametrize("name", DETECTORS)
@pytest.mark.parametrize("case", list(CASES))
def test_injected_anomaly_is_found_where_it_is(name, case):
    x, (a, b) = CASES[case]()
    (r,) = create(name).predict([TimeSeriesSample(id=case, values=x)])
    assert r.error is None, r.error
    assert r.anomaly_map.shape == (N,) and r.anomaly_map.dtype == np.float32
    assert r.extra["window"] == PERIOD  # the period estimate chose the window
    peak = int(np.argmax(r.anomaly_map))
    # the highest point score lies on the anomaly (or on its edge, within a window)
    assert a - PERIOD <= peak < b + PERIOD, (peak, a, b)
    assert r.decision is True and r.score == pytest.approx(float(r.anomaly_map.max()))
    # a detected range overlaps the anomaly, and no range lies far from it
    assert any(s < b + PERIOD and e > a - PERIOD for s, e in r.ranges), r.ranges
    assert all(s < b + 2 * PERIOD and e > a - 2 * PERIOD for s, e in r.ranges), r.ranges
    assert f"[{r.ranges[0][0]}, {r.ranges[0][1]})" in r.explanation


@pytest.mark.parametrize("name", DETECTORS)
def test_normal_series_scores_lower_than_anomalous_ones(name):
    det = create(name)
    normal, anomalous = det.predict(
        [TimeSeriesSample(id="n", values=base(3)), TimeSeriesSample(id="a", values=spike()[0])]
    )
    assert anomalous.score > normal.score


@pytest.mark.parametrize("name", DETECTORS)
def test_training_prefix_is_the_reference(name):
    x, (a, b) = spike()
    s = TimeSeriesSample(id="ucr-like", values=x, train_end=600)
    (r,) = create(name).predict([s])
    assert r.error is None and r.extra["scored_from"] == 600 and r.extra["reference"] == "training prefix"
    assert np.all(r.anomaly_map[:600] == 0)
    assert a - PERIOD <= int(np.argmax(r.anomaly_map)) < b + PERIOD


@pytest.mark.parametrize("name", DETECTORS)
def test_fit_on_normal_series(name):
    det = create(name).fit([TimeSeriesSample(id="ref", values=base(5, 800))])
    x, (a, b) = level_shift()
    (r,) = det.predict([TimeSeriesSample(id="t", values=x)])
    assert r.extra["reference"] == "normal references"
    assert a - PERIOD <= int(np.argmax(r.anomaly_map)) < b + PERIOD


@pytest.mark.parametrize("name", DETECTORS)
def test_multivariate_anomaly_in_one_column(name):
    x = np.stack([base(1), base(2) * 3 + 10, spike()[0]], axis=1)
    (r,) = create(name).predict([TimeSeriesSample(id="mv", values=x)])
    assert r.error is None and r.anomaly_map.shape == (N,)
    assert 1300 - PERIOD <= int(np.argmax(r.anomaly_map)) < 1301 + PERIOD


@pytest.mark.parametrize("name", DETECTORS)
def test_nans_are_interpolated_and_reported(name):
    x, (a, b) = spike()
    x[[100, 101, 102, 500]] = np.nan
    (r,) = create(name).predict([TimeSeriesSample(id="gaps", values=x)])
    assert r.error is None and np.isfinite(r.anomaly_map).all()
    assert r.extra["nan_points"] == 4 and r.extra["nan_indices"] == [100, 101, 102, 500]
    assert a - PERIOD <= int(np.argmax(r.anomaly_map)) < b + PERIOD


@pytest.mark.parametrize("name", DETECTORS)
def test_bad_series_give_error_results_and_the_batch_goes_on(name):
    too_many_nans = base()
    too_many_nans[::2] = np.nan
    samples = [
        TimeSeriesSample(id="empty", values=np.zeros(0)),
        TimeSeriesSample(id="one", values=np.array([[1.0, 2.0]])),
        TimeSeriesSample(id="nans", values=too_many_nans),
        TimeSeriesSample(id="short", values=np.arange(10.0)),
        TimeSeriesSample(id="const", values=np.full(500, 3.0)),
        ImageSample(id="img", array=np.zeros((8, 8, 3), np.uint8)),
        TimeSeriesSample(id="good", values=spike()[0]),
    ]
    empty, one, nans, short, const, img, good = create(name).predict(samples)
    assert "empty" in empty.error and empty.score is None
    assert "too few to judge" in one.error
    assert "missing values" in nans.error
    assert "too short" in short.error and "window=" in short.error
    assert const.error is None and const.score == 0.0 and const.decision is False and const.ranges == []
    assert 0.0 <= const.normalized_score < 0.01
    assert not const.anomaly_map.any() and "constant series" in const.explanation
    assert "reads time series" in img.error
    assert good.ok and good.decision


def test_window_longer_than_series_is_a_clear_error():
    (r,) = create("ts-matrix-profile", window=500).predict([TimeSeriesSample(id="s", values=base(n=600))])
    assert "too short for a window of 500" in r.error


def test_bad_options_are_user_errors():
    with pytest.raises(GenadError, match="bad option"):
        create("ts-matrix-profile", windw=10)
    (r,) = create("ts-iforest", window="long").predict([TimeSeriesSample(id="s", values=base())])
    assert "window must be" in r.error


def test_both_profiles_catch_a_change_of_amplitude_that_shape_alone_misses():
    # the same sine at 3x the amplitude: its z-normalised windows look normal
    x = base()
    x[1000:1200] *= 3.0
    lab = np.zeros(N, bool)
    lab[1000:1200] = True
    from sklearn.metrics import roc_auc_score

    def auroc(normalize):
        (r,) = create("ts-matrix-profile", normalize=normalize).predict([TimeSeriesSample(id="s", values=x)])
        return roc_auc_score(lab, r.anomaly_map), r

    shape_only, _ = auroc(True)
    both, r = auroc("both")
    assert shape_only < 0.75 and both > 0.95, (shape_only, both)
    assert any(a < 1200 and b > 1000 for a, b in r.ranges)
    assert create("ts-matrix-profile").normalize == "both"  # the default
    with pytest.raises(GenadError, match="normalize must be true, false or both"):
        create("ts-matrix-profile", normalize="maybe")


def test_explicit_raw_threshold():
    x, _ = spike()
    (r,) = create("ts-matrix-profile", raw_threshold=1e6).predict([TimeSeriesSample(id="s", values=x)])
    assert r.ranges == [] and r.decision is False and r.threshold == 1e6
    assert r.normalized_score < 0.5
    assert "no range reaches the threshold" in r.explanation
    with pytest.raises(GenadError, match="threshold must be between 0 and 1"):
        create("ts-matrix-profile", threshold=1e6)  # threshold is normalised now


def _flagged(r) -> int:
    return sum(b - a for a, b in r.ranges)


@pytest.mark.parametrize("name", DETECTORS)
def test_decision_is_calibrated_on_the_point_scores_and_ranges_follow_it(name):
    """Result.threshold is median + threshold_k robust sigmas of the point scores; the
    normalised score is 0.5 there; ranges are the runs above it and empty iff the decision is
    False."""
    from genad.decision import from_values

    x, (a, b) = level_shift()
    sample = TimeSeriesSample(id="s", values=x)
    (r,) = create(name).predict([sample])
    cal = from_values(r.anomaly_map, 5.0)
    assert r.threshold == pytest.approx(cal.threshold, rel=1e-6)
    assert r.normalized_score == pytest.approx(cal.normalize(r.score), rel=1e-6)
    assert 0.5 < r.normalized_score <= 1.0 and r.decision is True
    assert r.extra["calibration"]["threshold"] == pytest.approx(r.threshold)
    for s_, e_ in r.ranges:  # every range holds points above the boundary, and only its runs
        assert r.anomaly_map[s_:e_].max() > r.threshold
    # at the boundary: a raw threshold equal to the score normalises it to 0.5, not anomalous
    (at,) = create(name, raw_threshold=r.score).predict([sample])
    assert at.normalized_score == pytest.approx(0.5) and at.decision is False and at.ranges == []
    # a stricter normalised threshold: a higher raw boundary and fewer flagged points
    (strict,) = create(name, threshold=0.9).predict([sample])
    (loose,) = create(name, threshold=0.1).predict([sample])
    assert loose.threshold < r.threshold < strict.threshold
    assert strict.normalized_score == pytest.approx(r.normalized_score)  # the score does not move
    assert _flagged(loose) > _flagged(strict) > 0, (loose.ranges, r.ranges, strict.ranges)
    # the raw boundary replaces the calibrated one, and threshold applies around it
    (raw,) = create(name, raw_threshold=float(np.percentile(r.anomaly_map, 99))).predict([sample])
    assert raw.threshold == pytest.approx(float(np.percentile(r.anomaly_map, 99)))
    assert raw.decision is True and _flagged(raw) > 0


@pytest.mark.parametrize("name", DETECTORS)
@pytest.mark.parametrize("seed", [3, 4, 5])
def test_ranges_are_empty_exactly_when_the_decision_is_false(name, seed):
    samples = [TimeSeriesSample(id=f"n{seed}", values=base(seed))] + [
        TimeSeriesSample(id=c, values=f()[0]) for c, f in CASES.items()
    ]
    for t in (0.3, 0.5, 0.9, 0.999):
        for r in create(name, threshold=t).predict(samples):
            assert r.ok and 0.0 <= r.normalized_score <= 1.0
            assert bool(r.ranges) == r.decision == (r.normalized_score > t), (t, r.sample_id, r.ranges)


def test_a_decision_whose_runs_are_all_too_short_reports_the_run_around_the_peak():
    x, _ = spike()
    sample = TimeSeriesSample(id="s", values=x)
    (r,) = create("ts-matrix-profile").predict([sample])
    peak = int(np.argmax(r.anomaly_map))
    # only the highest point passes: a run of 1, shorter than a quarter window (10 points)
    just_below = float(np.nextafter(r.anomaly_map.max(), -np.inf))
    (one,) = create("ts-matrix-profile", raw_threshold=just_below).predict([sample])
    assert one.decision is True and one.ranges == [(peak, peak + 1)]
    assert f"[{peak}, {peak + 1})" in one.explanation


def test_range_helpers():
    s = np.array([0, 3, 3, 0, 5, 5, 5, 0, 1, 0], dtype=float)
    assert ranges_above(s, 3.0) == [(4, 7)]  # strictly above: the decision's rule
    assert ranges_above(s, 2.0) == [(1, 3), (4, 7)]
    assert ranges_above(s, 2.0, merge_gap=1) == [(1, 7)]
    assert ranges_above(s, 0.5, min_len=2) == [(1, 3), (4, 7)]
    assert ranges_above(s, 0.5, max_ranges=1) == [(4, 7)]
    assert peak_run(s, 2.0) == (4, 7) and peak_run(s, 4.0) == (4, 7)
    assert peak_run(s, 9.0) == (4, 5)  # nothing passes: the peak alone
    assert peak_run(np.array([2.0, 3.0, 1.0]), 0.0) == (0, 3)


def test_window_scores_spread_to_points():
    # windows of 5 starting at 8..12 all cover point 12 and score 1, the others 0: point 12 is
    # covered only by odd windows and scores 1, its neighbours less, far points 0
    s = np.zeros(16)
    s[8:13] = 1.0
    pts = windows_to_points(s, np.arange(16), 5, 20)
    assert int(np.argmax(pts)) == 12 and pts[12] == 1.0
    assert pts[11] == pytest.approx(0.8) and pts[13] == pytest.approx(0.8) and pts[0] == 0.0
    # with a stride, uncovered points are interpolated between covered ones
    strided = windows_to_points(np.array([0.0, 1.0]), np.array([0, 10]), 4, 14)
    assert strided[2] == 0.0 and strided[11] == 1.0 and 0.0 < strided[6] < 1.0


def test_plot_result_writes_a_png(tmp_path):
    from PIL import Image

    from genad.modalities.timeseries.render import plot_result

    x, _ = spike()
    ts = np.datetime64("2024-01-01T00:00") + np.arange(N).astype("timedelta64[m]")
    s = TimeSeriesSample(id="s", values=x, timestamps=ts.astype("datetime64[ms]"))
    (r,) = create("ts-iforest").predict([s])
    out = plot_result(s, r, tmp_path / "plots" / "s.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (1400, 700)


def test_time_gaps_are_reported():
    x, _ = spike()
    ts = np.datetime64("2024-01-01T00:00") + np.arange(N).astype("timedelta64[m]")
    ts[1500:] += np.timedelta64(30, "m")  # half an hour missing before point 1500
    (r,) = create("ts-iforest").predict([TimeSeriesSample(id="g", values=x, timestamps=ts)])
    assert r.extra["gaps"] == [1500]
    assert "(2024-01-01T" in r.explanation  # ranges are named with their times
