"""Reading images and masks of any mode into one canonical form.

Images become uint8 RGB HxWx3 whatever they were on disk (grey, palette, RGBA, 16-bit), with
EXIF orientation applied, so every engine sees the picture a person sees. Masks become bool HxW
(pixel > 127), the convention of MVTec-AD and its relatives.

Every failure to read a file is a GenadError whose message names the file, in one line: a
missing or empty file, one that is not an image whatever its name says, a truncated one, and
one with more pixels than `max_pixels()` (genad's own limit, GENAD_MAX_PIXELS, default
DEFAULT_MAX_PIXELS), which is checked from the file's header before anything is decoded, so a
20000x20000 PNG of a few hundred KB costs nothing and fails alone. Pillow's own guard
(Image.MAX_IMAGE_PIXELS: a warning above it, an error above twice it) is thereby redundant:
its warning is silenced, and its error reads as genad's.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from genad.errors import GenadError
from genad.types import set_reader

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}

#: the most pixels (width x height) of an image read from a file, unless GENAD_MAX_PIXELS says
#: otherwise: 100 megapixels (10000 x 10000; decoded as RGB that is 300 MB)
DEFAULT_MAX_PIXELS = 100_000_000

# genad checks the pixel count itself (max_pixels), before decoding: Pillow's warning about
# large images would only repeat it on stderr.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def max_pixels() -> int:
    """The largest image genad reads from a file, in pixels: GENAD_MAX_PIXELS (a number such as
    250000000 or 250e6) when set, else DEFAULT_MAX_PIXELS."""
    raw = os.environ.get("GENAD_MAX_PIXELS", "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw))
    except ValueError as e:
        raise GenadError(f"GENAD_MAX_PIXELS must be a number of pixels such as 250000000, not {raw!r}") from e
    if value <= 0:
        raise GenadError(f"GENAD_MAX_PIXELS must be positive, not {raw!r}")
    return value


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _too_large(path: Path, pixels: int, size: tuple[int, int] | None = None) -> GenadError:
    shown = f"{size[0]}x{size[1]} pixels" if size else f"{pixels} pixels"
    return GenadError(
        f"cannot read image {path}: it is {shown} ({pixels / 1e6:.0f} megapixels), over genad's limit of "
        f"{max_pixels() / 1e6:g} megapixels: downscale it, or raise GENAD_MAX_PIXELS"
    )


def _reason(path: Path, e: BaseException) -> GenadError:
    """Any error of Pillow's while reading `path` as a one-line GenadError."""
    if isinstance(e, Image.DecompressionBombError):
        found = re.search(r"\((\d+) pixels\)", str(e))
        return _too_large(path, int(found.group(1)) if found else 0)
    if isinstance(e, Image.UnidentifiedImageError):
        return GenadError(
            f"cannot read image {path}: its content is not an image format genad reads "
            f"(PNG, JPEG, BMP, TIFF, WebP), whatever its name says"
        )
    if isinstance(e, MemoryError):
        return GenadError(f"cannot read image {path}: not enough memory to decode it")
    msg = " ".join(str(e).split()) or type(e).__name__
    return GenadError(f"cannot read image {path}: {msg} (is the file complete and an image?)")


def _check_file(path: Path) -> None:
    """One line for a file that is missing, a folder or empty; and Pillow's own pixel guard set
    no lower than genad's limit, which is checked instead (a process-wide setting of Pillow's)."""
    limit = max_pixels()
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit
    if not path.exists():
        raise GenadError(f"no such file: {path}")
    if path.is_dir():
        raise GenadError(f"{path} is a folder, not an image")
    try:
        empty = path.stat().st_size == 0
    except OSError as e:
        raise GenadError(f"cannot read image {path}: {e.strerror or e}") from e
    if empty:
        raise GenadError(f"cannot read image {path}: the file is empty (0 bytes)")


def _open(path: Path) -> Image.Image:
    """The image at `path`, decoded, after its size was checked against max_pixels()."""
    path = Path(path)
    _check_file(path)
    try:
        im = Image.open(path)
    except Exception as e:  # Pillow's plugins raise many kinds for a bad file: all are that file's fault
        raise _reason(path, e) from e
    try:
        w, h = im.size
        if w * h > max_pixels():
            raise _too_large(path, w * h, (w, h))
        im.load()  # decode now so that a truncated file fails here, not later
    except GenadError:
        im.close()
        raise
    except Exception as e:
        im.close()
        raise _reason(path, e) from e
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
    path = Path(path)
    im = _open(path)
    try:
        return to_rgb_array(im)
    except Exception as e:  # a mode or an EXIF block Pillow cannot convert
        raise _reason(path, e) from e
    finally:
        im.close()


def read_mask(path: str | Path) -> np.ndarray:
    """Read a ground-truth mask as bool HxW (anomalous where the grey value > 127)."""
    path = Path(path)
    im = _open(path)
    try:
        im = ImageOps.exif_transpose(im) or im
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            a = np.asarray(im, dtype=np.float64)
            return a > (127 if a.max(initial=0) <= 255 else 32767)
        return np.asarray(im.convert("L"), dtype=np.uint8) > 127
    except Exception as e:
        raise _reason(path, e) from e
    finally:
        im.close()


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) after EXIF orientation, read from the header without decoding the
    pixels. Raises GenadError for a file that cannot be read, or one over max_pixels()."""
    path = Path(path)
    _check_file(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except Exception as e:
        raise _reason(path, e) from e
    if w * h > max_pixels():
        raise _too_large(path, w * h, (w, h))
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


# Samples made with only a path read their pixels through these (genad.types has no I/O).
set_reader("image", read_image)
set_reader("image_size", image_size)
set_reader("mask", read_mask)
set_reader("pil", to_rgb_array)
