"""Anomalous regions from an anomaly map: connected components above a threshold."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from genad.types import Region


def relative_threshold(anomaly_map: np.ndarray) -> float:
    """A threshold from the map's own statistics: halfway between its median and its max, and
    never below median + 3 robust standard deviations (so a flat map yields nothing wide)."""
    a = np.asarray(anomaly_map, dtype=np.float64)
    med = float(np.median(a))
    mad = float(np.median(np.abs(a - med))) * 1.4826
    return max(med + 0.5 * (float(a.max()) - med), med + 3.0 * mad)


def propose_regions(
    anomaly_map: np.ndarray,
    max_regions: int = 5,
    min_area_frac: float = 0.0005,
    threshold: float | None = None,
) -> list[Region]:
    """The most anomalous connected regions of `anomaly_map` (HxW), best first.

    Pixels above `threshold` (default: `relative_threshold` of the map) are grouped into
    8-connected components; components smaller than `min_area_frac` of the image are dropped.
    Each Region has .box (x0, y0, x1, y1) with x1/y1 exclusive, .mask (bool HxW), .score (the
    map's max inside) and .index 1..n in order of score.
    """
    a = np.asarray(anomaly_map, dtype=np.float32)
    if a.ndim != 2 or a.size == 0 or not np.isfinite(a).any():
        return []
    a = np.nan_to_num(a, nan=float(np.nanmin(a)))
    t = relative_threshold(a) if threshold is None else float(threshold)
    binary = a > t
    if not binary.any():
        return []
    labels, n = ndimage.label(binary, structure=np.ones((3, 3), bool))
    idx = np.arange(1, n + 1)
    areas = ndimage.sum_labels(binary, labels, idx)
    peaks = ndimage.maximum(a, labels, idx)
    min_area = max(1.0, min_area_frac * a.size)
    keep = [k for k in np.argsort(-np.asarray(peaks)) if areas[k] >= min_area][:max_regions]
    slices = ndimage.find_objects(labels)
    regions = []
    for rank, k in enumerate(keep, start=1):
        sy, sx = slices[k]
        regions.append(
            Region(
                score=float(peaks[k]),
                box=(int(sx.start), int(sy.start), int(sx.stop), int(sy.stop)),
                mask=labels == (k + 1),
                index=rank,
            )
        )
    return regions
