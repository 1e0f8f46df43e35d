"""The evaluation report: one index.html (plus PNG files beside it) for a benchmark run.

    run = run_benchmark("data/magnetic_tile", "embedded", shots=4, run_dir="runs/mt")
    write_eval_report(Path("runs/mt/report"), run)   # -> runs/mt/report/index.html

It shows the summary figures, ROC / PR curves (image level, and pixel level with a PRO curve
when masks exist), a per-defect-type table, and two galleries: the worst false positives (the
highest-scoring normal images) and the worst false negatives (the lowest-scoring anomalous
images), each as an overlay of its anomaly map with the ground-truth outline in green. The
heat colours share one scale across the galleries so that images can be compared. Every text
is HTML-escaped; values under keys that look secret (api_key, token, ...) are masked.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from scipy import ndimage

from genad.errors import GenadError
from genad.secrets import redact
from genad.types import ImageSample, Result, Sample

IMG_DIR = "img"
_HEADLINE = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "aupro")
_LABELS = {
    "image_auroc": "Image AUROC",
    "image_ap": "Image AP",
    "image_f1_max": "Image F1-max",
    "pixel_auroc": "Pixel AUROC",
    "pixel_ap": "Pixel AP",
    "aupro": "AUPRO (FPR 0.3)",
}


class RunLike(Protocol):
    """What the report reads from genad.evaluate.EvalRun: the summary and the curves the run
    wrote (it computes no figure itself), the samples and results, and their maps."""

    summary: dict[str, Any]
    samples: list[Sample]
    results: list[Result]
    curves: dict[str, Any] | None

    def load_map(self, i: int) -> np.ndarray | None: ...


@dataclass
class _Entry:
    i: int
    sample: Sample
    result: Result
    label: int
    score: float


# -- small helpers ---------------------------------------------------------------------------
def _esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.1f}"
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str)
    return str(v)


def _load_map(run: RunLike, i: int) -> np.ndarray | None:
    """The anomaly map of sample i: kept in the result, else as the run wrote it."""
    r = run.results[i]
    if r.anomaly_map is not None:
        return np.asarray(r.anomaly_map, dtype=np.float32)
    try:
        return run.load_map(i)
    except (OSError, ValueError, KeyError):
        return None


def _mask(sample: Sample, shape: tuple[int, int] | None = None) -> np.ndarray | None:
    """The ground-truth mask (None if unknown); a mask read from disk is not kept in memory."""
    t = sample.truth
    if t is None or (t.mask is None and t.mask_path is None):
        return None
    from_disk = t.mask is None
    try:
        m = t.get_mask()
    except GenadError:
        return None
    if from_disk:
        t.mask = None
    if m is not None and shape is not None and m.shape != tuple(shape):
        return None
    return m


# -- plots -----------------------------------------------------------------------------------
def _figure(title: str, xlabel: str, ylabel: str) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as e:  # matplotlib is the [report] extra
        raise GenadError("the evaluation report needs matplotlib: pip install 'genad[report]'") from e
    fig = Figure(figsize=(4.6, 4.0), dpi=100)  # no pyplot: no global state, safe in a server
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    return fig, ax


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, format="png")
    return f"{IMG_DIR}/{path.name}"


def _curve_plots(img_dir: Path, curves: dict[str, Any] | None, summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(caption, relative png path) for ROC, PR and (with masks) PRO curves, drawn from the
    curves the run wrote (curves.json)."""
    plots: list[tuple[str, str]] = []
    image = (curves or {}).get("image")
    pixel = (curves or {}).get("pixel")
    if image is None and pixel is None:
        return plots

    fig, ax = _figure("ROC", "false positive rate", "true positive rate")
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
    if image is not None:
        ax.plot(image["fpr"], image["tpr"], lw=2, label=f"image (AUROC {_fmt(summary.get('image_auroc'))})")
    if pixel is not None:
        ax.plot(pixel["fpr"], pixel["tpr"], lw=2, label=f"pixel (AUROC {_fmt(summary.get('pixel_auroc'))})")
    ax.legend(loc="lower right")
    plots.append(("ROC curves", _save(fig, img_dir / "roc.png")))

    fig, ax = _figure("Precision-recall", "recall", "precision")
    if image is not None:
        ax.step(image["recall"], image["precision"], where="post", lw=2, label=f"image (AP {_fmt(summary.get('image_ap'))})")
    if pixel is not None:
        ax.plot(pixel["recall"], pixel["precision"], lw=2, label=f"pixel (AP {_fmt(summary.get('pixel_ap'))})")
    ax.legend(loc="lower left")
    plots.append(("Precision-recall curves", _save(fig, img_dir / "pr.png")))

    if pixel is not None:
        fig, ax = _figure("Per-region overlap", "false positive rate (normal pixels)", "PRO")
        ax.plot(pixel["fpr"], pixel["pro"], lw=2, label=f"AUPRO {_fmt(summary.get('aupro'))}")
        ax.axvspan(0, 0.3, color="tab:orange", alpha=0.12, label="integrated (FPR <= 0.3)")
        ax.legend(loc="lower right")
        plots.append(("PRO curve", _save(fig, img_dir / "pro.png")))
    return plots


