"""Visual prompting as in GPT-4V-AD: divide an image into numbered regions and mark them.

A multimodal model cannot point at pixels, but it can name a number it sees. So the image is
divided into regions (an N x N grid, SLIC superpixels, or the embedded engine's proposals), each
region is outlined and labelled with its number on a "set-of-mark" image, and the model answers
per region number; `genad.engines.lmm.text2seg` turns that answer back into a pixel map.

Regions are bool HxW masks numbered 1..n in list order. Every division method returns a
partition (each pixel in exactly one region) unless `background=False` is asked for proposals.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from genad.errors import GenadError
from genad.ops import resize_map
from genad.types import Region, Result

METHODS = ("grid", "slic", "proposals")
# How many regions when none is asked for. Grid 6 x 6: measured against grid 4, grid 8 and SLIC 60
# (GPT-4V-AD's division) with a simulated model (benchmarks/results/region_division.md): grid 8 and
# SLIC 60 localise best, but a third or more of their numbers no longer fit inside their region
# and the marks cover over a third of a small image; grid 6 keeps every number inside its cell
# and gets most of the gain over grid 4. SLIC: about 60 segments, as GPT-4V-AD divides.
DEFAULT_N = {"grid": 6, "slic": 60, "proposals": 3}


# --------------------------------------------------------------------------- division
def divide(
    image: np.ndarray,
    method: str = "grid",
    n: int | None = None,
    anomaly_map: np.ndarray | None = None,
    *,
    regions: Sequence[Region] | None = None,
    background: bool = True,
    threshold: float | None = None,
    min_area_frac: float = 0.0005,
    compactness: float = 10.0,
) -> list[np.ndarray]:
    """Split `image` (HxWx3 or HxW) into bool HxW region masks, numbered 1..len in order.

    method "grid": n x n cells (n per side, default 6), row by row.
    method "slic": about n SLIC superpixels (default 60, as GPT-4V-AD; scikit-image decides the
      exact count).
    method "proposals": the n (default 3) most anomalous regions of the embedded engine, taken
      from `regions` (its Result.regions, highest score first) or else from `anomaly_map`
      thresholded into connected regions ranked by their peak (the embedded engine's
      `propose_regions`; `threshold` defaults to halfway between the map's median and max);
      the rest of the image is appended as one background region unless background=False.
    """
    h, w = image.shape[:2]
    if method not in METHODS:
        raise GenadError(f"unknown region method {method!r}: choose one of {', '.join(METHODS)}")
    n = DEFAULT_N[method] if n is None else int(n)
    if n < 1:
        raise GenadError(f"the number of regions must be at least 1 (got {n})")
    if method == "grid":
        if n > min(h, w):
            raise GenadError(f"a {n}x{n} grid does not fit a {w}x{h} image: use a smaller n")
        rows = (np.arange(h) * n) // h
        cols = (np.arange(w) * n) // w
        labels = rows[:, None] * n + cols[None, :] + 1
        return labels_to_masks(labels, n * n)
    if method == "slic":
        return _slic(image, n, compactness)
    return _proposals((h, w), n, anomaly_map, regions, background, threshold, min_area_frac)


SLIC_MAX_SIDE = 640  # superpixels are computed at most this large, then scaled back


def _slic(image: np.ndarray, n: int, compactness: float) -> list[np.ndarray]:
    from skimage.segmentation import relabel_sequential, slic

    rgb = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
    h, w = rgb.shape[:2]
    small = rgb
    if max(h, w) > SLIC_MAX_SIDE:
        # A few dozen regions do not need full resolution (the model sees <= 768 px anyway);
        # nearest-neighbour upscaling of the labels keeps them a partition.
        f = SLIC_MAX_SIDE / max(h, w)
        size = (max(1, round(w * f)), max(1, round(h * f)))
        small = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    labels = slic(
        small,
        n_segments=n,
        compactness=compactness,
        start_label=1,
        channel_axis=-1,
        enforce_connectivity=True,
    )
    labels, _, _ = relabel_sequential(labels)
    if labels.shape != (h, w):
        rows = (np.arange(h) * labels.shape[0]) // h
        cols = (np.arange(w) * labels.shape[1]) // w
        labels = labels[rows[:, None], cols[None, :]]
    return labels_to_masks(labels, int(labels.max()))


def _proposals(
    shape: tuple[int, int],
    n: int,
    anomaly_map: np.ndarray | None,
    regions: Sequence[Region] | None,
    background: bool,
    threshold: float | None,
    min_area_frac: float,
) -> list[np.ndarray]:
    candidates: list[np.ndarray] = []
    if regions:
        for r in sorted(regions, key=lambda r: -float(r.score)):
            m = region_mask(r, shape)
            if m is not None and m.any():
                candidates.append(m)
    elif anomaly_map is not None:
        # the embedded engine's own rule, so "proposals" means the same thing everywhere
        from genad.engines.embedded.regions import propose_regions

        props = propose_regions(fit_map(anomaly_map, shape), n, min_area_frac, threshold=threshold)
        candidates = [r.mask for r in props if r.mask is not None]
    else:
        raise GenadError(
            "region method 'proposals' needs the embedded engine's anomaly map or regions: "
            "run the embedded detector first, or use method 'grid' or 'slic'"
        )
    masks: list[np.ndarray] = []
    taken = np.zeros(shape, dtype=bool)
    for m in candidates:
        if len(masks) == n:
            break
        m = m & ~taken  # overlapping proposals: the higher-ranked one keeps the pixels
        if m.any():
            masks.append(m)
            taken |= m
    if background and not taken.all():
        masks.append(~taken)
    return masks


def fit_map(anomaly_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The map as float32 at `shape` (bilinear when it was made at another resolution)."""
    return resize_map(np.asarray(anomaly_map, dtype=np.float32), shape)


def region_mask(region: Region, shape: tuple[int, int]) -> np.ndarray | None:
    """A Region's bool mask at `shape`, from its mask (resized if needed) or else its box."""
    if region.mask is not None:
        return resize_map(np.asarray(region.mask, dtype=bool), shape, nearest=True)
    if region.box is not None:
        x0, y0, x1, y1 = (int(v) for v in region.box)
        m = np.zeros(shape, dtype=bool)
        m[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = True
        return m
    return None


# --------------------------------------------------------------------------- label images
def as_labels(masks: Sequence[np.ndarray] | np.ndarray) -> tuple[np.ndarray, int]:
    """(label image, number of regions) from a list of masks or a label image."""
    labels = masks_to_labels(masks)
    if isinstance(masks, np.ndarray) and masks.ndim == 2 and masks.dtype != bool:
        return labels, int(labels.max(initial=0))
    return labels, len(masks)


def masks_to_labels(masks: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Region masks -> int32 label image (0 = no region, i = region i; earlier masks win)."""
    if isinstance(masks, np.ndarray) and masks.ndim == 2 and masks.dtype != bool:
        return masks.astype(np.int32, copy=False)  # already a label image
    if len(masks) == 0:
        raise GenadError("no regions to label")
    stack = np.asarray(masks, dtype=bool)
    # the first True along the stack is the earliest mask holding the pixel
    labels = (np.argmax(stack, axis=0) + 1).astype(np.int32)
    labels[~stack.any(axis=0)] = 0
    return labels


def labels_to_masks(labels: np.ndarray, n: int | None = None) -> list[np.ndarray]:
    """int label image -> [labels == 1, ..., labels == n]."""
    n = int(labels.max()) if n is None else n
    return [labels == i for i in range(1, n + 1)]


def region_boxes(labels: np.ndarray, n: int) -> list[tuple[int, int, int, int] | None]:
    """(x0, y0, x1, y1) box of each region 1..n (exclusive ends), None for an empty region."""
    slices = ndimage.find_objects(labels, max_label=n)
    return [None if s is None else (s[1].start, s[0].start, s[1].stop, s[0].stop) for s in slices]


# --------------------------------------------------------------------------- set of mark
def mark_positions(masks: Sequence[np.ndarray] | np.ndarray) -> list[tuple[int, int] | None]:
    """Where each region's number goes: (x, y) of the point deepest inside it (the maximum of
    its distance transform), so the label sits on the region even when it is not convex."""
    return [None if p is None else (p[0], p[1]) for p in _deepest_points(*as_labels(masks))]


def _deepest_points(labels: np.ndarray, n: int) -> list[tuple[int, int, float, tuple[int, int, int, int]] | None]:
    """(x, y, area in px, region box) per region 1..n; None for an empty region."""
    out: list[tuple[int, int, float, tuple[int, int, int, int]] | None] = []
    for i, sl in enumerate(ndimage.find_objects(labels, max_label=n), start=1):
        if sl is None:
            out.append(None)
            continue
        mask = labels[sl] == i
        # A label needs no pixel precision: large crops are subsampled (<= 128 px a side)
        # before the distance transform. The pad makes the image border count as an edge.
        step = max(1, -(-max(mask.shape) // 128))
        dist = ndimage.distance_transform_edt(np.pad(mask[::step, ::step], 1))
        if step > 1 and dist.max() == 0:  # a thin region the subsampling missed
            step = 1
            dist = ndimage.distance_transform_edt(np.pad(mask, 1))
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        y = min(mask.shape[0] - 1, (int(y) - 1) * step)
        x = min(mask.shape[1] - 1, (int(x) - 1) * step)
        box = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
        out.append((x + sl[1].start, y + sl[0].start, float(mask.sum()), box))
    return out


def font_size_for(shape: tuple[int, int], n_regions: int) -> int:
    """Numbers scale with the image (about 1/18 of its short side), shrink when regions are
    many and small, and never go below 10 px (still legible after a downscale to 768 px)."""
    h, w = shape
    size = min(h, w) / 18.0
    if n_regions > 0:
        size = min(size, 0.6 * np.sqrt(h * w / n_regions))
    return int(max(10, round(size)))


def render_set_of_mark(
    image: np.ndarray,
    masks: Sequence[np.ndarray] | np.ndarray,
    *,
    font_size: int | None = None,
    line: tuple[int, int, int] = (255, 255, 255),
    edge: tuple[int, int, int] = (0, 0, 0),
) -> np.ndarray:
    """The set-of-mark image: region boundaries drawn as a light line with a dark edge, and
    each region's number (1..n) in white on a black box at the point deepest inside it, so
    both read on any texture. Same size as `image`; uint8 HxWx3."""
    rgb = np.asarray(image)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    if rgb.dtype != np.uint8:
        raise GenadError("the set-of-mark image needs a uint8 RGB image")
    h, w = rgb.shape[:2]
    labels, n = as_labels(masks)
    if labels.shape != (h, w):
        raise GenadError(f"region masks are {labels.shape[1]}x{labels.shape[0]} but the image is {w}x{h}")
    out = rgb.copy()
    thick = max(1, round(min(h, w) / 400))
    core = _boundaries(labels)
    if thick > 1:
        core = ndimage.binary_dilation(core, iterations=thick - 1)
    outer = ndimage.binary_dilation(core, iterations=1)
    out[outer] = edge
    out[core] = line

    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    size = font_size or font_size_for((h, w), n)
    font = ImageFont.load_default(size=size)
    pad = max(2, size // 6)
    for i, point in enumerate(_deepest_points(labels, n), start=1):
        if point is None:
            continue
        x0, y0, x1, y1 = _label_box(draw, str(i), font, point, pad, (w, h))
        draw.rectangle((x0, y0, x1, y1), fill=edge)
        draw.text(((x0 + x1) / 2, (y0 + y1) / 2), str(i), fill=line, font=font, anchor="mm")
    return np.asarray(pil, dtype=np.uint8).copy()


def _boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour has another label (a 1-2 px line between any
    two regions, and around masks that do not cover the image)."""
    b = np.zeros(labels.shape, dtype=bool)
    dv = labels[1:, :] != labels[:-1, :]
    dh = labels[:, 1:] != labels[:, :-1]
    b[:-1, :] |= dv
    b[:, :-1] |= dh
    return b


def _label_box(
    draw: ImageDraw.ImageDraw,
    text: str,
    font: Any,
    point: tuple[int, int, float, tuple[int, int, int, int]],
    pad: int,
    size: tuple[int, int],
) -> tuple[int, int, int, int]:
    """The box for a region's number: centred on its deepest point when the region is large
    enough that the label hides at most a quarter of it, else just outside the region's box (above, below, right, left: the
    first that fits), so a small region - often the defect itself - is not hidden by its
    label. Always shifted to stay inside the image."""
    l, t, r, b = draw.textbbox((0, 0), text, font=font, anchor="mm")
    bw, bh = (r - l) + 2 * pad, (b - t) + 2 * pad
    w, h = size
    cx, cy, area, (bx0, by0, bx1, by1) = point
    if bw * bh > 0.25 * area:
        gap = 2
        for px, py, fits in (
            ((bx0 + bx1) / 2, by0 - gap - bh / 2, by0 - gap - bh >= 0),
            ((bx0 + bx1) / 2, by1 + gap + bh / 2, by1 + gap + bh <= h),
            (bx1 + gap + bw / 2, (by0 + by1) / 2, bx1 + gap + bw <= w),
            (bx0 - gap - bw / 2, (by0 + by1) / 2, bx0 - gap - bw >= 0),
        ):
            if fits:
                cx, cy = int(px), int(py)
                break
    x0 = int(np.clip(cx - bw // 2, 0, max(0, w - bw)))
    y0 = int(np.clip(cy - bh // 2, 0, max(0, h - bh)))
    return x0, y0, int(min(w - 1, x0 + bw)), int(min(h - 1, y0 + bh))


# --------------------------------------------------------------------------- saving
def save_visual_prompt(out_dir: str | Path, result: Result, image: np.ndarray | None = None) -> dict[str, Path]:
    """Write what the model saw and how its numbers map to pixels, so anyone can check it:
    som.png (the marked image), regions.png (label image: pixel value = region number,
    16-bit when there are more than 255 regions) and regions.json (per region: index, box,
    area, score, label, explanation), from the result's `visual_prompt`. When it no longer
    holds its set-of-mark image (detector "lmm" drops it to save memory), give the original
    `image` and it is re-rendered from the region labels. Returns the written paths by name."""
    vp = result.visual_prompt
    som = None if vp is None else vp.image
    masks = None if vp is None else vp.labels
    if som is None and masks is not None and image is not None:
        som = render_set_of_mark(np.asarray(image), masks)
    if som is None or masks is None:
        raise GenadError(
            f"result {result.sample_id!r} has no visual prompt to save (it was not made with "
            "a region method, or give the image to re-draw it)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels, n = as_labels(masks)
    paths = {"som": out / "som.png", "regions": out / "regions.png", "json": out / "regions.json"}
    Image.fromarray(np.asarray(som, dtype=np.uint8)).save(paths["som"])
    if n <= 255:
        Image.fromarray(labels.astype(np.uint8)).save(paths["regions"])
    else:
        Image.fromarray(labels.astype(np.uint16)).save(paths["regions"])
    by_index = {r.index: r for r in result.regions if r.index is not None}
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    rows = []
    for i, box in enumerate(region_boxes(labels, n), start=1):
        r = by_index.get(i)
        rows.append(
            {
                "index": i,
                "box": None if box is None else [int(v) for v in box],
                "area": int(areas[i]),
                "score": None if r is None else float(r.score),
                "label": None if r is None else r.label,
                "explanation": None if r is None else r.explanation,
            }
        )
    meta = {
        "sample_id": result.sample_id,
        "method": None if vp is None else vp.method,
        "image_score": result.score,
        "regions": rows,
    }
    paths["json"].write_text(json.dumps(meta, indent=2))
    return paths
