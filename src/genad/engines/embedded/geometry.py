"""Image geometry: sizes the backbone sees and the way maps go back to the input's pixels.

The backbones are fully convolutional (EfficientNet) or interpolate their positional
embeddings (DINOv2), so an image is never squashed into a square: it is scaled, keeping its
aspect ratio, by one factor per batch that brings the batch's median image side to
`resolution` (see `batch_scale`), and each side is rounded to the backbone's multiple. Elongated strips (e.g. 500x1250) stay strips. The rounding changes the
aspect ratio by at most half a multiple per side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from genad.ops import resize_map


def batch_scale(shapes: Sequence[tuple[int, int]], resolution: int) -> float:
    """One scale factor for a set of images: their median image side becomes `resolution`.

    Images of one product usually share the camera's pixel scale, so one factor keeps a
    texture at one scale in every image (a per-image factor would blow up small crops and
    shrink large ones, and the same texture would then look different to the backbone).
    """
    sides = [math.sqrt(h * w) for h, w in shapes]
    return resolution / float(np.median(sides)) if sides else 1.0


def work_size(
    h: int, w: int, scale: float, multiple: int, resolution: int, min_side: int | None = None
) -> tuple[int, int]:
    """(H, W) the backbone sees: the image scaled by `scale`, aspect kept, sides a multiple.

    The area is bounded to (2*resolution)**2 so that a huge image in a batch of small ones
    does not cost 100x more, and each side is at least `min_side` (2 multiples by default) so
    that a tiny image still gives a patch grid.
    """
    min_side = min_side or 2 * multiple
    s = min(scale, 2.0 * resolution / math.sqrt(h * w))
    s = max(s, min_side / min(h, w)) if min(h, w) * s < min_side else s
    nh = max(min_side, int(round(h * s / multiple)) * multiple)
    nw = max(min_side, int(round(w * s / multiple)) * multiple)
    return nh, nw


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 HxWx3 -> float32 (3, H, W) in [0, 1] at `size` (H, W), antialiased."""
    h, w = size
    if image.shape[:2] != (h, w):
        image = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255.0


def patch_map_to_image(
    patch_scores: np.ndarray, work: tuple[int, int], out: tuple[int, int], sigma: float = 4.0
) -> np.ndarray:
    """Patch scores (h, w) -> float32 map at the input's size `out`, Gaussian-smoothed.

    Smoothing happens at the working resolution (sigma in working pixels, as PatchCore does at
    224 px) so that its strength does not depend on how large the original picture is.
    """
    m = resize_map(np.asarray(patch_scores, dtype=np.float32), work)
    if sigma > 0:
        m = gaussian_filter(m, sigma=sigma, mode="nearest", truncate=3.0)
    return np.ascontiguousarray(resize_map(m, out), dtype=np.float32)