# -- galleries -------------------------------------------------------------------------------
def _outline(mask: np.ndarray) -> np.ndarray:
    edge = mask & ~ndimage.binary_erosion(mask)
    thick = max(1, round(max(mask.shape) / 200))  # still visible once the image is shrunk
    return ndimage.binary_dilation(edge, iterations=thick) if thick > 1 else edge


def _gallery_image(run: RunLike, e: _Entry, vmin: float | None, vmax: float | None, thumb: int) -> Image.Image | None:
    if not isinstance(e.sample, ImageSample):
        return None
    try:
        img = e.sample.load()
    except GenadError:
        return None
    amap = _load_map(run, e.i)
    if amap is not None and amap.ndim == 2:
        from genad.report.overlay import overlay

        view = overlay(img, amap, alpha=0.45, vmin=vmin, vmax=vmax, regions=e.result.regions or None)
    else:
        view = img.copy()
    mask = _mask(e.sample, img.shape[:2])
    if mask is not None and mask.any():
        view[_outline(mask)] = (0, 255, 0)
    side = np.concatenate([img, np.full((img.shape[0], max(2, img.shape[1] // 50), 3), 255, np.uint8), view], axis=1)
    out = Image.fromarray(side)
    out.thumbnail((thumb * 2, thumb), Image.Resampling.LANCZOS)
    return out


def _shared_scale(run: RunLike, entries: Sequence[_Entry]) -> tuple[float | None, float | None]:
    """One colour scale for all gallery maps: 1st to 99.9th percentile over them."""
    lows, highs = [], []
    for e in entries:
        amap = _load_map(run, e.i)
        if amap is None or amap.size == 0:
            continue
        finite = amap[np.isfinite(amap)]
        if finite.size:
            lo, hi = np.percentile(finite, [1.0, 99.9])
            lows.append(float(lo))
            highs.append(float(hi))
    if not lows:
        return None, None
    return min(lows), max(highs)


def _gallery_html(
    run: RunLike, entries: Sequence[_Entry], img_dir: Path, prefix: str, thumb: int,
    vmin: float | None, vmax: float | None, threshold: float | None,
) -> str:
    if not entries:
        return '<p class="muted">none</p>'
    cards = []
    for rank, e in enumerate(entries, start=1):
        im = _gallery_image(run, e, vmin, vmax, thumb)
        pic = ""
        if im is not None:
            name = f"{prefix}_{rank:02d}.png"
            im.save(img_dir / name)
            pic = f'<img src="{IMG_DIR}/{name}" alt="{_esc(e.sample.id)}" loading="lazy">'
        defect = e.sample.truth.defect_type if e.sample.truth and e.sample.truth.defect_type else ("good" if e.label == 0 else "anomalous")
        called = "" if threshold is None else (" · called anomalous" if e.score >= threshold else " · called normal")
        why = ""
        if e.result.explanation:
            text = e.result.explanation if len(e.result.explanation) <= 400 else e.result.explanation[:400] + "…"
            why = f'<div class="why">{_esc(text)}</div>'
        cards.append(
            f'<figure>{pic}<figcaption><b>#{rank}</b> <code>{_esc(e.sample.id)}</code><br>'
            f"{_esc(defect)} · score {_esc(_fmt(e.score))}{_esc(called)}{why}</figcaption></figure>"
        )
    return '<div class="gallery">' + "".join(cards) + "</div>"


# -- tables ----------------------------------------------------------------------------------
def _per_type(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    given = summary.get("per_type")
    if not isinstance(given, dict):
        return {}
    return {str(k): (v if isinstance(v, dict) else {"value": v}) for k, v in given.items()}


def _table(rows: dict[str, dict[str, Any]], first: str) -> str:
    cols: list[str] = []
    for row in rows.values():
        cols.extend(c for c in row if c not in cols)
    head = "".join(f"<th>{_esc(c)}</th>" for c in [first, *cols])
    body = "".join(
        "<tr>" + f"<td>{_esc(name)}</td>" + "".join(f"<td>{_esc(_fmt(row.get(c)))}</td>" for c in cols) + "</tr>"
        for name, row in rows.items()
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:1.5em} h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:4px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #ddd;border-radius:8px;padding:10px 16px;min-width:130px}
.card .v{font-size:1.6em;font-weight:600} .card .k{color:#666;font-size:.85em}
table{border-collapse:collapse;font-size:.9em;margin:8px 0} td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}
th{background:#f5f5f5} .plots{display:flex;flex-wrap:wrap;gap:12px}
.gallery{display:flex;flex-wrap:wrap;gap:14px} figure{margin:0;max-width:520px}
figure img{max-width:100%;border:1px solid #ccc} figcaption{font-size:.85em;margin-top:4px}
.why{color:#555;margin-top:2px} .muted{color:#888} code{font-size:.95em;word-break:break-all}
"""


# -- the report ------------------------------------------------------------------------------
def write_eval_report(out_dir: Path, run: RunLike, gallery_size: int = 8, thumb_px: int = 256) -> Path:
    """Write out_dir/index.html (and its PNGs under out_dir/img/) for an EvalRun; returns the
    path of index.html. Images and maps are read one at a time, so memory stays small."""
    if gallery_size < 0:
        raise GenadError(f"gallery_size must be 0 or more, got {gallery_size}")
    out_dir = Path(out_dir)
    img_dir = out_dir / IMG_DIR
    try:
        img_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GenadError(f"cannot create the report folder {out_dir}: {e}") from e
    # A rewritten report must not show stale pictures; only our own file names are removed.
    for old in img_dir.glob("*.png"):
        if re.fullmatch(r"(roc|pr|pro|f[pn]_\d+)\.png", old.name):
            old.unlink()
    summary = redact(dict(run.summary))

    entries = [
        _Entry(i, s, r, int(s.label), float(r.score))  # type: ignore[arg-type]
        for i, (s, r) in enumerate(zip(run.samples, run.results))
        if r.ok and s.label is not None and math.isfinite(float(r.score))  # type: ignore[arg-type]
    ]
    labels = np.array([e.label for e in entries], dtype=np.int64)

    plots = _curve_plots(img_dir, getattr(run, "curves", None), summary)

    threshold = summary.get("image_f1_threshold")
    threshold = float(threshold) if isinstance(threshold, (int, float)) else None
    fps = sorted((e for e in entries if e.label == 0), key=lambda e: (-e.score, e.i))[:gallery_size]
    fns = sorted((e for e in entries if e.label == 1), key=lambda e: (e.score, e.i))[:gallery_size]
    vmin, vmax = _shared_scale(run, [*fps, *fns])

    title = f"genad evaluation: {summary.get('detector', 'detector')} on {summary.get('data_dir', 'data')}"
    cards = "".join(
        f'<div class="card"><div class="v">{_esc(_fmt(summary.get(k)))}</div><div class="k">{_esc(_LABELS[k])}</div></div>'
        for k in _HEADLINE
        if k in summary
    )
    skip = set(_HEADLINE) | {"per_type", "failed", "decision"}
    details = {k: v for k, v in summary.items() if k not in skip}
    detail_rows = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(_fmt(v))}</td></tr>" for k, v in details.items())
    failed = summary.get("failed") or []
    failed_html = ""
    if failed:
        items = "".join(
            f"<li><code>{_esc(f.get('id') if isinstance(f, dict) else f)}</code>: "
            f"{_esc(f.get('error') if isinstance(f, dict) else '')}</li>"
            for f in failed[:200]
        )
        more = f"<p class='muted'>and {len(failed) - 200} more</p>" if len(failed) > 200 else ""
        failed_html = f"<h2>Failed samples ({len(failed)})</h2><ul>{items}</ul>{more}"
    plots_html = "".join(f'<figure><img src="{p}" alt="{_esc(c)}"><figcaption>{_esc(c)}</figcaption></figure>' for c, p in plots)
    thr_note = (
        f"Decision threshold (best image F1): {_esc(_fmt(threshold))}." if threshold is not None else ""
    )
    dm = summary.get("decision")
    if isinstance(dm, dict) and dm.get("n"):
        thr_note += (
            f" The detector's own decisions: precision {dm['precision']:.3f}, recall {dm['recall']:.3f}, "
            f"F1 {dm['f1']:.3f} (false alarms {dm['false_alarms']}, misses {dm['misses']})."
        )
    scale_note = (
        f"Heat colours share one scale, {_esc(_fmt(vmin))} (blue) to {_esc(_fmt(vmax))} (red); "
        "left: input, right: overlay with predicted regions and the ground truth outlined in green."
        if vmin is not None
        else "No anomaly maps were kept for these images."
    )

    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body>
<h1>{_esc(title)}</h1>
<div class="cards">{cards}</div>
<p class="muted">{len(entries)} scored labelled images ({int((labels == 0).sum())} normal, {int((labels == 1).sum())} anomalous). {thr_note}</p>
<h2>Curves</h2>
<div class="plots">{plots_html or '<p class="muted">Curves need both normal and anomalous images.</p>'}</div>
<h2>Per defect type</h2>
{_table(_per_type(summary), "type")}
<h2>Worst false positives: highest-scoring normal images</h2>
<p class="muted">{scale_note}</p>
{_gallery_html(run, fps, img_dir, "fp", thumb_px, vmin, vmax, threshold)}
<h2>Worst false negatives: lowest-scoring anomalous images</h2>
{_gallery_html(run, fns, img_dir, "fn", thumb_px, vmin, vmax, threshold)}
{failed_html}
<h2>Run details</h2>
<table><tbody>{detail_rows}</tbody></table>
</body></html>
"""
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
