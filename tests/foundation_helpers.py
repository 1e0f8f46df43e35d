"""Generated data with known answers for the foundation tests (io, evaluate, CLI, baseline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (48, 64)  # H, W

# what every `genad eval` summary holds
SUMMARY_KEYS = {
    "image_auroc",
    "image_ap",
    "image_f1_max",
    "image_f1_threshold_normalized",
    "decision",
    "pixel_auroc",
    "pixel_ap",
    "aupro",
    "n_images",
    "n_failed",
    "seconds",
    "images_per_second",
    "peak_rss_mb",
    "detector",
    "params",
    "shots",
    "seed",
    "limit",
    "data_dir",
    "per_type",
    "usage",
}


def normal_image(rng: np.random.Generator, size: tuple[int, int] = SIZE) -> np.ndarray:
    """A grey gradient with mild noise: every normal image looks alike."""
    h, w = size
    base = np.linspace(80, 160, w)[None, :].repeat(h, 0)
    img = base + rng.normal(0, 4, size)
    return np.clip(img, 0, 255).astype(np.uint8)[:, :, None].repeat(3, 2)


def defect_image(rng: np.random.Generator, size: tuple[int, int] = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A normal image with a bright square at a random place, and its mask."""
    img = normal_image(rng, size)
    h, w = size
    y, x = int(rng.integers(4, h - 16)), int(rng.integers(4, w - 16))
    img[y : y + 10, x : x + 10] = (250, 40, 40)
    mask = np.zeros(size, bool)
    mask[y : y + 10, x : x + 10] = True
    return img, mask


def make_mvtec(
    root: Path,
    n_train: int = 6,
    n_good: int = 6,
    defects: dict[str, int] | None = None,
    seed: int = 0,
    with_train: bool = True,
    with_masks: bool = True,
    mask_suffix: str = "_mask",
) -> Path:
    """An MVTec-style folder: train/good, test/good, test/<defect>, ground_truth/<defect>."""
    rng = np.random.default_rng(seed)
    defects = {"scratch": 4, "stain": 3} if defects is None else defects
    if with_train:
        (root / "train" / "good").mkdir(parents=True)
        for i in range(n_train):
            Image.fromarray(normal_image(rng)).save(root / "train" / "good" / f"{i:03d}.png")
    (root / "test" / "good").mkdir(parents=True)
    for i in range(n_good):
        Image.fromarray(normal_image(rng)).save(root / "test" / "good" / f"{i:03d}.png")
    for name, n in defects.items():
        (root / "test" / name).mkdir(parents=True)
        if with_masks:
            (root / "ground_truth" / name).mkdir(parents=True)
        for i in range(n):
            img, mask = defect_image(rng)
            Image.fromarray(img).save(root / "test" / name / f"{i:03d}.png")
            if with_masks:
                Image.fromarray(mask.astype(np.uint8) * 255).save(
                    root / "ground_truth" / name / f"{i:03d}{mask_suffix}.png"
                )
    return root


def truncate(path: Path, keep: int = 200) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    return path


def run_cli(args, capsys) -> tuple[int, str, str]:
    """Run `genad ARGS...` in this process: (exit code, stdout, stderr)."""
    from genad.cli.main import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err
