"""Exact reference computations for the pixel-metric tests (small data only)."""

from __future__ import annotations

from bisect import bisect

import numpy as np
from scipy import ndimage


def exact_aupro(maps: list[np.ndarray], masks: list[np.ndarray | None], max_fpr: float = 0.3) -> float:
    """AUPRO by full sort of every pixel, following the algorithm of MVTec-AD's official
    evaluation code (8-connected components, pooled regions, tied scores merged into one curve
    point, curve from (0, 0) to (1, 1), trapezoid with linear interpolation at max_fpr)."""
    scores, fp_change, pro_change = [], [], []
    n_ok, n_regions = 0, 0
    for amap, mask in zip(maps, masks):
        mask = np.zeros(amap.shape, bool) if mask is None else mask.astype(bool)
        labeled, n = ndimage.label(mask, structure=np.ones((3, 3), int))
        n_regions += n
        ok = labeled == 0
        n_ok += int(ok.sum())
        pro = np.zeros(amap.shape, np.float64)
        for k in range(1, n + 1):
            region = labeled == k
            pro[region] = 1.0 / region.sum()
        scores.append(amap.astype(np.float32).ravel())
        fp_change.append(ok.ravel().astype(np.float64))
        pro_change.append(pro.ravel())
    s = np.concatenate(scores)
    order = np.argsort(-s, kind="stable")
    s = s[order]
    fprs = np.cumsum(np.concatenate(fp_change)[order]) / n_ok
    pros = np.cumsum(np.concatenate(pro_change)[order]) / n_regions
    keep = np.append(np.diff(s) != 0, True)
    fprs = np.concatenate([[0.0], np.clip(fprs[keep], None, 1.0), [1.0]])
    pros = np.concatenate([[0.0], np.clip(pros[keep], None, 1.0), [1.0]])
    # trapezoid up to max_fpr, interpolating the crossing segment
    correction = 0.0
    if max_fpr not in fprs:
        ins = bisect(list(fprs), max_fpr)
        y_at = pros[ins - 1] + (pros[ins] - pros[ins - 1]) * (max_fpr - fprs[ins - 1]) / (fprs[ins] - fprs[ins - 1])
        correction = 0.5 * (y_at + pros[ins - 1]) * (max_fpr - fprs[ins - 1])
    inside = fprs <= max_fpr
    x, y = fprs[inside], pros[inside]
    return float((np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)) + correction) / max_fpr)


def blob_masks_and_maps(rng: np.random.Generator, n: int, shapes: list[tuple[int, int]], noise: float = 1.0):
    """Structured data: each image gets 0-3 elliptic defects; the map is a blurred version of
    the mask plus noise, so detection is good but imperfect."""
    maps, masks = [], []
    for i in range(n):
        h, w = shapes[i % len(shapes)]
        yy, xx = np.mgrid[:h, :w]
        mask = np.zeros((h, w), bool)
        for _ in range(rng.integers(0, 4)):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(2, h / 6), rng.uniform(2, w / 6)
            mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        amap = ndimage.gaussian_filter(mask.astype(np.float32), 3) * 3 + rng.normal(0, noise, (h, w))
        maps.append(amap.astype(np.float32))
        masks.append(mask)
    return maps, masks
