"""Multi-view depth rendering of a point cloud, and projecting per-view maps back to points.

In the spirit of CPMF (Cao et al. 2023) and of the rendered depth images in the GPT-4V study:
an image engine cannot read points, but it can read shaded depth images of a shape seen from
several directions. Each view is an orthographic z-buffer render (numpy lexsort, no loops)
with splatting sized to the point spacing, small holes filled from the nearest rendered pixel,
and Lambert shading from normals estimated on the depth image. Every view keeps a pixel->point
index map so that an anomaly map drawn on the view can be sent back to the points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from genad.errors import GenadError

_MAX_SPLATS = 20_000_000  # splat copies per view (about 0.5 GB of sort keys at most)
_MARGIN = 0.95  # fraction of the image the unit sphere spans, so silhouettes never touch the border
_LIGHT = np.array([-0.35, 0.45, 1.0]) / np.linalg.norm([-0.35, 0.45, 1.0])


@dataclass
class View:
    """One rendered view. image: uint8 SxSx3; depth: float32 SxS height toward the camera in
    normalised units (NaN on background); index_map: int64 SxS point shown at each pixel (-1
    background); point_pixel: int64 (N,) flat pixel of each point; visible: bool (N,) points
    that are the front-most surface at their own pixel; rotation: 3x3 world->view."""

    image: np.ndarray
    depth: np.ndarray
    index_map: np.ndarray
    point_pixel: np.ndarray
    visible: np.ndarray
    rotation: np.ndarray


def normalise(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre on the centroid and scale into the unit sphere. Returns (points, centre, scale)."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
        raise GenadError(f"expected points of shape (N, 3) with N > 0, got {pts.shape}")
    if not np.isfinite(pts).all():
        raise GenadError("the point cloud holds NaN or infinite coordinates: drop them first (load_point_cloud does)")
    centre = pts.mean(axis=0)
    scale = float(np.sqrt(((pts - centre) ** 2).sum(axis=1)).max())
    if scale <= 0:
        raise GenadError("every point is at the same place: nothing to render")
    return (pts - centre) / scale, centre, scale


def _look_at(d: np.ndarray) -> np.ndarray:
    """Rotation whose third row is the viewing direction d (object -> camera)."""
    d = d / np.linalg.norm(d)
    up = np.array([0.0, 1.0, 0.0]) if abs(d[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    if abs(d[2]) > 0.999:  # looking straight down: keep +y as the image's up
        up = np.array([0.0, 1.0, 0.0])
    x = np.cross(up, d)
    x /= np.linalg.norm(x)
    y = np.cross(d, x)
    return np.stack([x, y, d])


def view_rotations(n_views: int = 6, layout: str = "top", elevation_deg: float = 45.0) -> list[np.ndarray]:
    """World->view rotations. layout "top": one view from +z then a ring of n-1 views at
    `elevation_deg` (parts scanned from above, as in MVTec-3D); "sphere": n directions spread
    evenly over the whole sphere (a Fibonacci lattice) for free-standing objects."""
    if n_views < 1:
        raise GenadError("views must be >= 1")
    if layout == "top":
        dirs = [np.array([0.0, 0.0, 1.0])]
        el = np.deg2rad(elevation_deg)
        for k in range(n_views - 1):
            az = 2 * np.pi * k / (n_views - 1)
            dirs.append(np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)]))
    elif layout == "sphere":
        i = np.arange(n_views) + 0.5
        z = 1 - 2 * i / n_views
        phi = np.pi * (1 + 5**0.5) * i
        r = np.sqrt(1 - z**2)
        dirs = list(np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1))
    else:
        raise GenadError(f"unknown view layout {layout!r}: use 'top' or 'sphere'")
    return [_look_at(d) for d in dirs]


def point_spacing(points: np.ndarray, sample: int = 2000, seed: int = 0, k: int = 4) -> float:
    """Median distance to the k-th nearest neighbour (on a subsample, for speed): the gap a
    splat must bridge so that randomly sampled surfaces render without pin-holes."""
    n = len(points)
    if n < 2:
        return 1.0
    rng = np.random.default_rng(seed)
    idx = rng.choice(n, min(sample, n), replace=False)
    tree = cKDTree(points)
    d, _ = tree.query(points[idx], k=min(k, n - 1) + 1)
    return float(np.median(d[:, -1]))


def render_view(
    points: np.ndarray,
    rotation: np.ndarray,
    size: int = 224,
    spacing: float | None = None,
    hole_px: int = 3,
) -> View:
    """Render normalised points (inside the unit sphere) from one direction."""
    n = len(points)
    p = points @ rotation.T
    px = _MARGIN * (size - 1) / 2.0  # pixels per normalised unit
    col = np.clip(
        np.rint((p[:, 0] + 1) / 2 * (size - 1) * _MARGIN + (1 - _MARGIN) * (size - 1) / 2), 0, size - 1
    ).astype(np.int64)
    row = np.clip(
        np.rint((1 - (p[:, 1] + 1) / 2) * (size - 1) * _MARGIN + (1 - _MARGIN) * (size - 1) / 2), 0, size - 1
    ).astype(np.int64)
    z = p[:, 2]
    if spacing is None:
        spacing = point_spacing(points)
    # Splat each point as a square of the point spacing so a front surface has no gaps through
    # which farther points would show; capped to keep the copy count small.
    r = int(np.clip(np.ceil(spacing * px / 2), 0, 4))
    while r > 0 and (2 * r + 1) ** 2 * n > _MAX_SPLATS:  # bound memory on huge sparse clouds
        r -= 1
    offs = np.arange(-r, r + 1)
    grid_r, grid_c = np.meshgrid(offs, offs, indexing="ij")
    dr, dc = grid_r.ravel(), grid_c.ravel()
    rr = row[:, None] + dr[None, :]
    cc = col[:, None] + dc[None, :]
    pid = np.broadcast_to(np.arange(n)[:, None], rr.shape)
    # the point's own pixel wins ties at equal depth over its neighbours' splats
    centre_bias = np.broadcast_to((np.abs(dr) + np.abs(dc))[None, :] * 1e-9, rr.shape)
    ok = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
    key = (rr * size + cc)[ok]
    zz = (-z[:, None] + centre_bias)[ok]  # smaller = nearer the camera
    pid = pid[ok]
    order = np.lexsort((zz, key))
    key_sorted = key[order]
    first = np.flatnonzero(np.r_[True, key_sorted[1:] != key_sorted[:-1]])
    win_pix = key_sorted[first]
    win_pt = pid[order][first]
    flat_index = np.full(size * size, -1, dtype=np.int64)
    flat_index[win_pix] = win_pt
    index_map = flat_index.reshape(size, size)

    valid = index_map >= 0
    # Screen-space occlusion: where the front surface is sparse, a farther surface shows
    # through the gaps; a pixel much deeper than the nearest surface around it is such a leak.
    zflat = np.full(size * size, -np.inf)
    zflat[win_pix] = z[win_pt]
    zimg = zflat.reshape(size, size)
    half = 2 * r + 2  # random gaps in a sparse front reach about twice the splat radius
    local_front = ndimage.maximum_filter(zimg, size=2 * half + 1, mode="constant", cval=-np.inf)
    tol = 2.5 * half / px + 3 * spacing  # what a surface tilted ~70 degrees spans in the window
    leak = valid & (zimg < local_front - tol)
    index_map[leak] = -1
    valid &= ~leak
    if valid.any() and (hole_px > 0 or leak.any()):
        # leaks always take the surrounding front surface; other gaps are closed up to hole_px
        # wide, so that real holes (larger) stay open
        square = np.ones((3, 3), dtype=bool)
        closed = valid | leak
        if hole_px > 0:
            closed |= ndimage.binary_closing(valid, square, iterations=max(hole_px, r + 1), border_value=0)
        _, (ir, ic) = ndimage.distance_transform_edt(~valid, return_indices=True)
        fill = closed & ~valid
        index_map[fill] = index_map[ir[fill], ic[fill]]
        valid = closed
    depth = np.full((size, size), np.nan, dtype=np.float32)
    depth[valid] = z[index_map[valid]]

    point_pixel = row * size + col
    eps = max(1.5 * spacing, 2.0 * (r + 1) / px)  # a splat is flat: its neighbours differ by up to ~r px of slope
    front = np.where(np.isfinite(depth), depth, -np.inf).reshape(-1)
    visible = z >= front[point_pixel] - eps
    image = shade(depth, px, smooth=max(1.0, float(r)))
    return View(image, depth, index_map, point_pixel, visible, rotation)


def shade(depth: np.ndarray, px_per_unit: float, smooth: float = 1.0) -> np.ndarray:
    """Grey image: Lambert shading from depth-image normals mixed with the depth itself
    (near = bright), background black. Depth is in fixed normalised units so that a bump does
    not change the brightness of the whole view."""
    valid = np.isfinite(depth)
    out = np.zeros(depth.shape + (3,), dtype=np.uint8)
    if not valid.any():
        return out
    # fill the background with the nearest surface so gradients at silhouettes stay finite
    _, (ir, ic) = ndimage.distance_transform_edt(~valid, return_indices=True)
    d = depth[ir, ic].astype(np.float64)
    if smooth > 0:  # sensor noise and flat splats would otherwise speckle the normals
        d = ndimage.gaussian_filter(d, smooth)
    gy, gx = np.gradient(d * px_per_unit)  # slope in normalised units per normalised unit
    nrm = np.stack([-gx, gy, np.ones_like(d)], axis=-1)  # image rows grow downward, y up
    nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True)
    lambert = np.clip(nrm @ _LIGHT, 0.0, 1.0)
    height = np.clip((d + 1.0) / 2.0, 0.0, 1.0)
    grey = 255.0 * (0.15 + 0.85 * (0.7 * lambert + 0.3 * height))
    g = np.clip(grey, 0, 255).astype(np.uint8)
    out[valid] = g[valid][:, None]
    return out


def render_views(
    points: np.ndarray,
    n_views: int = 6,
    size: int = 224,
    layout: str = "top",
    hole_px: int = 3,
    elevation_deg: float = 45.0,
) -> list[View]:
    """Normalise a cloud and render it from `n_views` directions."""
    pts, _, _ = normalise(points)
    spacing = point_spacing(pts)
    return [
        render_view(pts, rot, size=size, spacing=spacing, hole_px=hole_px)
        for rot in view_rotations(n_views, layout, elevation_deg)
    ]


def project_to_points(
    views: list[View],
    maps: list[np.ndarray | None],
    points: np.ndarray,
    reduce: str = "mean",
) -> np.ndarray:
    """Per-view anomaly maps (SxS, None for a view that failed) -> one float32 score per point.
    A point takes the mean (or max) over the views where it is visible; a point hidden in every
    view takes the value of its nearest visible neighbour."""
    if reduce not in ("mean", "max"):
        raise GenadError(f"unknown reduce {reduce!r}: use 'mean' or 'max'")
    n = len(points)
    total = np.zeros(n)
    count = np.zeros(n)
    best = np.full(n, -np.inf)
    for view, amap in zip(views, maps):
        if amap is None:
            continue
        size = view.index_map.shape[0]
        amap = np.asarray(amap, dtype=np.float64)
        if amap.shape != (size, size):
            amap = _resize(amap, size)
        vals = amap.reshape(-1)[view.point_pixel]
        vis = view.visible & np.isfinite(vals)
        total[vis] += vals[vis]
        count[vis] += 1
        best[vis] = np.maximum(best[vis], vals[vis])
    seen = count > 0
    if not seen.any():
        raise GenadError("no point was visible in any view with a score")
    out = np.where(seen, total / np.maximum(count, 1), 0.0) if reduce == "mean" else np.where(seen, best, 0.0)
    if not seen.all():
        tree = cKDTree(points[seen])
        _, nn = tree.query(points[~seen], k=1)
        out[~seen] = out[seen][nn]
    return out.astype(np.float32)


def _resize(a: np.ndarray, size: int) -> np.ndarray:
    zoom = (size / a.shape[0], size / a.shape[1])
    return ndimage.zoom(a, zoom, order=1)[:size, :size]


def colorize_points(
    views: list[View], point_values: np.ndarray, vmin: float | None = None, vmax: float | None = None
) -> list[np.ndarray]:
    """Views with per-point values painted on them (jet-like colours over the shading), for
    reports: shows where on the shape the anomaly is."""
    v = np.asarray(point_values, dtype=np.float64)
    lo = float(np.min(v)) if vmin is None else vmin
    hi = float(np.max(v)) if vmax is None else vmax
    t = np.clip((v - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    # jet-like: blue -> cyan -> yellow -> red
    rgb = np.stack(
        [
            np.clip(1.5 - np.abs(4 * t - 3), 0, 1),
            np.clip(1.5 - np.abs(4 * t - 2), 0, 1),
            np.clip(1.5 - np.abs(4 * t - 1), 0, 1),
        ],
        axis=1,
    )
    out = []
    for view in views:
        img = view.image.astype(np.float64)
        valid = view.index_map >= 0
        col = rgb[view.index_map[valid]] * 255.0
        img[valid] = 0.45 * img[valid] + 0.55 * col
        out.append(img.clip(0, 255).astype(np.uint8))
    return out
