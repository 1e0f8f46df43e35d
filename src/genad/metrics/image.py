"""Image-level detection metrics: AUROC, average precision, the best F1, the detector's own
decisions (confusion matrix) and the score histogram.

Thin, checked wrappers around scikit-learn so that every part of genad computes the same
numbers the same way. Rule for undefined metrics: when the labels hold only one class the
metric does not exist, and the function returns None (the evaluator writes JSON null),
never NaN and never an exception, because a per-defect-type slice with no normals is a
normal situation in a benchmark, not a user mistake.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
)

from genad.decision import threshold_for_best_f1
from genad.errors import GenadError

ArrayLike = Sequence[float] | Sequence[int] | np.ndarray


def _check(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray] | None:
    """Validated (labels as int 0/1, scores as float64), or None when only one class is present."""
    y = np.asarray(labels)
    raw = np.asarray(scores)
    if y.ndim != 1 or raw.ndim != 1:
        raise GenadError("labels and scores must be flat sequences, one value per sample")
    if len(y) != len(raw):
        raise GenadError(f"{len(y)} labels but {len(raw)} scores: give one score per labelled sample")
    if raw.dtype == object and any(v is None for v in raw.tolist()):
        raise GenadError("some scores are None (failed samples): drop them before computing metrics")
    try:
        s = raw.astype(np.float64)
    except (TypeError, ValueError) as e:
        raise GenadError(f"scores must be numbers ({e})") from e
    if not np.all(np.isfinite(s)):
        raise GenadError("some scores are NaN or infinite: drop or fix those samples first")
    if y.dtype == bool:
        y = y.astype(np.int64)
    if y.size and not np.isin(y, (0, 1)).all():
        raise GenadError("labels must be 0 (normal) or 1 (anomalous)")
    y = y.astype(np.int64)
    if y.size == 0 or y.min() == y.max():
        return None
    return y, s


def image_auroc(labels: ArrayLike, scores: ArrayLike) -> float | None:
    """Area under the ROC curve (ties count one half), or None if only one class is present."""
    checked = _check(labels, scores)
    if checked is None:
        return None
    return float(roc_auc_score(*checked))


def image_ap(labels: ArrayLike, scores: ArrayLike) -> float | None:
    """Average precision (step-wise area under the PR curve, no interpolation, as in
    scikit-learn), or None if only one class is present."""
    checked = _check(labels, scores)
    if checked is None:
        return None
    return float(average_precision_score(*checked))


def f1_max(labels: ArrayLike, scores: ArrayLike) -> tuple[float | None, float | None]:
    """The best F1 over all thresholds, and that threshold.

    A sample is called anomalous when score >= threshold; thresholds are the distinct scores, so
    tied samples are always called together. Returns (None, None) if only one class is present.
    """
    checked = _check(labels, scores)
    if checked is None:
        return None, None
    precision, recall, thresholds = precision_recall_curve(*checked)
    # The last PR point (precision 1, recall 0) has no threshold: leave it out.
    p, r = precision[:-1], recall[:-1]
    denom = p + r
    f1 = np.divide(2 * p * r, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def decision_metrics(
    labels: ArrayLike, decisions: ArrayLike, thresholds: Sequence[float | None] | np.ndarray | None = None
) -> dict[str, float | int | None] | None:
    """How good the detector's own yes/no calls are (its automatic threshold, not the best one
    in hindsight as F1-max). None when there is no labelled decision.

    precision, recall, f1, accuracy: of the anomalous class (scikit-learn, 0 where undefined);
    tp, fp, tn, fn: the confusion matrix (decision True = called anomalous); false_alarms and
    misses: fp and fn again; n, n_normal, n_anomalous; false_alarm_rate = fp / normals,
    specificity = tn / normals, miss_rate = fn / anomalous (None without normals, resp.
    anomalous samples); flagged = tp + fp and flagged_share = flagged / n; threshold: the
    median of the raw decision thresholds the results used (`thresholds`, one per decision,
    None or NaN ones ignored; None when there is none)."""
    y = np.asarray(labels).astype(np.int64)
    d = np.asarray(decisions).astype(bool).astype(np.int64)
    if y.ndim != 1 or d.shape != y.shape:
        raise GenadError(f"{y.size} labels but {d.size} decisions: give one decision per labelled sample")
    if y.size and not np.isin(y, (0, 1)).all():
        raise GenadError("labels must be 0 (normal) or 1 (anomalous)")
    if y.size == 0:
        return None
    p, r, f, _ = precision_recall_fscore_support(y, d, average="binary", pos_label=1, zero_division=0.0)
    tp = int(((d == 1) & (y == 1)).sum())
    fp = int(((d == 1) & (y == 0)).sum())
    tn = int(((d == 0) & (y == 0)).sum())
    fn = int(((d == 0) & (y == 1)).sum())
    n_normal, n_anomalous = fp + tn, tp + fn
    thr: float | None = None
    if thresholds is not None:
        t = np.asarray([np.nan if v is None else float(v) for v in thresholds], dtype=np.float64)
        if t.size != y.size:
            raise GenadError(f"{y.size} decisions but {t.size} thresholds: give one threshold per decision")
        t = t[np.isfinite(t)]
        thr = float(np.median(t)) if t.size else None
    return {
        "precision": float(p),
        "recall": float(r),
        "f1": float(f),
        "accuracy": float(accuracy_score(y, d)),
        "false_alarms": fp,
        "misses": fn,
        "n": int(y.size),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n_normal": n_normal,
        "n_anomalous": n_anomalous,
        "false_alarm_rate": fp / n_normal if n_normal else None,
        "specificity": tn / n_normal if n_normal else None,
        "miss_rate": fn / n_anomalous if n_anomalous else None,
        "flagged": tp + fp,
        "flagged_share": (tp + fp) / int(y.size),
        "threshold": thr,
    }


def best_f1_threshold_normalized(labels: ArrayLike, scores: ArrayLike) -> float | None:
    """The best-F1 threshold t on normalised (0..1) scores under the detectors' own rule, an
    image is anomalous when score > t, so that t can be given back as the decision threshold
    (`-t`, `-p threshold=t`): genad.decision.threshold_for_best_f1, midway between the lowest
    score it calls anomalous and the next lower one. Its F1 is `f1_max`'s on the same scores.
    None if only one class is present."""
    checked = _check(labels, scores)
    if checked is None:
        return None
    y, s = checked
    if s.min() < 0.0 or s.max() > 1.0:
        raise GenadError("normalised scores lie in [0, 1]: these are raw scores")
    return float(threshold_for_best_f1(s.tolist(), y.tolist()).threshold)


#: bins of the score histogram (normal vs anomalous) the evaluation report draws
HIST_BINS = 40


def score_histogram(
    labels: ArrayLike,
    scores: ArrayLike,
    bins: int = HIST_BINS,
    lo: float | None = None,
    hi: float | None = None,
) -> dict[str, list[float] | list[int]]:
    """Counts of normal and anomalous scores in `bins` equal bins from `lo` to `hi` (default:
    the lowest and highest score; a single value gets a bin of width 1 around it). Bins are
    [a, b) except the last, [a, b]; scores outside [lo, hi] are counted in the end bins, so
    the counts always sum to the numbers of normal and anomalous scores.
    Returns {"edges": bins + 1 floats, "normal": counts, "anomalous": counts}."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise GenadError(f"{y.size} labels but {s.size} scores: give one score per labelled sample")
    if not np.all(np.isfinite(s)):
        raise GenadError("some scores are NaN or infinite: drop or fix those samples first")
    if bins < 1:
        raise GenadError(f"a histogram needs at least one bin, got {bins}")
    y = y.astype(np.int64)
    if y.size and not np.isin(y, (0, 1)).all():
        raise GenadError("labels must be 0 (normal) or 1 (anomalous)")
    a = float(s.min()) if lo is None and s.size else (0.0 if lo is None else float(lo))
    b = float(s.max()) if hi is None and s.size else (1.0 if hi is None else float(hi))
    if not (math.isfinite(a) and math.isfinite(b)):
        raise GenadError(f"histogram range must be finite, got {a}..{b}")
    if b < a:
        a, b = b, a
    if b == a:
        a, b = a - 0.5, b + 0.5
    edges = np.linspace(a, b, bins + 1)
    clipped = np.clip(s, a, b)
    normal, _ = np.histogram(clipped[y == 0], bins=edges)
    anomalous, _ = np.histogram(clipped[y == 1], bins=edges)
    return {
        "edges": [float(e) for e in edges],
        "normal": [int(c) for c in normal],
        "anomalous": [int(c) for c in anomalous],
    }
