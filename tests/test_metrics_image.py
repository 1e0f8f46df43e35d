import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from genad.errors import GenadError
from genad.metrics.image import (
    best_f1_threshold_normalized,
    decision_metrics,
    f1_max,
    image_ap,
    image_auroc,
    score_histogram,
)


def test_hand_computed_with_ties():
    labels = [0, 0, 1, 1]
    scores = [0.1, 0.5, 0.5, 0.9]
    # pairs (pos, neg): 0.5 vs 0.1 win, 0.5 vs 0.5 tie (1/2), 0.9 beats both -> 3.5 / 4
    assert image_auroc(labels, scores) == pytest.approx(0.875)
    # thresholds 0.9: P=1 R=.5 ; 0.5: P=2/3 R=1 -> AP = .5*1 + .5*2/3
    assert image_ap(labels, scores) == pytest.approx(0.5 + 0.5 * 2 / 3)
    f1, thr = f1_max(labels, scores)
    # at 0.9: F1 = 2*1*.5/1.5 = 2/3 ; at 0.5: 2*(2/3)*1/(5/3) = 0.8 ; at 0.1: P=.5 R=1 -> 2/3
    assert f1 == pytest.approx(0.8)
    assert thr == pytest.approx(0.5)


def test_perfect_and_inverted():
    assert image_auroc([0, 0, 1], [0.0, 0.1, 3.0]) == 1.0
    assert image_auroc([0, 0, 1], [5.0, 4.0, 3.0]) == 0.0
    f1, thr = f1_max([0, 0, 1, 1], [0.0, 0.1, 3.0, 2.0])
    assert f1 == 1.0 and thr == 2.0


