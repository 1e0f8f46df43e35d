"""Heatmaps and overlays: an anomaly map made visible on top of its image.

The colours are matplotlib's "jet" (blue = normal, red = anomalous), taken once as a 256-entry
lookup table when the first map is coloured, so that importing this module stays cheap; the
CLI, the service and the reports all colour maps the same way, and `threshold_scale` is the one
rule for where a detector's threshold sits on that scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from genad.ops import resize_map
from genad.types import Region

LUT_SIZE = 256


@cache
def _lut() -> np.ndarray:
    """uint8 (256, 3): matplotlib's jet resampled to 256 colours, rounded (not truncated, so
    the ends are (0, 0, 128) and (128, 0, 0)). Imported on first use: matplotlib is slow to load."""
    import matplotlib

    rgba = matplotlib.colormaps["jet"].resampled(LUT_SIZE)(np.arange(LUT_SIZE))
    lut = (rgba[:, :3] * 255.0 + 0.5).astype(np.uint8)
    lut.flags.writeable = False
    return lut


def normalise(anomaly_map: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Map to [0, 1] float32 between vmin and vmax (the map's own range when not given).
    NaN and inf read as the lowest value so that a broken pixel never looks like a defect."""
    a = np.asarray(anomaly_map, dtype=np.float32)
    finite = np.isfinite(a)
    lo = float(vmin) if vmin is not None else (float(a[finite].min()) if finite.any() else 0.0)
    hi = float(vmax) if vmax is not None else (float(a[finite].max()) if finite.any() else 1.0)
    if hi <= lo:
        out = np.zeros(a.shape, np.float32)
    else:
        out = (a - lo) / (hi - lo)
    out = np.where(finite, out, 0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def threshold_scale(
    anomaly_map: np.ndarray,
    threshold: float | None,
    at: float = 0.75,
    *,
    saturate: bool = False,
) -> tuple[float | None, float | None]:
    """The colour scale (vmin, vmax) of one map, from its detector's threshold: the scale starts
    at the map's lowest value and puts `threshold` at the `at` point of the colour map, so a map
    that stays below its threshold never reaches the colours above `at`, and red means above it.
    (Scaling each map to its own maximum would paint every normal image red somewhere.)

    `genad detect` uses at=0.75 (orange): when the map goes higher than the scale, the scale
    stretches to the map's maximum, so the hottest pixel of an anomalous map is the top colour;
    without a usable threshold (none, not finite, or not above the map's floor) it returns
    (None, None), i.e. the map's own range.

    The service uses at=0.5 with saturate=True: the threshold is always mid-scale (green) and
    anything beyond twice its distance from the floor is the top colour (red = well above the
    threshold); the scale is always numbers: without a usable threshold the map's own range,
    (0, 1) for a map with no finite value, (v, v + 1) for a flat one."""
    if not 0.0 < at <= 1.0:
        raise ValueError(f"at must be in (0, 1], got {at}")
    a = np.asarray(anomaly_map, dtype=np.float32)
    finite = a[np.isfinite(a)]
    usable = threshold is not None and bool(np.isfinite(threshold))
    if finite.size == 0:
        return (0.0, 1.0) if saturate else (None, None)
    lo, top = float(finite.min()), float(finite.max())
    if not usable or float(threshold) <= lo:  # type: ignore[arg-type]
        if not saturate:
            return None, None
        return lo, (top if top > lo else lo + 1.0)
    hi = lo + (float(threshold) - lo) / at  # type: ignore[arg-type]
    return lo, (hi if saturate else max(top, hi))


def heatmap_rgb(anomaly_map: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Colour an HxW anomaly map with the jet colour map -> uint8 HxWx3."""
    a = np.asarray(anomaly_map)
    if a.ndim != 2:
        raise ValueError(f"anomaly_map must be HxW, got shape {a.shape}")
    idx = (normalise(a, vmin, vmax) * 255.0 + 0.5).astype(np.uint8)
    return _lut()[idx]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def draw_regions(
    image: np.ndarray, regions: Sequence[Region], color: tuple[int, int, int] = (255, 255, 255)
) -> np.ndarray:
    """Draw each region's box and its index (1..n) on a copy of `image` (uint8 HxWx3)."""
    im = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(im)
    h, w = image.shape[:2]
    width = max(1, round(min(h, w) / 150))
    font = _font(max(10, round(min(h, w) / 20)))
    for n, r in enumerate(regions, start=1):
        box = r.box
        if box is None and r.mask is not None and r.mask.any():
            ys, xs = np.nonzero(r.mask)
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        if box is None:
            continue
        x0, y0, x1, y1 = (int(v) for v in box)
        x1, y1 = max(x0 + 1, x1), max(y0 + 1, y1)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=color, width=width)
        label = str(r.index if r.index is not None else n)
        tx, ty = x0 + width + 1, max(0, y0 + width)
        # A dark backing keeps the number readable on any colour.
        bb = draw.textbbox((tx, ty), label, font=font)
        draw.rectangle(bb, fill=(0, 0, 0))
        draw.text((tx, ty), label, fill=color, font=font)
    return np.asarray(im, dtype=np.uint8).copy()


def overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    alpha: float = 0.5,
    vmin: float | None = None,
    vmax: float | None = None,
    regions: list[Region] | None = None,
) -> np.ndarray:
    """Blend the coloured anomaly map over `image` (uint8 HxWx3); the map is resized to the
    image if needed. Region boxes are drawn with their index. Returns uint8 HxWx3."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    img = img[:, :, :3]
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    a = resize_map(anomaly_map, img.shape[:2])
    heat = heatmap_rgb(a, vmin, vmax).astype(np.float32)
    out = (img.astype(np.float32) * (1.0 - alpha) + heat * alpha + 0.5).astype(np.uint8)
    if regions:
        out = draw_regions(out, regions)
    return out
