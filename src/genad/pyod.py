"""Any genad detector with PyOD's face, for benchmark loops written for PyOD.

    from genad.pyod import GenadOD

    od = GenadOD("embedded", contamination=0.1, resolution=256)  # any detector name and its options
    od.fit(X_train)                        # X: arrays, paths or Samples (genad.types.as_samples)
    y_score = od.decision_function(X_test) # raw scores, higher = more anomalous
    y_pred = od.predict(X_test)            # 0 normal / 1 anomalous
    proba = od.predict_proba(X_test)       # (n, 2): [P(normal), P(anomalous)]
    od.labels_, od.decision_scores_, od.threshold_
    od.detector_                           # the fitted genad detector: maps, regions, explanations

What X is. An array's first axis always counts samples (PyOD's rows): for image detectors
(N, H, W) is N greyscale images and (N, H, W, C) N images (C = 1, 3 or 4; uint8, or floats in
0..1); for series detectors a 2-D tabular X (n_samples, n_features) is n_samples univariate
series, one a row (so a row of features is read as a sequence: the series detectors look for
unusual shapes along it), and (N, T, D) N series of D columns; point clouds (N, P, 3); videos
(N, F, H, W[, C]). A 2-D X for an image detector is refused: reshape it to (N, H, W), or use a
series detector such as "ts-iforest". A list holds one sample per element (arrays of one
sample, paths to files or folders, Samples), and a path (str or Path) names a file or folder.

What fit does. PyOD's unsupervised fit takes X that may hold some anomalies and gives training
scores; genad's detectors learn from normal references. So `fit(X)` fits the detector on all of
X as its references (`detector_`), and `decision_scores_` are out-of-fold scores of X: X is
split into `folds` parts and each part is scored by a detector fitted on the others, because a
sample scored against references that include itself looks perfectly normal (a memory bank
finds its own patches). folds=0 (or fewer than 2 samples) scores X with `detector_` itself.
Anomalies in X are references too, which makes similar anomalies look normal later, exactly
as in PyOD: fit on clean normal data where you have it. `threshold_` is the
100 * (1 - contamination) percentile of `decision_scores_` and `labels_` = decision_scores_ >
threshold_, as PyOD. contamination=None uses genad's own calibrated boundary instead (the
decision of each Result; `threshold_` is then the raw boundary the training results report,
their median where they differ).

Scores. `decision_function` is genad's raw Result.score. `predict_proba` gives [1 - p, p] with
p genad's normalised score (method="normalized": 0.5 at genad's calibrated boundary, which is
not `threshold_` when contamination is set), or PyOD's "linear" (training scores min-max
scaled) or "unify" (erf of the standardised score). A sample the detector could not score
raises GenadError naming it (a PyOD loop has no place for a missing score).

GenadOD follows scikit-learn's estimator rules (`get_params` / `set_params` /
`sklearn.base.clone`; options are checked when fit builds the detector).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from genad import registry
from genad.detector import Detector, input_modality
from genad.errors import GenadError
from genad.types import Result, Sample, as_samples

__all__ = ["GenadOD"]

_PROBA = ("normalized", "linear", "unify")


class GenadOD(BaseEstimator):
    """A genad detector as a PyOD detector (see the module doc).

    detector: a registered name (genad.available()) or a Detector instance (used as a
    template: fit works on clones of it). contamination: the share of anomalies in the
    training data, in (0, 0.5] as PyOD, or None for genad's own boundary. folds: parts for the
    out-of-fold training scores (0: score X with the detector fitted on all of it). params: the
    detector's options (genad.create(detector, **params))."""

    def __init__(
        self,
        detector: str | Detector = "embedded",
        contamination: float | None = 0.1,
        folds: int = 5,
        **params: Any,
    ) -> None:
        self.detector = detector
        self.contamination = contamination
        self.folds = folds
        self.params = params

    # -- scikit-learn ----------------------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"detector": self.detector, "contamination": self.contamination, "folds": self.folds}
        out.update(self.params)
        if deep and isinstance(self.detector, Detector):
            out.update({f"detector__{k}": v for k, v in self.detector.get_params(deep=True).items()})
        return out

    def set_params(self, **params: Any) -> GenadOD:
        nested = {k.split("__", 1)[1]: params.pop(k) for k in [k for k in params if k.startswith("detector__")]}
        for key in ("detector", "contamination", "folds"):
            if key in params:
                setattr(self, key, params.pop(key))
        if nested:
            if not isinstance(self.detector, Detector):
                self.params.update(nested)  # a detector by name: its options are ours
            else:
                self.detector.set_params(**nested)
        self.params.update(params)
        return self

    # -- PyOD ------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None) -> GenadOD:
        """Fit the detector on X as its references; score X out of fold (see the module doc).
        y is ignored (unsupervised), as PyOD does."""
        self._check()
        if y is not None:
            warnings.warn("y is ignored: genad's detectors learn from normal references only", stacklevel=2)
        template = self._template()
        samples = self._samples(X, template)
        if not samples:
            raise GenadError("fit needs at least one sample")
        folds = min(int(self.folds), len(samples))
        train_results: list[Result | None] = [None] * len(samples)
        if folds >= 2:
            for part in np.array_split(np.arange(len(samples)), folds):
                held = set(part.tolist())
                det = template.clone()
                det.fit([s for i, s in enumerate(samples) if i not in held])
                for i, r in zip(part, self._scored(det, [samples[i] for i in part]), strict=True):
                    train_results[i] = r
        self.detector_ = template.clone().fit(samples)
        if folds < 2:
            train_results = list(self._scored(self.detector_, samples))
        results = [r for r in train_results if r is not None]
        scores = np.array([float(r.score) for r in results if r.score is not None], dtype=np.float64)
        self.decision_scores_ = scores
        if self.contamination is None:
            thresholds = [r.threshold for r in results if r.threshold is not None and math.isfinite(r.threshold)]
            self.threshold_ = float(np.median(thresholds)) if thresholds else math.inf
            self.labels_ = np.array([int(bool(r.decision)) for r in results], dtype=int)
        else:
            self.threshold_ = float(np.percentile(scores, 100 * (1 - float(self.contamination))))
            self.labels_ = (scores > self.threshold_).astype(int)
        self._mu, self._sigma = float(scores.mean()), float(scores.std())
        self.n_samples_fit_ = len(samples)
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Raw anomaly scores of X, shape (n,): higher = more anomalous."""
        return np.array([float(r.score) for r in self.results(X)], dtype=np.float64)  # type: ignore[arg-type]

    def predict(self, X: Any) -> np.ndarray:
        """0 (normal) or 1 (anomalous) for each sample of X: score > threshold_ (or genad's
        decision with contamination=None)."""
        results = self.results(X)
        if self.contamination is None:
            return np.array([int(bool(r.decision)) for r in results], dtype=int)
        return (np.array([float(r.score) for r in results]) > self.threshold_).astype(int)  # type: ignore[arg-type]

    def predict_proba(self, X: Any, method: str = "normalized") -> np.ndarray:
        """(n, 2): [P(normal), P(anomalous)] per sample. method: "normalized" (genad's
        normalised score), "linear" or "unify" (PyOD's conversions of the raw score)."""
        if method not in _PROBA:
            raise GenadError(f"method must be {', '.join(_PROBA[:-1])} or {_PROBA[-1]}, got {method!r}")
        results = self.results(X)
        if method == "normalized":
            missing = [r.sample_id for r in results if r.normalized_score is None]
            if missing:
                raise GenadError(f"no normalised score for {missing[0]!r}: use method='linear'")
            p = np.array([float(r.normalized_score) for r in results])  # type: ignore[arg-type]
        else:
            raw = np.array([float(r.score) for r in results])  # type: ignore[arg-type]
            if method == "linear":
                lo, hi = float(self.decision_scores_.min()), float(self.decision_scores_.max())
                p = (raw - lo) / (hi - lo) if hi > lo else (raw > hi).astype(float)
            else:
                from scipy.special import erf

                p = erf((raw - self._mu) / (max(self._sigma, 1e-12) * math.sqrt(2)))
        p = np.clip(p, 0.0, 1.0)
        return np.stack([1.0 - p, p], axis=1)

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """fit(X), then the training labels (labels_)."""
        return self.fit(X, y).labels_

    def results(self, X: Any) -> list[Result]:
        """genad's full Results for X from the fitted detector (maps, regions, explanations);
        GenadError if one could not be scored."""
        det = getattr(self, "detector_", None)
        if det is None:
            raise GenadError("this GenadOD is not fitted yet: call fit(X) first")
        return self._scored(det, self._samples(X, det))

    # -- inside ----------------------------------------------------------------------------
    def _check(self) -> None:
        c = self.contamination
        if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c <= 0.5):
            raise GenadError(f"contamination must be in (0, 0.5] or None, got {c!r}")
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 0:
            raise GenadError(f"folds must be a whole number >= 0, got {self.folds!r}")

    def _template(self) -> Detector:
        if isinstance(self.detector, Detector):
            return self.detector.clone().set_params(**self.params) if self.params else self.detector.clone()
        if not isinstance(self.detector, str):
            raise GenadError(f"detector must be a detector's name or a Detector, got {type(self.detector).__name__}")
        return registry.create(self.detector, **self.params)

    @staticmethod
    def _samples(X: Any, det: Detector) -> list[Sample]:
        modality = input_modality(det)
        try:
            return as_samples(X, modality, stacked=True)
        except GenadError as e:
            a = X if isinstance(X, np.ndarray) else None
            if a is not None and a.ndim == 2 and (modality or "image") == "image":
                raise GenadError(
                    f"{e}. Tabular X (n_samples, n_features) is not images: reshape it to (N, H, W), "
                    "or use a series detector such as 'ts-iforest' (each row a series)"
                ) from e
            raise

    @staticmethod
    def _scored(det: Detector, samples: Sequence[Sample]) -> list[Result]:
        results = det.predict(list(samples))
        bad = [r for r in results if not r.ok]
        if bad:
            first = bad[0]
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise GenadError(f"sample {first.sample_id!r} could not be scored{more}: {first.error or 'no score'}")
        return results
