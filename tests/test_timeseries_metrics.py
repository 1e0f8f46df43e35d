"""Series metrics against scikit-learn, brute force and hand-computed NAB scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from genad.errors import GenadError
from genad.metrics.timeseries import (
    NabTotals,
    nab_score,
    nab_totals,
    point_adjust,
    point_adjusted_f1,
    point_ap,
    point_auroc,
    range_onsets,
    range_precision_recall,
    ranges_to_labels,
)
from genad.ops import runs_to_ranges as labels_to_ranges


def _random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.zeros(300, dtype=bool)
    for a in rng.choice(280, 4, replace=False):
        y[a : a + rng.integers(1, 15)] = True
    s = rng.random(300) + 0.4 * y
    return y, np.round(s, 2)  # ties on purpose


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_point_auroc_and_ap_match_sklearn(seed):
    y, s = _random_case(seed)
    assert point_auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert point_ap(y, s) == pytest.approx(average_precision_score(y, s))


def test_undefined_cases_are_nan_and_bad_input_is_an_error():
    assert math.isnan(point_auroc(np.zeros(5), np.arange(5.0)))
    assert math.isnan(point_ap(np.zeros(5), np.arange(5.0)))
    assert math.isnan(point_adjusted_f1(np.zeros(5), np.arange(5.0))[0])
    with pytest.raises(GenadError, match="differ in length"):
        point_auroc(np.zeros(5), np.zeros(4))
    with pytest.raises(GenadError, match="NaN"):
        point_auroc(np.array([0, 1]), np.array([0.0, np.nan]))


def test_point_adjust_by_hand():
    y = np.array([0, 0, 1, 1, 1, 0, 0, 1, 1, 0], bool)
    p = np.array([0, 1, 0, 1, 0, 0, 0, 0, 0, 0], bool)
    assert point_adjust(y, p).astype(int).tolist() == [0, 1, 1, 1, 1, 0, 0, 0, 0, 0]


def test_point_adjusted_f1_by_hand():
    y = np.array([0, 0, 1, 1, 1, 0, 0, 1, 1, 0], bool)
    s = np.array([0.1, 0.2, 0.3, 0.9, 0.1, 0.8, 0.1, 0.2, 0.2, 0.1])
    # t=0.2 flags 1,2,3,5,7,8: both ranges detected -> TP 5, FP 2 (points 1, 5), FN 0
    f1, t = point_adjusted_f1(y, s)
    assert f1 == pytest.approx(10 / 12) and t == 0.2


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_point_adjusted_f1_matches_brute_force(seed):
    y, s = _random_case(seed)
    best = max(f1_score(y, point_adjust(y, s >= t)) for t in np.unique(s))
    assert point_adjusted_f1(y, s)[0] == pytest.approx(best)


def test_ranges_labels_round_trip():
    lab = ranges_to_labels([(2, 4), (7, 12)], 10)
    assert lab.astype(int).tolist() == [0, 0, 1, 1, 0, 0, 0, 1, 1, 1]
    assert labels_to_ranges(lab) == [(2, 4), (7, 10)]
    assert range_onsets([(2, 4), (7, 10)], 10).nonzero()[0].tolist() == [2, 7]


def _sig(y: float) -> float:  # NAB's scaled sigmoid, written out again
    return 2 * (1 / (1 + math.exp(5 * y))) - 1


N, WIN = 1000, [(400, 500)]  # probation: first 150 points


def test_nab_perfect_null_and_late_detection():
    assert nab_score(WIN, np.array([400]), n=N) == pytest.approx(100.0)  # window start
    assert nab_score(WIN, np.zeros(N, bool)) == pytest.approx(0.0)  # nothing flagged
    # halfway: y = -(499 - 450 + 1) / 100 = -0.5
    expected = _sig(-0.5) / _sig(-1.0)
    t = nab_totals(WIN, np.array([450]), n=N)
    assert t.raw == pytest.approx(expected) and t.null == -1 and t.perfect == 1
    assert nab_score(WIN, np.array([450]), n=N) == pytest.approx(100 * (expected + 1) / 2)
    # only the first detection in a window counts
    assert nab_totals(WIN, np.array([450, 460, 499]), n=N).raw == pytest.approx(expected)


def test_nab_false_positives_and_probation():
    # before the window: -0.11; 100 points after its end: 0.11 * sig(100 / 99); missed: -1
    t = nab_totals(WIN, np.array([200, 599]), n=N)
    assert t.raw == pytest.approx(-0.11 + 0.11 * _sig(100 / 99) - 1.0)
    # more than 3 window widths after: the full -0.11
    assert nab_totals(WIN, np.array([900]), n=N).raw == pytest.approx(-0.11 - 1.0)
    # inside the probationary period (first 150 points) nothing counts
    assert nab_totals(WIN, np.array([100]), n=N).raw == pytest.approx(-1.0)
    assert nab_totals(WIN, np.array([100]), n=N, probation=False).raw == pytest.approx(-1.11)


def test_nab_corpus_totals_add_up():
    a = nab_totals(WIN, np.array([400]), n=N)
    b = nab_totals([], np.array([300]), n=N)  # a series without windows: its alarm still costs
    total = a + b
    assert isinstance(total, NabTotals) and total.raw == pytest.approx(1 - 0.11)
    assert total.score == pytest.approx(100 * (1 - 0.11 + 1) / 2)
    assert math.isnan(b.score)


def test_range_precision_recall_by_hand():
    # half of the true range found by a detection half outside it
    assert range_precision_recall([(0, 10)], [(5, 15)]) == pytest.approx((0.5, 0.5, 0.5))
    # existence reward: alpha = 0.5 -> recall 0.5 * 1 + 0.5 * 0.5
    assert range_precision_recall([(0, 10)], [(5, 15)], alpha=0.5)[1] == pytest.approx(0.75)
    # one true range split over two detections: overlap 4/10, reciprocal cardinality halves it
    p, r, f = range_precision_recall([(0, 10)], [(0, 2), (8, 10)])
    assert (p, r) == pytest.approx((1.0, 0.2)) and f == pytest.approx(2 * 0.2 / 1.2)
    assert range_precision_recall([(0, 10)], [(0, 2), (8, 10)], cardinality="one")[1] == pytest.approx(0.4)
    # a false alarm lowers precision only; nothing detected: precision undefined, recall 0
    assert range_precision_recall([(0, 10), (20, 30)], [(0, 10), (50, 60)])[:2] == pytest.approx((0.5, 0.5))
    p, r, f = range_precision_recall([(0, 10)], [])
    assert math.isnan(p) and r == 0 and f == 0
    with pytest.raises(GenadError):
        range_precision_recall([(0, 1)], [(0, 1)], cardinality="many")
