"""Region proposals from an anomaly map: the map's own relative threshold, then connected
components (genad.ops.label_regions). Used by the embedded engine and by the LMM's
"proposals" region method, so that "proposals" means the same thing everywhere."""

from __future__ import annotations

import numpy as np

from genad.ops import label_regions, robust_threshold
from genad.types import Region


def relative_threshold(anomaly_map: np.ndarray) -> float:
    """A threshold from the map's own statistics: halfway between its median and its max, and
    never below median + 3 robust standard deviations (so a flat map yields nothing wide)."""
    a = np.asarray(anomaly_map, dtype=np.float64)
    med = float(np.median(a))
    return max(med + 0.5 * (float(a.max()) - med), robust_threshold(a, 3.0, std_fallback=False))


def propose_regions(
    anomaly_map: np.ndarray,
    max_regions: int = 5,
    min_area_frac: float = 0.0005,
    threshold: float | None = None,
) -> list[Region]:
    """The most anomalous connected regions of `anomaly_map` (HxW), best first: pixels above
    `threshold` (default: `relative_threshold` of the map), 8-connected, components smaller
    than `min_area_frac` of the image dropped (see genad.ops.label_regions)."""
    a = np.asarray(anomaly_map, dtype=np.float32)
    if a.ndim != 2 or a.size == 0 or not np.isfinite(a).any():
        return []
    a = np.nan_to_num(a, nan=float(np.nanmin(a)))
    t = relative_threshold(a) if threshold is None else float(threshold)
    return label_regions(a, t, max_regions, min_area_frac)
