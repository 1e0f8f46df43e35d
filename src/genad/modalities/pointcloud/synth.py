"""Generated point-cloud "parts" with injected defects whose point labels are known.

No public point-cloud anomaly benchmark ships with genad, so tests and benchmarks/pointcloud.py
use these: a plane, wavy surface, sphere or cylinder sampled uniformly by area, each sample
slightly different (scale, tilt, noise), with one defect pushed along the surface normal:
dent, bump, crack (a narrow groove) or hole (points removed; the rim is labelled).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from genad.errors import GenadError
from genad.types import GroundTruth, PointCloudSample

SHAPES = ("plane", "wavy", "sphere", "cylinder")
DEFECTS = ("dent", "bump", "crack", "hole")

Surface = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]


def _plane(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    uv = rng.uniform(-1, 1, (n, 2))
    p = np.column_stack([uv, np.zeros(n)])
    nrm = np.tile([0.0, 0.0, 1.0], (n, 1))
    return p, nrm


def _wavy(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    u, v = rng.uniform(-1, 1, (2, n))
    a = 0.08
    z = a * np.sin(3 * u) * np.cos(2 * v)
    dzdu, dzdv = 3 * a * np.cos(3 * u) * np.cos(2 * v), -2 * a * np.sin(3 * u) * np.sin(2 * v)
    nrm = np.column_stack([-dzdu, -dzdv, np.ones(n)])
    return np.column_stack([u, v, z]), nrm / np.linalg.norm(nrm, axis=1, keepdims=True)


def _sphere(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return 0.8 * d, d


def _cylinder(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.uniform(-1, 1, n)
    th = rng.uniform(0, 2 * np.pi, n)
    nrm = np.column_stack([np.zeros(n), np.cos(th), np.sin(th)])
    return np.column_stack([x, 0.5 * nrm[:, 1], 0.5 * nrm[:, 2]]), nrm


_SURFACES: dict[str, Surface] = {"plane": _plane, "wavy": _wavy, "sphere": _sphere, "cylinder": _cylinder}


def _defect_centre(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A point on the part's upper side (the side the 'top' views see), away from borders."""
    if kind in ("plane", "wavy"):
        c = np.r_[rng.uniform(-0.6, 0.6, 2), 0.0]
        if kind == "wavy":
            c[2] = 0.08 * np.sin(3 * c[0]) * np.cos(2 * c[1])
        return c
    if kind == "sphere":
        d = rng.normal(size=3)
        d[2] = abs(d[2]) + 0.8
        return 0.8 * d / np.linalg.norm(d)
    th = rng.uniform(np.pi / 4, 3 * np.pi / 4)  # cylinder: upper half
    return np.array([rng.uniform(-0.6, 0.6), 0.5 * np.cos(th), 0.5 * np.sin(th)])


def make_shape(
    kind: str = "plane",
    defect: str | None = None,
    n_points: int = 8000,
    seed: int | None = 0,
    noise: float = 0.002,
    size: float = 0.15,
    depth: float = 0.06,
    sample_id: str | None = None,
) -> PointCloudSample:
    """One generated part. `defect` None gives a normal part. `size` is the defect's radius
    (crack: half-width is size/4, length 4*size) and `depth` its displacement along the normal,
    both in the part's units (the part spans about 2). Point labels are in truth.point_labels."""
    if kind not in _SURFACES:
        raise GenadError(f"unknown shape {kind!r}: use one of {', '.join(SHAPES)}")
    if defect is not None and defect not in DEFECTS:
        raise GenadError(f"unknown defect {defect!r}: use one of {', '.join(DEFECTS)}")
    rng = np.random.default_rng(seed)
    extra = int(n_points * 0.1) if defect == "hole" else 0  # keep the count after removal similar
    p, nrm = _SURFACES[kind](rng, n_points + extra)
    labels = np.zeros(len(p), dtype=bool)
    if defect is not None:
        c = _defect_centre(kind, rng)
        if defect in ("dent", "bump"):
            d2 = ((p - c) ** 2).sum(axis=1)
            sigma = size / 2.0
            bump = np.exp(-d2 / (2 * sigma**2)) * depth * (1 if defect == "bump" else -1)
            p = p + nrm * bump[:, None]
            labels = d2 < (2 * sigma) ** 2
        elif defect == "crack":
            ang = rng.uniform(0, np.pi)
            t = np.array([np.cos(ang), np.sin(ang), 0.0])
            if kind == "cylinder":
                t = np.array([np.cos(ang), 0.0, 0.0]) + np.cross([1.0, 0, 0], c) * np.sin(ang) / 0.5
                t /= np.linalg.norm(t)
            half_len, half_w = 2 * size, size / 4
            rel = p - c
            along = np.clip(rel @ t, -half_len, half_len)
            dist = np.linalg.norm(rel - along[:, None] * t[None, :], axis=1)
            groove = np.clip(1 - dist / half_w, 0, 1) * depth
            p = p - nrm * groove[:, None]
            labels = dist < half_w * 1.5
        else:  # hole: remove points; the rim is what an inspector (and a detector) can see
            dist = np.linalg.norm(p - c, axis=1)
            keep = dist > size
            labels = dist < size * 1.5
            p, nrm, labels = p[keep], nrm[keep], labels[keep]
    # per-part variation: noise, scale and a small tilt, as between scans of real parts
    p = p + rng.normal(scale=noise, size=p.shape)
    p = p * rng.uniform(0.98, 1.02)
    a = np.deg2rad(rng.uniform(-2, 2, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(a[0]), -np.sin(a[0])], [0, np.sin(a[0]), np.cos(a[0])]])
    ry = np.array([[np.cos(a[1]), 0, np.sin(a[1])], [0, 1, 0], [-np.sin(a[1]), 0, np.cos(a[1])]])
    rz = np.array([[np.cos(a[2]), -np.sin(a[2]), 0], [np.sin(a[2]), np.cos(a[2]), 0], [0, 0, 1]])
    p = p @ (rz @ ry @ rx).T
    name = sample_id or f"{kind}_{defect or 'good'}_{seed}"
    truth = GroundTruth(label=int(defect is not None), defect_type=defect or "good", point_labels=labels)
    return PointCloudSample(id=name, class_name=kind, points=p, truth=truth, meta={"synthetic": True})


def make_dataset(
    kind: str = "plane",
    n_train: int = 4,
    n_normal: int = 20,
    n_defective: int = 20,
    n_points: int = 8000,
    seed: int = 0,
    defects: tuple[str, ...] = DEFECTS,
    **shape_kw: Any,
) -> tuple[list[PointCloudSample], list[PointCloudSample]]:
    """(normal references, test set): the test set has n_normal good parts and n_defective
    parts cycling through `defects`. Every part has its own seed, so the sets are reproducible."""
    train = [make_shape(kind, None, n_points, seed=seed * 10_000 + i, **shape_kw) for i in range(n_train)]
    test = [make_shape(kind, None, n_points, seed=seed * 10_000 + 1000 + i, **shape_kw) for i in range(n_normal)]
    test += [
        make_shape(kind, defects[i % len(defects)], n_points, seed=seed * 10_000 + 2000 + i, **shape_kw)
        for i in range(n_defective)
    ]
    return train, test
