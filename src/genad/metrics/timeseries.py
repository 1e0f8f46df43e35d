"""Series metrics, pure functions on per-point labels and scores.

- point_auroc / point_ap: scikit-learn's ROC AUC and average precision over points.
- point_adjusted_f1: the best F1 over thresholds after point adjustment (Xu et al. 2018, the
  rule most TSAD papers use): if any point of a true anomalous range is flagged, the whole
  range counts as detected. It is generous (one lucky point detects a long range), so read it
  beside AUROC/AP and the NAB score.
- nab_score: the Numenta Anomaly Benchmark score (Lavin and Ahmad 2015, NAB's sweeper.py),
  standard profile, for binary detections against anomaly windows. Per detection:
    * the FIRST detection inside a window earns A_TP * sigma(y) / sigma(-1), where
      y = -(window_end_index - i + 1) / window_width (y = -1 at the window's first point,
      about 0 at its last) and sigma(y) = 2 / (1 + exp(5 y)) - 1 (scaled sigmoid); later
      detections in the same window count nothing;
    * a detection outside every window costs A_FP * sigma(y) with y = (i - prev_end_index) /
      (prev_window_width - 1) after a window (a detection just after a window costs almost
      nothing, one far after costs A_FP), or A_FP * -1 before the first window;
    * each window without a detection costs A_FN = -1;
    * detections in the probationary period (the first min(15% of points, 750)) are ignored.
  Standard profile: A_TP = 1, A_FP = 0.11, A_FN = 1. The raw score is normalised as
  100 * (raw - null) / (perfect - null), with null = the detector that flags nothing
  (-A_FN * windows) and perfect = a detection at the start of every window (A_TP * windows).
  Over a corpus, raw, null and perfect are summed over series first (NabTotals).
- range_precision_recall: range-based precision and recall (Tatbul et al., NeurIPS 2018) of
  detected ranges against true ranges, with flat positional bias:
    recall    = mean over true ranges R of  alpha * [R is touched] + (1 - alpha) * gamma * |R ∩ P| / |R|
    precision = mean over detected ranges P of  gamma * |P ∩ R| / |P|
  where |R ∩ P| sums the overlaps with all ranges of the other side and gamma is the
  cardinality factor: 1 when the range overlaps at most one range of the other side, else
  1 / (number it overlaps) with cardinality="reciprocal" (the default) or 1 with "one".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from genad.errors import GenadError
from genad.ops import runs_to_ranges

STANDARD_PROFILE = {"tp": 1.0, "fp": 0.11, "fn": 1.0}

__all__ = [
    "point_auroc",
    "point_ap",
    "point_adjust",
    "point_adjusted_f1",
    "nab_score",
    "nab_totals",
    "NabTotals",
    "ranges_to_labels",
    "range_onsets",
    "range_peaks",
    "STANDARD_PROFILE",
    "range_precision_recall",
]


def ranges_to_labels(ranges: list[tuple[int, int]] | None, n: int) -> np.ndarray:
    """[start, end) ranges -> bool (n,)."""
    lab = np.zeros(n, dtype=bool)
    for a, b in ranges or []:
        lab[max(0, int(a)) : max(0, min(n, int(b)))] = True
    return lab


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise GenadError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    if not np.all(np.isfinite(s)):
        raise GenadError("scores hold NaN or inf: a metric needs a finite score for every point")
    return y, s


def point_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC over points; NaN when only one class is present."""
    y, s = _check(labels, scores)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, s))


