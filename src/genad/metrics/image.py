"""Image-level detection metrics: AUROC, average precision and the best F1.

Thin, checked wrappers around scikit-learn so that every part of genad computes the same
numbers the same way. Rule for undefined metrics: when the labels hold only one class the
metric does not exist, and the function returns None (the evaluator writes JSON null),
never NaN and never an exception, because a per-defect-type slice with no normals is a
normal situation in a benchmark, not a user mistake.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
)

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


def decision_metrics(labels: ArrayLike, decisions: ArrayLike) -> dict[str, float | int] | None:
    """How good the detector's own yes/no calls are (its automatic threshold, not the best one
    in hindsight as F1-max): precision, recall, F1 and accuracy of the anomalous class, and the
    count of false alarms and misses. None when there is no labelled decision."""
    y = np.asarray(labels).astype(np.int64)
    d = np.asarray(decisions).astype(bool).astype(np.int64)
    if y.ndim != 1 or d.shape != y.shape:
        raise GenadError(f"{y.size} labels but {d.size} decisions: give one decision per labelled sample")
    if y.size == 0:
        return None
    p, r, f, _ = precision_recall_fscore_support(y, d, average="binary", pos_label=1, zero_division=0.0)
    return {
        "precision": float(p),
        "recall": float(r),
        "f1": float(f),
        "accuracy": float(accuracy_score(y, d)),
        "false_alarms": int(((d == 1) & (y == 0)).sum()),
        "misses": int(((d == 0) & (y == 1)).sum()),
        "n": int(y.size),
    }