def test_against_sklearn_random():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 200)
        y[:2] = [0, 1]
        s = np.round(rng.normal(y * 0.8, 1.0), 1)  # rounding makes many ties
        assert image_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert image_ap(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
        f1, thr = f1_max(y, s)
        pred = s >= thr
        tp = np.sum(pred & (y == 1))
        assert f1 == pytest.approx(2 * tp / (pred.sum() + y.sum()))
        # no threshold does better
        best = max(2 * np.sum((s >= t) & (y == 1)) / ((s >= t).sum() + y.sum()) for t in np.unique(s))
        assert f1 == pytest.approx(best)


def test_one_class_is_none_and_bools_accepted():
    assert image_auroc([1, 1, 1], [0.1, 0.2, 0.3]) is None
    assert image_ap([0, 0], [0.1, 0.2]) is None
    assert f1_max([0, 0], [0.1, 0.2]) == (None, None)
    assert image_auroc([], []) is None
    assert image_auroc(np.array([False, True]), np.array([0.1, 0.2])) == 1.0


@pytest.mark.parametrize(
    "labels,scores,msg",
    [
        ([0, 1], [0.1], "2 labels but 1 scores"),
        ([0, 1], [0.1, None], "None"),
        ([0, 1], [0.1, float("nan")], "NaN"),
        ([0, 2], [0.1, 0.2], r"0 \(normal\) or 1"),
        ([0, 1], ["a", "b"], "numbers"),
    ],
)
def test_bad_input_raises_clear_error(labels, scores, msg):
    with pytest.raises(GenadError, match=msg):
        image_auroc(labels, scores)


def test_decision_metrics_hand_computed_and_against_sklearn():
    from sklearn.metrics import f1_score

    # 3 anomalous (2 caught), 3 normal (1 false alarm): P = 2/3, R = 2/3, accuracy 4/6
    m = decision_metrics([1, 1, 1, 0, 0, 0], [True, True, False, True, False, False])
    assert m == pytest.approx(
        {
            "precision": 2 / 3,
            "recall": 2 / 3,
            "f1": 2 / 3,
            "accuracy": 4 / 6,
            "false_alarms": 1,
            "misses": 1,
            "n": 6,
            "tp": 2,
            "fp": 1,
            "tn": 2,
            "fn": 1,
            "n_normal": 3,
            "n_anomalous": 3,
            "false_alarm_rate": 1 / 3,
            "specificity": 2 / 3,
            "miss_rate": 1 / 3,
            "flagged": 3,
            "flagged_share": 0.5,
            "threshold": None,
        }
    )
    rng = np.random.default_rng(0)
    y, d = rng.integers(0, 2, 300), rng.random(300) < 0.4
    assert decision_metrics(y, d)["f1"] == pytest.approx(f1_score(y, d))
    # nothing called anomalous: precision is 0 by convention, not an error
    assert decision_metrics([1, 0], [False, False])["precision"] == 0.0
    assert decision_metrics([], []) is None
    with pytest.raises(GenadError, match="decisions"):
        decision_metrics([1, 0, 1], [True])


def test_confusion_counts_rates_and_median_threshold():
    from sklearn.metrics import confusion_matrix

    # 4 normal (1 flagged), 2 anomalous (1 caught); thresholds as the results used them
    m = decision_metrics([0, 0, 0, 0, 1, 1], [False, True, False, False, True, False], [2.0, 2.0, None, 3.0, 1.0, 2.5])
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (1, 1, 3, 1)
    assert m["false_alarm_rate"] == 0.25 and m["specificity"] == 0.75 and m["miss_rate"] == 0.5
    assert m["flagged"] == 2 and m["flagged_share"] == pytest.approx(2 / 6)
    assert m["threshold"] == 2.0  # median of 2, 2, 3, 1, 2.5 (None left out)
    rng = np.random.default_rng(1)
    y, d = rng.integers(0, 2, 250), rng.random(250) < 0.3
    tn, fp, fn, tp = confusion_matrix(y, d, labels=[0, 1]).ravel()
    m = decision_metrics(y, d, rng.normal(5.0, 1.0, 250))
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (tp, fp, tn, fn)
    assert m["false_alarm_rate"] == pytest.approx(fp / (fp + tn)) and m["tp"] + m["fn"] == int(y.sum())
    # one class only: the rates of the missing class are undefined, not 0
    only_normal = decision_metrics([0, 0], [True, False])
    assert only_normal["miss_rate"] is None and only_normal["false_alarm_rate"] == 0.5
    assert decision_metrics([1], [True])["false_alarm_rate"] is None
    assert decision_metrics([0, 1], [True, True], [float("nan"), None])["threshold"] is None
    with pytest.raises(GenadError, match="thresholds"):
        decision_metrics([0, 1], [True, True], [1.0])


def test_best_f1_threshold_normalized_is_a_strict_decision_threshold():
    # normalised scores; flagging 0.5 and above is best (F1 0.8), so t lies between 0.1 and 0.5
    t = best_f1_threshold_normalized([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9])
    assert t == pytest.approx(0.3)
    rng = np.random.default_rng(2)
    for _ in range(20):
        y = rng.integers(0, 2, 120)
        y[:2] = [0, 1]
        s = np.round(1 / (1 + np.exp(-rng.normal(y * 1.5 - 0.5, 1.0))), 2)  # ties
        t = best_f1_threshold_normalized(y, s)
        assert 0.0 <= t <= 1.0
        pred = s > t  # the detectors' rule
        f1 = 2 * np.sum(pred & (y == 1)) / (pred.sum() + y.sum())
        assert f1 == pytest.approx(f1_max(y, s)[0])
    assert best_f1_threshold_normalized([1, 1], [0.2, 0.3]) is None
    with pytest.raises(GenadError, match="raw scores"):
        best_f1_threshold_normalized([0, 1], [0.5, 3.0])


def test_score_histogram_counts():
    h = score_histogram([0, 0, 0, 1, 1], [0.0, 0.1, 0.3, 0.75, 1.0], bins=4, lo=0.0, hi=1.0)
    assert h["edges"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert h["normal"] == [2, 1, 0, 0] and h["anomalous"] == [0, 0, 0, 2]  # 1.0 in the last bin
    # default range: the scores' own; outside a given range: counted at the ends
    rng = np.random.default_rng(3)
    y, s = rng.integers(0, 2, 500), rng.normal(0, 3, 500)
    h = score_histogram(y, s, bins=25)
    want, _ = np.histogram(s[y == 0], bins=np.linspace(s.min(), s.max(), 26))
    assert h["normal"] == want.tolist() and sum(h["anomalous"]) == int(y.sum())
    h = score_histogram(y, s, bins=10, lo=-1.0, hi=1.0)
    assert sum(h["normal"]) == int((y == 0).sum()) and sum(h["anomalous"]) == int(y.sum())
    assert h["normal"][0] == int(((s <= -0.8) & (y == 0)).sum())
    one = score_histogram([0, 1], [2.0, 2.0], bins=2)
    assert one["edges"] == [1.5, 2.0, 2.5] and one["normal"] == [0, 1] and one["anomalous"] == [0, 1]
    assert score_histogram([], [], bins=3, lo=0, hi=1)["normal"] == [0, 0, 0]
    with pytest.raises(GenadError, match="NaN"):
        score_histogram([0], [float("nan")])
