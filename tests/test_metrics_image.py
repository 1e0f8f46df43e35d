import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from genad.errors import GenadError
from genad.metrics.image import decision_metrics, f1_max, image_ap, image_auroc


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
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "accuracy": 4 / 6, "false_alarms": 1, "misses": 1, "n": 6}
    )
    rng = np.random.default_rng(0)
    y, d = rng.integers(0, 2, 300), rng.random(300) < 0.4
    assert decision_metrics(y, d)["f1"] == pytest.approx(f1_score(y, d))
    # nothing called anomalous: precision is 0 by convention, not an error
    assert decision_metrics([1, 0], [False, False])["precision"] == 0.0
    assert decision_metrics([], []) is None
    with pytest.raises(GenadError, match="decisions"):
        decision_metrics([1, 0, 1], [True])
