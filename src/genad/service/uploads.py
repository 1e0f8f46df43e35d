"""Checking uploads: the content decides whether a file is an image (never its name), sizes
are capped, and a client's file name is only ever kept as display text, never used as a path."""

from __future__ import annotations

import io
import re
import struct
from pathlib import PurePosixPath, PureWindowsPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from genad.errors import GenadError
from genad.io.images import to_rgb_array

#: formats Pillow identifies from the bytes that the service accepts
ACCEPTED_FORMATS = {"PNG", "JPEG", "MPO", "BMP", "TIFF", "WEBP", "GIF"}


class PayloadTooLarge(GenadError):
    """HTTP 413."""


class UnsupportedMedia(GenadError):
    """HTTP 415."""


def display_name(name: str | None, limit: int = 120) -> str | None:
    """The last component of a client's file name, stripped of control characters, for
    showing in the history only. `../../etc/passwd` becomes `passwd`."""
    if not name:
        return None
    base = PureWindowsPath(PurePosixPath(name).name).name  # both separators
    base = re.sub(r"[\x00-\x1f\x7f]", "", base).strip()
    if base in ("", ".", ".."):
        return None
    return base[:limit]


def decode_image(data: bytes, label: str, max_pixels: int) -> np.ndarray:
    """Bytes -> uint8 RGB HxWx3, or PayloadTooLarge / UnsupportedMedia with a one-line reason."""
    if not data:
        raise UnsupportedMedia(f"{label} is empty: upload an image file (PNG, JPEG, BMP, TIFF, WebP)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            w, h = im.size
            if fmt in ACCEPTED_FORMATS and w * h <= max_pixels:
                im.verify()  # checksums and structure, before spending time on decoding
    except Image.DecompressionBombError as e:
        raise PayloadTooLarge(f"{label} has too many pixels: {e}") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error) as e:
        raise UnsupportedMedia(
            f"{label} is not a readable image (its content, not its name, is checked): upload "
            f"PNG, JPEG, BMP, TIFF or WebP ({type(e).__name__})"
        ) from e
    if fmt not in ACCEPTED_FORMATS:
        raise UnsupportedMedia(
            f"{label} is a {fmt} image, which the service does not accept: upload PNG, JPEG, BMP, TIFF or WebP"
        )
    if w * h > max_pixels:
        raise PayloadTooLarge(
            f"{label} is {w}x{h} pixels, over the limit of {max_pixels / 1e6:.0f} megapixels: downscale it first"
        )
    try:
        with Image.open(io.BytesIO(data)) as im:  # verify() leaves the image unusable: reopen
            im.load()
            return to_rgb_array(im)
    except (OSError, SyntaxError, ValueError, struct.error) as e:
        raise UnsupportedMedia(f"{label} could not be decoded ({type(e).__name__}: {e})") from e
