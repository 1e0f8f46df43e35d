"""Reading images and masks of any mode into one canonical form.

Images become uint8 RGB HxWx3 whatever they were on disk (grey, palette, RGBA, 16-bit), with
EXIF orientation applied, so every engine sees the picture a person sees. Masks become bool HxW
(pixel > 127), the convention of MVTec-AD and its relatives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from genad.errors import GenadError
from genad.types import set_reader

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _open(path: Path) -> Image.Image:
    path = Path(path)
    if not path.exists():
        raise GenadError(f"no such file: {path}")
    if path.is_dir():
        raise GenadError(f"{path} is a folder, not an image")
    try:
        im = Image.open(path)
        im.load()  # decode now so that a truncated file fails here, not later
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise GenadError(f"cannot read image {path}: {e} (is the file complete and an image?)") from e
    return im


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """PIL image of any mode -> uint8 RGB HxWx3, orientation applied."""
    im = ImageOps.exif_transpose(im) or im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit grey: stretch the used range to 8 bits rather than clipping.
        a = np.asarray(im, dtype=np.float64)
        lo, hi = np.percentile(a, [0.0, 100.0]) if a.size else (0.0, 1.0)
        a = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo) * 255.0
        a = np.clip(a + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Composite on white: transparent background should not read as a dark defect.
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 RGB HxWx3. Raises GenadError with a clear message."""
    return to_rgb_array(_open(Path(path)))


def read_mask(path: str | Path) -> np.ndarray:
    """Read a ground-truth mask as bool HxW (anomalous where the grey value > 127)."""
    im = _open(Path(path))
    im = ImageOps.exif_transpose(im) or im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        return a > (127 if a.max(initial=0) <= 255 else 32767)
    return np.asarray(im.convert("L"), dtype=np.uint8) > 127


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) after EXIF orientation, without decoding the pixels."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except (UnidentifiedImageError, OSError) as e:
        raise GenadError(f"cannot read image {path}: {e}") from e
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


# Samples made with only a path read their pixels through these (genad.types has no I/O).
set_reader("image", read_image)
set_reader("image_size", image_size)
set_reader("mask", read_mask)
set_reader("pil", to_rgb_array)
