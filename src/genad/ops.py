"""Operations every part of genad shares, written once: robust thresholds, ranges from runs,
labelled regions, map resizing and the minimum-batch rule of zero-shot scoring.

Only numpy, scipy and Pillow: importing this costs nothing that a loader does not already pay.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from genad.errors import GenadError
from genad.types import Region

#: MAD times this is a standard deviation for normally distributed data
MAD_TO_SIGMA = 1.4826
#: zero-shot scoring compares samples with each other: it needs at least this many
MIN_ZERO_SHOT_BATCH = 3


# -- robust statistics ------------------------------------------------------------------------
def robust_center_scale(values: np.ndarray, std_fallback: bool = True) -> tuple[float, float]:
    """(median, MAD scaled to a Gaussian sigma) of `values`, non-finite values left out.

    When the MAD is 0 (more than half the values are equal) the standard deviation stands in
    if `std_fallback` (right for sets of scores, where ties are rare); without it (for maps,
    which are mostly one flat value) the scale stays 0. A constant set gives a scale of 0."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 0.0
    med = float(np.median(v))
    sigma = MAD_TO_SIGMA * float(np.median(np.abs(v - med)))
    if sigma <= 0 and std_fallback:
        sigma = float(v.std())
    return med, sigma


def robust_threshold(values: np.ndarray, k: float, std_fallback: bool = True) -> float:
    """median + k * robust sigma (see `robust_center_scale`): the line above which a value is
    an outlier of `values`. With a scale of 0 it sits just above the median, so that the
    values equal to it are not above it."""
    med, sigma = robust_center_scale(values, std_fallback)
    if sigma <= 0:
        return med + 1e-9 * max(abs(med), 1.0)
    return med + float(k) * sigma


def robust_z(values: np.ndarray) -> np.ndarray:
    """(values - median) / robust sigma; a constant set gives zeros."""
    med, sigma = robust_center_scale(values)
    return (np.asarray(values, dtype=np.float64) - med) / (sigma or 1.0)


# -- ranges ---------------------------------------------------------------------------------
def runs_to_ranges(mask: np.ndarray, min_length: int = 1) -> list[tuple[int, int]]:
    """[start, end) runs of True in a 1-d boolean (or 0/1) array; runs shorter than
    `min_length` are dropped."""
    m = np.asarray(mask).astype(bool).ravel()
    if m.size == 0:
        return []
    d = np.diff(np.concatenate([[0], m.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    return [(int(a), int(b)) for a, b in zip(starts, ends) if b - a >= min_length]


def merge_ranges(ranges: Sequence[tuple[int, int]], gap: int) -> list[tuple[int, int]]:
    """Join sorted [start, end) ranges whose gap is at most `gap`."""
    merged: list[tuple[int, int]] = []
    for a, b in ranges:
        if merged and a - merged[-1][1] <= gap:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((int(a), int(b)))
    return merged


# -- regions --------------------------------------------------------------------------------
def label_regions(
    anomaly_map: np.ndarray,
    threshold: float,
    max_regions: int = 5,
    min_area_frac: float = 0.0,
) -> list[Region]:
    """The connected regions of `anomaly_map` (HxW) above `threshold`, strongest first.

    Pixels above the threshold are grouped into 8-connected components; components smaller
    than `min_area_frac` of the image are dropped. Each Region has .box (x0, y0, x1, y1) with
    x1/y1 exclusive, .mask (bool HxW), .score (the map's maximum inside) and .index 1..n in
    order of score."""
    a = np.asarray(anomaly_map, dtype=np.float32)
    if a.ndim != 2 or a.size == 0 or not np.isfinite(a).any():
        return []
    a = np.nan_to_num(a, nan=float(np.nanmin(a)))
    binary = a > float(threshold)
    if not binary.any():
        return []
    labels, n = ndimage.label(binary, structure=np.ones((3, 3), bool))
    idx = np.arange(1, n + 1)
    areas = ndimage.sum_labels(binary, labels, idx)
    peaks = np.asarray(ndimage.maximum(a, labels, idx))
    min_area = max(1.0, float(min_area_frac) * a.size)
    keep = [k for k in np.argsort(-peaks, kind="stable") if areas[k] >= min_area][: int(max_regions)]
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


# -- maps -----------------------------------------------------------------------------------
def resize_map(anomaly_map: np.ndarray, shape: Sequence[int], nearest: bool = False) -> np.ndarray:
    """A 2-d map resized to (H, W): bilinear for scores (float32 out), nearest for labels and
    masks (dtype kept). The same rule everywhere a map changes resolution."""
    a = np.asarray(anomaly_map)
    h, w = int(shape[0]), int(shape[1])
    if a.shape == (h, w):
        return a.astype(np.float32, copy=False) if not nearest else a
    if a.ndim != 2 or min(a.shape) == 0:
        raise GenadError(f"cannot resize a map of shape {a.shape} to {h}x{w}")
    if nearest:
        # pixel centres: output pixel i reads source pixel floor((i + 0.5) * n_src / n_out)
        rows = np.minimum(((np.arange(h) + 0.5) * a.shape[0] / h).astype(np.intp), a.shape[0] - 1)
        cols = np.minimum(((np.arange(w) + 0.5) * a.shape[1] / w).astype(np.intp), a.shape[1] - 1)
        return a[rows[:, None], cols[None, :]]
    im = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")
    return np.asarray(im.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


# -- batches --------------------------------------------------------------------------------
def check_min_batch(n: int, what: str = "samples", minimum: int = MIN_ZERO_SHOT_BATCH) -> None:
    """Zero-shot scoring compares the samples of a batch with each other: refuse fewer than
    `minimum`, saying how to go few-shot instead."""
    if n < minimum:
        raise GenadError(
            f"zero-shot needs >= {minimum} {what}: it compares at least {minimum} {what} with each "
            f"other, got {n}; give normal references (--normal DIR) for few-shot, or call fit() first"
        )
