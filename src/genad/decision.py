"""Decisions: the one home of calibrated thresholds and normalised scores.

Every detector scores in its own raw units (a patch distance, robust sigmas of a series, an
LMM's 0..1 answer). A `Calibration` maps raw scores to a normalised score in [0, 1], monotone
in the raw score, with the detector's calibrated decision boundary at 0.5:

    normalised = 1 / (1 + exp(-(raw - threshold) / scale))      kind "logistic"
    normalised = piecewise linear, threshold -> 0.5              kind "unit" (scores in [0, 1])

The decision knob is one number in normalised units, `threshold` (0.5 by default: the
calibrated boundary); `raw_threshold` (raw units) replaces the calibrated boundary. `decide`
applies them to a Result: `normalized_score`, `threshold` (the raw boundary used) and
`decision = raw score > that boundary` (the same as normalised > `threshold`).

Where the calibration comes from:
* zero-shot images (`from_map_bulk`): even in a defective image most patches are normal, so
  the batch's typical per-image map median (the normal level) and its typical peak height
  above that median away from each image's strongest spot (how far a normal stretch rises by
  chance) do not move with the share of defective images; the boundary is level + k * peak
  height (k = 2.0);
* few-shot (`from_reference_scores`): the references' leave-one-out scores;
* series, frames, points (`from_values`): the robust centre and spread of the values
  (median + k * MAD), most of which are normal;
* a wrapped image engine (point-cloud views, video frames: `recover_calibration`), rebuilt
  from the results it decided;
* a user's labelled or known-normal folder (`threshold_for_fpr`, `threshold_for_best_f1`),
  in normalised units, for `genad calibrate`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from genad.errors import GenadError
from genad.ops import robust_center_scale
from genad.types import Result

#: zero-shot images: boundary = typical map level + this many typical peak heights
MAP_BULK_K = 2.0
#: the normalised score of the calibrated boundary
BOUNDARY = 0.5
_KINDS = ("logistic", "unit")


@dataclass(frozen=True)
class Calibration:
    """threshold: the raw score that normalises to 0.5. scale: raw units per logit unit (how
    fast the normalised score rises through the boundary). method: how it was set, for
    people. kind: "logistic" (any raw scale) or "unit" (raw scores already in [0, 1])."""

    threshold: float
    scale: float = 1.0
    method: str = ""
    kind: str = "logistic"

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise GenadError(f"calibration kind must be one of {', '.join(_KINDS)}, got {self.kind!r}")
        if not math.isfinite(self.threshold):
            raise GenadError(f"a calibrated threshold must be a finite number, got {self.threshold}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            object.__setattr__(self, "scale", max(1e-9, abs(self.threshold) * 1e-3, 1e-12))
        if self.kind == "unit" and not 0.0 < self.threshold < 1.0:
            raise GenadError(f"a threshold on 0..1 scores must lie strictly between 0 and 1, got {self.threshold}")

    # -- raw <-> normalised -------------------------------------------------------------------
    def normalize(self, raw: Any) -> Any:
        """The normalised score(s) in [0, 1] of raw score(s); NaN stays NaN."""
        r = np.asarray(raw, dtype=np.float64)
        if self.kind == "unit":
            t = self.threshold
            c = np.clip(r, 0.0, 1.0)
            out = np.where(c <= t, 0.5 * c / t, 0.5 + 0.5 * (c - t) / (1.0 - t))
        else:
            z = np.clip((r - self.threshold) / self.scale, -500.0, 500.0)
            out = 1.0 / (1.0 + np.exp(-z))
        return float(out) if out.ndim == 0 else out

    def raw_at(self, normalised: float) -> float:
        """The raw score whose normalised score is `normalised` (the inverse of normalize)."""
        t = float(normalised)
        if not 0.0 <= t <= 1.0:
            raise GenadError(f"a normalised threshold lies in [0, 1], got {t}")
        if self.kind == "unit":
            thr = self.threshold
            return 2.0 * t * thr if t <= 0.5 else thr + (2.0 * t - 1.0) * (1.0 - thr)
        if t <= 0.0:
            return -math.inf
        if t >= 1.0:
            return math.inf
        return self.threshold + self.scale * math.log(t / (1.0 - t))

    def at_raw(self, raw_threshold: float, method: str = "raw threshold given") -> Calibration:
        """The same calibration moved so that `raw_threshold` normalises to 0.5."""
        raw_threshold = float(raw_threshold)
        if self.kind == "unit" and not 0.0 < raw_threshold < 1.0:
            # a 0..1 detector given a boundary at an end: keep it usable as a logistic one
            return Calibration(raw_threshold, 0.1, method)
        return replace(self, threshold=raw_threshold, method=method)

    # -- one JSON form ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": float(self.threshold),
            "scale": float(self.scale),
            "method": self.method,
            "kind": self.kind,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        try:
            return cls(
                float(d["threshold"]),
                float(d.get("scale", 1.0)),
                str(d.get("method", "")),
                str(d.get("kind", "logistic")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise GenadError(f"not a calibration: {e}") from e


UNIT = Calibration(0.5, 1.0, "scores in 0..1, boundary 0.5", "unit")


def decide(
    result: Result, calibration: Calibration, threshold: float = BOUNDARY, verdict: bool | None = None
) -> Result:
    """Set `result`'s normalised score, raw threshold and decision from `calibration` and the
    normalised decision threshold `threshold` (0.5: the calibrated boundary). A result
    without a score is left undecided. `verdict`: an explicit yes/no (a model's answer),
    which wins over the score for the decision."""
    raw_thr = calibration.raw_at(threshold)
    result.threshold = raw_thr if math.isfinite(raw_thr) else None
    if result.score is None or not math.isfinite(float(result.score)):
        result.normalized_score = None
        return result
    raw = float(result.score)
    result.normalized_score = float(calibration.normalize(raw))
    result.decision = bool(raw > raw_thr) if verdict is None else bool(verdict)
    return result


# -- where calibrations come from -----------------------------------------------------------
def _peak_beside_top(m: np.ndarray, frac: float = 0.25) -> float:
    """Mean of a map's top 1% of pixels outside a box around its highest one (the box spans
    `frac` of each side): what the image would score if its strongest spot were normal."""
    a = np.asarray(m, dtype=np.float32)
    if a.ndim != 2 or a.size < 16:
        v = a.ravel()
        return float(v.max()) if v.size else float("nan")
    h, w = a.shape
    k = max(1, a.size // 100)
    y, x = np.unravel_index(int(np.nanargmax(a)), a.shape)
    ry, rx = max(1, int(h * frac / 2)), max(1, int(w * frac / 2))
    keep = np.ones(a.shape, dtype=bool)
    keep[max(0, y - ry) : y + ry + 1, max(0, x - rx) : x + rx + 1] = False
    v = a[keep]
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    k = min(k, v.size)
    return float(np.partition(v, v.size - k)[-k:].mean())


def from_map_bulk(
    maps: Sequence[np.ndarray], scores: Sequence[float] | np.ndarray, k: float = MAP_BULK_K
) -> Calibration:
    """Zero-shot calibration of image scores from the batch's own maps (no labels).

    level = median over images of each map's median (most pixels of every image are normal);
    peak = median over images of (the map's top-1% mean outside a box around its highest
    pixel - its median): how far a normal stretch of an image rises by chance. Leaving the
    strongest spot out keeps a defect from counting, so both hold whatever share of the batch
    is defective. Boundary: level + k * peak; normalised scale: peak / 2.

    Measured (embedded engine, batches drawn from magnetic_tile and brain_mri with 0, 10, 50
    and 90% defective images, benchmarks/decisions.py): batches of normals only flag 2-4% of
    them; tests/test_decision.py checks the share-invariance on generated maps."""
    s = np.asarray(scores, dtype=np.float64)
    meds = np.asarray([float(np.median(m)) for m in maps], dtype=np.float64)
    beside = np.asarray([_peak_beside_top(m) for m in maps], dtype=np.float64)
    ok = np.isfinite(s) & np.isfinite(meds) & np.isfinite(beside)
    if not ok.any():
        raise GenadError("cannot calibrate: no finite scores in the batch")
    level = float(np.median(meds[ok]))
    peak = float(np.median(beside[ok] - meds[ok]))
    if not peak > 0:
        _, sigma = robust_center_scale(s[ok])
        peak = sigma if sigma > 0 else max(abs(level), 1.0) * 1e-3
    return Calibration(level + k * peak, peak / 2.0, f"zero-shot: map level + {k:g} x peak height")


def from_values(values: np.ndarray, k: float, method: str = "") -> Calibration:
    """median + k robust sigmas of `values` (point, frame or time-step scores, most of them
    normal); the normalised scale is one robust sigma."""
    med, sigma = robust_center_scale(values)
    if sigma <= 0:
        sigma = max(abs(med), 1.0) * 1e-6
    return Calibration(med + k * sigma, sigma, method or f"median + {k:g} robust sigmas")


def from_reference_scores(scores: Sequence[float], k: float, method: str = "") -> Calibration:
    """Few-shot: from the references' own (leave-one-out) scores: their mean + k standard
    deviations, the spread floored at 5% of the mean (a few references agree by chance)."""
    s = np.asarray([v for v in scores if math.isfinite(v)], dtype=np.float64)
    if s.size == 0:
        raise GenadError("cannot calibrate: no reference scores")
    mean = float(s.mean())
    sd = float(s.std(ddof=1)) if s.size > 1 else 0.0
    sd = max(sd, 0.05 * abs(mean), 1e-9)
    return Calibration(mean + k * sd, sd, method or f"references: mean + {k:g} sd of their leave-one-out scores")


# -- calibration by the user ----------------------------------------------------------------
@dataclass
class Choice:
    """A normalised threshold chosen from scored data, with what to expect at it."""

    threshold: float
    expected_fpr: float
    recall: float | None
    precision: float | None
    f1: float | None
    n_normal: int
    n_anomalous: int

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def _rates(
    normal: np.ndarray, anomalous: np.ndarray, t: float
) -> tuple[float, float | None, float | None, float | None]:
    fp = int((normal > t).sum())
    fpr = fp / normal.size if normal.size else 0.0
    if anomalous.size == 0:
        return fpr, None, None, None
    tp = int((anomalous > t).sum())
    recall = tp / anomalous.size
    precision = tp / (tp + fp) if tp + fp else 1.0
    f1 = 2 * tp / (2 * tp + fp + (anomalous.size - tp))
    return fpr, recall, precision, f1


def _split(scores: Sequence[float], labels: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.zeros(s.size, dtype=int) if labels is None else np.asarray(labels, dtype=int)
    if y.shape != s.shape:
        raise GenadError("scores and labels differ in length")
    ok = np.isfinite(s)
    return s[ok & (y == 0)], s[ok & (y == 1)]


def threshold_for_fpr(scores: Sequence[float], target_fpr: float, labels: Sequence[int] | None = None) -> Choice:
    """The lowest normalised threshold at which at most `target_fpr` of the normal scores lie
    above it (labels: 0 normal, 1 anomalous; None: all normal)."""
    if not 0.0 <= target_fpr < 1.0:
        raise GenadError(f"--target-fpr must be in [0, 1), got {target_fpr}")
    normal, anomalous = _split(scores, labels)
    if normal.size == 0:
        raise GenadError("calibrating for a false-alarm rate needs known-normal samples")
    allowed = int(math.floor(target_fpr * normal.size + 1e-9))
    ordered = np.sort(normal)[::-1]
    t = float(ordered[allowed]) if allowed < ordered.size else 0.0
    t = min(max(t, 0.0), 1.0)
    fpr, rec, prec, f1 = _rates(normal, anomalous, t)
    return Choice(t, fpr, rec, prec, f1, int(normal.size), int(anomalous.size))


def threshold_for_best_f1(scores: Sequence[float], labels: Sequence[int]) -> Choice:
    """The normalised threshold of the best F1 on labelled scores (decision: score > t)."""
    normal, anomalous = _split(scores, labels)
    if normal.size == 0 or anomalous.size == 0:
        raise GenadError("best-F1 calibration needs both normal and anomalous labelled samples")
    # decision: score > t. Candidates: midway below each distinct score (flag it and all above)
    v = np.unique(np.concatenate([normal, anomalous]))[::-1]
    below = np.append(v[1:], v[-1] - 1e-6)
    cands = np.clip((v + below) / 2.0, 0.0, 1.0)
    # anomalous / normal counts above each candidate, vectorised by sorting
    tp = anomalous.size - np.searchsorted(np.sort(anomalous), cands, side="right")
    fp = normal.size - np.searchsorted(np.sort(normal), cands, side="right")
    f1s = 2 * tp / (2 * tp + fp + (anomalous.size - tp))
    k = int(np.argmax(f1s))  # the first (highest) candidate among equals: fewer false alarms
    best = (float(cands[k]), float(f1s[k]))
    fpr, rec, prec, f1 = _rates(normal, anomalous, best[0])
    return Choice(best[0], fpr, rec, prec, f1, int(normal.size), int(anomalous.size))


# -- a wrapped engine's calibration, from its results -----------------------------------------
# The calibration an image engine decided its results with, recovered from those results.
#
# Point clouds (rendered views) and videos (frames) run an image engine inside and decide on its
# raw scores (a cloud's highest view score, a video's smoothed frame scores), so they need the
# engine's own calibration (genad.decision): its boundary and its normalised scale. A Result
# carries what is needed: `threshold`, the raw boundary the engine used (its calibrated boundary
# moved to its normalised `threshold` option, 0.5 by default), and the pair (`score`,
# `normalized_score`). For a logistic calibration (threshold c, scale s) and the engine's
# normalised threshold t:
#
#     result.threshold = c + s * logit(t)        score = c + s * logit(normalized_score)
#
# so each result with a normalised score strictly between 0 and 1 and away from t gives
# s = (score - result.threshold) / (logit(normalized_score) - logit(t)) and then c. The results of
# one batch (or of one fitted engine) share one calibration and give it exactly; results of
# several (one engine per view) give the median boundary and scale, a pooled estimate steadier
# than any one view's (each view of a few-shot cloud is calibrated on a handful of references).
_EDGE = 1e-9  # normalised scores this close to 0 or 1 have lost their raw score's precision


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def recover_calibration(
    results: Sequence[Result], engine_threshold: float = BOUNDARY, method: str = ""
) -> Calibration | None:
    """The (pooled) logistic calibration behind `results`, decided at the normalised threshold
    `engine_threshold`; None when no result carries a finite raw boundary."""
    if not 0.0 < engine_threshold < 1.0:
        engine_threshold = BOUNDARY
    lt = _logit(engine_threshold)
    bounds: list[float] = []
    scales: list[float] = []
    for r in results:
        if not r.ok or r.threshold is None or not math.isfinite(float(r.threshold)):
            continue
        thr = float(r.threshold)
        bounds.append(thr)
        n, raw = r.normalized_score, float(r.score)  # type: ignore[arg-type]
        if n is None or not (_EDGE < n < 1.0 - _EDGE) or not math.isfinite(raw):
            continue
        d = _logit(n) - lt
        if abs(d) > 1e-6:
            s = (raw - thr) / d
            if s > 0 and math.isfinite(s):
                scales.append(s)
    if not bounds:
        return None
    scale = float(np.median(scales)) if scales else max(abs(float(np.median(bounds))) * 0.1, 1e-9)
    centre = float(np.median([b - scale * lt for b in bounds]))
    return Calibration(centre, scale, method or "the image engine's own calibration")