def point_ap(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision over points; NaN when there is no anomalous point."""
    y, s = _check(labels, scores)
    if not y.any():
        return float("nan")
    return float(average_precision_score(y, s))


def point_adjust(labels: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Flag every point of a true range in which any point is flagged."""
    y = np.asarray(labels).astype(bool)
    p = np.asarray(pred).astype(bool).copy()
    for a, b in runs_to_ranges(y):
        if p[a:b].any():
            p[a:b] = True
    return p


def point_adjusted_f1(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(best point-adjusted F1, its threshold: flag points with score >= threshold).

    Vectorised over every distinct score: a range is detected at threshold t when its highest
    score is >= t, and then all of its points are true positives."""
    y, s = _check(labels, scores)
    if not y.any():
        return float("nan"), float("nan")
    ranges = runs_to_ranges(y)
    range_max = np.array([s[a:b].max() for a, b in ranges])
    range_len = np.array([b - a for a, b in ranges], dtype=np.float64)
    order = np.argsort(range_max)
    rmax_sorted, rlen_cum = range_max[order], np.cumsum(range_len[order][::-1])[::-1]
    neg_sorted = np.sort(s[~y])
    th = np.unique(s)  # candidate thresholds
    # true positives: lengths of ranges whose max >= t
    i = np.searchsorted(rmax_sorted, th, side="left")
    tp = np.where(i < rmax_sorted.size, rlen_cum[np.minimum(i, rmax_sorted.size - 1)], 0.0)
    fp = neg_sorted.size - np.searchsorted(neg_sorted, th, side="left")
    pos = float(y.sum())
    f1 = np.where(tp > 0, 2 * tp / (2 * tp + fp + (pos - tp)), 0.0)
    k = int(np.argmax(f1))
    return float(f1[k]), float(th[k])


def _scaled_sigmoid(y: float) -> float:
    if y > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


@dataclass
class NabTotals:
    """Raw NAB score with its null and perfect bounds, summable over series."""

    raw: float = 0.0
    null: float = 0.0
    perfect: float = 0.0

    def __add__(self, other: NabTotals) -> NabTotals:
        return NabTotals(self.raw + other.raw, self.null + other.null, self.perfect + other.perfect)

    @property
    def score(self) -> float:
        """Normalised NAB score: 100 = perfect, 0 = flags nothing, negative = worse than that."""
        span = self.perfect - self.null
        return float("nan") if span == 0 else 100.0 * (self.raw - self.null) / span


def nab_totals(
    windows: list[tuple[int, int]],
    detections: np.ndarray,
    n: int | None = None,
    profile: dict[str, float] | None = None,
    probation: bool = True,
) -> NabTotals:
    """NAB raw/null/perfect for one series.

    windows: [start, end) index ranges (NAB's label windows). detections: bool (n,) flags or an
    array of flagged indices. Windows are processed in index order; see the module docstring."""
    prof = profile or STANDARD_PROFILE
    det = np.asarray(detections)
    if det.dtype == bool:
        n = det.size if n is None else n
        idx = np.flatnonzero(det)
    else:
        if n is None:
            raise GenadError("nab_totals needs n (the series length) when given indices")
        idx = np.unique(det.astype(np.int64))
    wins = sorted((int(a), int(b)) for a, b in windows if b > a)
    probation_end = min(math.floor(0.15 * n), 750) if probation else 0
    max_tp = _scaled_sigmoid(-1.0)
    raw = 0.0
    detected = [False] * len(wins)
    w = 0  # index of the first window whose end lies after the current detection
    for i in idx[idx >= probation_end]:
        while w < len(wins) and wins[w][1] <= i:
            w += 1
        if w < len(wins) and wins[w][0] <= i < wins[w][1]:
            if not detected[w]:
                a, b = wins[w]
                width = b - a
                pos = -((b - 1) - i + 1) / width
                raw += prof["tp"] * _scaled_sigmoid(pos) / max_tp
                detected[w] = True
        elif w == 0:  # before any window
            raw -= prof["fp"]
        else:
            a, b = wins[w - 1]
            past = abs(i - (b - 1)) / max(b - a - 1, 1)
            raw += prof["fp"] * _scaled_sigmoid(past)
    raw -= prof["fn"] * detected.count(False)
    return NabTotals(raw=raw, null=-prof["fn"] * len(wins), perfect=prof["tp"] * len(wins))


def nab_score(
    windows: list[tuple[int, int]],
    detections: np.ndarray,
    n: int | None = None,
    profile: dict[str, float] | None = None,
    probation: bool = True,
) -> float:
    """Normalised NAB score (standard profile) of one series; NaN for a series without windows
    (use NabTotals summed over a corpus, as NAB does, to count false alarms there too)."""
    return nab_totals(windows, detections, n, profile, probation).score


def range_onsets(ranges: list[tuple[int, int]], n: int) -> np.ndarray:
    """Detections for NAB from detected ranges: one detection at each range's first point
    (NAB counts every flagged point outside a window as a false alarm)."""
    det = np.zeros(n, dtype=bool)
    for a, _ in ranges:
        if 0 <= a < n:
            det[a] = True
    return det


def range_peaks(ranges: list[tuple[int, int]], scores: np.ndarray) -> np.ndarray:
    """Detections for NAB from detected ranges: one detection at each range's highest-scoring
    point. Window detectors spread a finding over about a window on each side, so a range's
    first point often lies before the event; its peak is where the detector places it."""
    s = np.asarray(scores)
    det = np.zeros(s.size, dtype=bool)
    for a, b in ranges:
        a, b = max(0, int(a)), min(s.size, int(b))
        if b > a:
            det[a + int(np.argmax(s[a:b]))] = True
    return det


def _range_side(a: list[tuple[int, int]], b: list[tuple[int, int]], reciprocal: bool) -> np.ndarray:
    """Per range of `a`: gamma * (overlap with all of `b`) / length, flat bias."""
    out = np.zeros(len(a))
    if not a or not b:
        return out
    bs = np.array(b, dtype=np.int64)
    for k, (s, e) in enumerate(a):
        ov = np.clip(np.minimum(e, bs[:, 1]) - np.maximum(s, bs[:, 0]), 0, None)
        hits = int(np.count_nonzero(ov))
        gamma = 1.0 / hits if reciprocal and hits > 1 else 1.0
        out[k] = gamma * ov.sum() / (e - s)
    return out


def range_precision_recall(
    true_ranges: list[tuple[int, int]],
    pred_ranges: list[tuple[int, int]],
    alpha: float = 0.0,
    cardinality: str = "reciprocal",
) -> tuple[float, float, float]:
    """(precision, recall, F1) over ranges (Tatbul et al. 2018, flat bias); see the module
    docstring. Precision is NaN when nothing is detected; recall is NaN without true ranges."""
    if cardinality not in ("reciprocal", "one"):
        raise GenadError("cardinality must be 'reciprocal' or 'one'")
    if not 0.0 <= alpha <= 1.0:
        raise GenadError("alpha must lie in [0, 1]")
    t = [(int(a), int(b)) for a, b in true_ranges if b > a]
    p = [(int(a), int(b)) for a, b in pred_ranges if b > a]
    rec_c = cardinality == "reciprocal"
    overlap_r = _range_side(t, p, rec_c)
    existence = overlap_r > 0
    recall = float(np.mean(alpha * existence + (1 - alpha) * overlap_r)) if t else float("nan")
    precision = float(np.mean(_range_side(p, t, rec_c))) if p else float("nan")
    if math.isnan(precision) or math.isnan(recall) or precision + recall == 0:
        f1 = 0.0 if not math.isnan(recall) else float("nan")
    else:
        f1 = 2 * precision * recall / (precision + recall)
    return precision, recall, f1
