"""The calibration an image engine decided its results with, recovered from those results.

Point clouds (rendered views) and videos (frames) run an image engine inside and decide on its
raw scores (a cloud's highest view score, a video's smoothed frame scores), so they need the
engine's own calibration (genad.decision): its boundary and its normalised scale. A Result
carries what is needed: `threshold`, the raw boundary the engine used (its calibrated boundary
moved to its normalised `threshold` option, 0.5 by default), and the pair (`score`,
`normalized_score`). For a logistic calibration (threshold c, scale s) and the engine's
normalised threshold t:

    result.threshold = c + s * logit(t)        score = c + s * logit(normalized_score)

so each result with a normalised score strictly between 0 and 1 and away from t gives
s = (score - result.threshold) / (logit(normalized_score) - logit(t)) and then c. The results of
one batch (or of one fitted engine) share one calibration and give it exactly; results of
several (one engine per view) give the median boundary and scale, a pooled estimate steadier
than any one view's (each view of a few-shot cloud is calibrated on a handful of references).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from genad.decision import BOUNDARY, Calibration
from genad.types import Result

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


__all__ = ["recover_calibration"]
