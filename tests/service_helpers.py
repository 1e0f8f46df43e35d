"""Generated images and folders for the service tests: a noisy grey texture, with a known dark
square as the defect, so the right answer is known without any real data."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 96
DEFECT = (36, 36, 60, 60)  # x0, y0, x1, y1 of the dark square


def texture(seed: int, defect: bool = False, size: int = SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = 128 + rng.normal(0, 8, (size, size, 3))
    if defect:
        x0, y0, x1, y1 = DEFECT
        a[y0:y1, x0:x1] = 25
    return a.clip(0, 255).astype(np.uint8)


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_mvtec(root: Path, n_train: int = 4, n_good: int = 3, n_bad: int = 3) -> Path:
    """A tiny MVTec-style category: train/good, test/good, test/hole with masks."""
    (root / "train" / "good").mkdir(parents=True)
    (root / "test" / "good").mkdir(parents=True)
    (root / "test" / "hole").mkdir(parents=True)
    (root / "ground_truth" / "hole").mkdir(parents=True)
    for i in range(n_train):
        Image.fromarray(texture(100 + i)).save(root / "train" / "good" / f"{i:03d}.png")
    for i in range(n_good):
        Image.fromarray(texture(200 + i)).save(root / "test" / "good" / f"{i:03d}.png")
    mask = np.zeros((SIZE, SIZE), np.uint8)
    x0, y0, x1, y1 = DEFECT
    mask[y0:y1, x0:x1] = 255
    for i in range(n_bad):
        Image.fromarray(texture(300 + i, defect=True)).save(root / "test" / "hole" / f"{i:03d}.png")
        Image.fromarray(mask).save(root / "ground_truth" / "hole" / f"{i:03d}_mask.png")
    return root
