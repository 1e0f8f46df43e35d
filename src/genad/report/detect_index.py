"""index.html for `genad detect --out`: one self-contained page (thumbnails inlined) listing
every input with its score, decision, regions and explanation, most anomalous first."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

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


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5rem;color:#222}
h1{font-size:1.4rem;margin:0 0 .3rem}.meta{color:#555;margin-bottom:1rem}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #ddd;padding:.45rem;
text-align:left;vertical-align:top}th{background:#f4f4f4;position:sticky;top:0}
td.num{font-variant-numeric:tabular-nums;white-space:nowrap}img{max-width:224px;border-radius:4px}
.bad{color:#b00020;font-weight:600}.good{color:#1b7f3a}.err{color:#b00020}
.small{font-size:.85rem;color:#444}ul{margin:0;padding-left:1.1rem}
"""


def _fmt(v: float | None, digits: int = 4) -> str:
    return "" if v is None else f"{v:.{digits}g}"


def _decision(r: Result) -> str:
    if r.error:
        return '<span class="err">failed</span>'
    if r.decision is None:
        return "?"
    return '<span class="bad">anomalous</span>' if r.decision else '<span class="good">normal</span>'


def _row(n: int, row: IndexRow) -> str:
    r = row.result
    e = html.escape
    img = ""
    if row.thumb:
        img = f'<img src="{row.thumb}" alt="{e(r.sample_id)}">'
        if row.link:
            img = f'<a href="{e(row.link)}">{img}</a>'
    regions = "".join(
        f"<li>#{reg.index if reg.index is not None else k} score {_fmt(reg.score, 3)}"
        + (f" box {list(reg.box)}" if reg.box else "")
        + (f" {e(reg.label)}" if reg.label else "")
        + (f": {e(reg.explanation)}" if reg.explanation else "")
        + "</li>"
        for k, reg in enumerate(r.regions, start=1)
    )
    ranges = ", ".join(f"[{a}, {b})" for a, b in r.ranges)
    detail = []
    if r.error:
        detail.append(f'<div class="err">{e(r.error)}</div>')
    if r.explanation:
        detail.append(f"<div>{e(r.explanation)}</div>")
    if regions:
        detail.append(f'<ul class="small">{regions}</ul>')
    if ranges:
        detail.append(f'<div class="small">ranges: {e(ranges)}</div>')
    truth = f'<div class="small">truth: {e(row.truth)}</div>' if row.truth else ""
    return (
        f"<tr><td class=num>{n}</td><td>{e(r.sample_id)}{truth}</td><td>{img}</td>"
        f"<td class=num>{_fmt(r.score)}</td><td class=num>{_fmt(r.threshold)}</td>"
        f"<td>{_decision(r)}</td><td>{''.join(detail)}</td></tr>"
    )


def _order(rows: Sequence[IndexRow]) -> list[IndexRow]:
    # Most anomalous first; failures last, so the page opens on what matters.
    return sorted(rows, key=lambda row: (row.result.score is None, -(row.result.score or 0.0)))


def render_detect_index(rows: Sequence[IndexRow], title: str = "genad detect", meta: str | None = None) -> str:
    ordered = _order(rows)
    n_bad = sum(1 for r in rows if r.result.decision)
    n_err = sum(1 for r in rows if r.result.error)
    summary = f"{len(rows)} inputs, {n_bad} anomalous" + (f", {n_err} failed" if n_err else "")
    body = "\n".join(_row(i, row) for i, row in enumerate(ordered, start=1))
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><div class=meta>{html.escape(summary)}"
        + (f"<br>{html.escape(meta)}" if meta else "")
        + "</div><table><thead><tr><th>#</th><th>input</th><th>overlay</th><th>score</th>"
        "<th>threshold</th><th>decision</th><th>regions and explanation</th></tr></thead><tbody>"
        f"{body}</tbody></table></body></html>\n"
    )


def write_detect_index(out_dir: Path, rows: Sequence[IndexRow], title: str = "genad detect", meta: str | None = None) -> Path:
    """Write out_dir/index.html and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    path.write_text(render_detect_index(rows, title, meta), encoding="utf-8")
    return path
