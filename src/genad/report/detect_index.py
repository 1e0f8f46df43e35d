"""index.html for `genad detect --out`: one self-contained page (thumbnails inlined) listing
every input with its score, decision, regions and explanation, most anomalous first. The
markup is templates/detect_index.html.j2 (autoescaped: ids, explanations and labels are text)."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from genad.report.html import render
from genad.types import Result

THUMB_SIDE = 224


def thumbnail_data_url(image: np.ndarray, side: int = THUMB_SIDE) -> str:
    """A small JPEG of `image` (uint8 HxWx3) as a data: URL, so the page needs no other file."""
    im = Image.fromarray(np.ascontiguousarray(image))
    im.thumbnail((side, side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass
class IndexRow:
    """One line of the page. `thumb` is a data URL (or None); `link` a relative file path."""

    result: Result
    thumb: str | None = None
    link: str | None = None
    truth: str | None = None


def _fmt(v: float | None, digits: int = 4) -> str:
    return "" if v is None else f"{v:.{digits}g}"


def _order(rows: Sequence[IndexRow]) -> list[IndexRow]:
    # Most anomalous first; failures last, so the page opens on what matters.
    return sorted(rows, key=lambda row: (row.result.score is None, -(row.result.score or 0.0)))


def render_detect_index(rows: Sequence[IndexRow], title: str = "genad detect", meta: str | None = None) -> str:
    n_bad = sum(1 for r in rows if r.result.decision)
    n_err = sum(1 for r in rows if r.result.error)
    summary = f"{len(rows)} inputs, {n_bad} anomalous" + (f", {n_err} failed" if n_err else "")
    return render("detect_index.html.j2", title=title, summary=summary, meta=meta, rows=_order(rows), fmt=_fmt)


def write_detect_index(
    out_dir: Path, rows: Sequence[IndexRow], title: str = "genad detect", meta: str | None = None
) -> Path:
    """Write out_dir/index.html and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    path.write_text(render_detect_index(rows, title, meta), encoding="utf-8")
    return path
