"""The evaluation report: one index.html (plus PNG files beside it) for a benchmark run.

    run = run_benchmark("data/magnetic_tile", "embedded", shots=4, run_dir="runs/mt")
    write_eval_report(Path("runs/mt/report"), run)   # -> runs/mt/report/index.html

It shows the summary figures; the detector's own decision threshold beside the best-F1 one
(in normalised and raw units) and the confusion matrix of its own decisions; a histogram of
normal vs anomalous scores with both thresholds drawn; ROC / PR curves (image level, and pixel
level with a PRO curve when masks exist); a per-defect-type table; and two galleries of the
detector's real mistakes at its own threshold: the false positives (normal images it flagged,
highest score first) and the false negatives (anomalous images it passed, lowest score first),
each as an overlay of its anomaly map with the ground-truth outline in green. The heat colours
share one scale across the galleries so that images can be compared. The markup is
templates/eval_report.html.j2, autoescaped, so every text (sample ids, explanations, errors,
summary values) is escaped by the template engine; values under keys that look secret
(api_key, token, ...) are masked before the page sees them.
"""

from __future__ import annotations

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
from genad.report.html import render
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
    normalized: float | None
    decision: bool | None


# -- small helpers ---------------------------------------------------------------------------
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


def _pct(v: Any) -> str:
    return "–" if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) else f"{100.0 * v:.1f}%"


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
    except ImportError as e:  # a genad dependency, but an environment may lack it
        raise GenadError("the evaluation report needs matplotlib: pip install matplotlib") from e
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
        ax.step(
            image["recall"], image["precision"], where="post", lw=2, label=f"image (AP {_fmt(summary.get('image_ap'))})"
        )
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


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _histogram_plot(img_dir: Path, curves: dict[str, Any] | None) -> tuple[str, str] | None:
    """(caption, relative png path) of the normal vs anomalous score histogram with the
    detector's own and the best-F1 threshold, drawn from curves.json's `histogram`."""
    h = (curves or {}).get("histogram")
    if not isinstance(h, dict) or not h.get("edges"):
        return None
    normalized = h.get("units") == "normalized"
    units = "normalised score (0..1)" if normalized else "raw score"
    edges = np.asarray(h["edges"], dtype=np.float64)
    fig, ax = _figure("Scores of normal and anomalous images", units, "images")
    ax.set_xlim(float(edges[0]), float(edges[-1]))
    ax.stairs(h["normal"], edges, fill=True, alpha=0.5, color="tab:blue", label="normal")
    ax.stairs(h["anomalous"], edges, fill=True, alpha=0.5, color="tab:red", label="anomalous")
    top = max([*h["normal"], *h["anomalous"], 1])
    ax.set_ylim(0, top * 1.15)
    own, best = _num(h.get("own_threshold")), _num(h.get("best_f1_threshold"))
    if own is not None:
        ax.axvline(own, color="black", lw=2, label=f"detector's own threshold {_fmt(own)}")
    if best is not None:
        ax.axvline(best, color="tab:green", lw=2, ls="--", label=f"best-F1 threshold {_fmt(best)}")
    ax.legend(loc="best", fontsize="small")
    caption = f"Score histogram in {'normalised units (0..1)' if normalized else 'raw score units'}"
    return (caption, _save(fig, img_dir / "hist.png"))


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


def _gallery(
    run: RunLike,
    entries: Sequence[_Entry],
    img_dir: Path,
    prefix: str,
    thumb: int,
    vmin: float | None,
    vmax: float | None,
    best_f1: float | None = None,
) -> list[dict[str, Any]]:
    """One card per entry, in rank order; writes each card's picture as img/<prefix>_NN.png."""
    cards = []
    for rank, e in enumerate(entries, start=1):
        im = _gallery_image(run, e, vmin, vmax, thumb)
        pic = None
        if im is not None:
            name = f"{prefix}_{rank:02d}.png"
            im.save(img_dir / name)
            pic = f"{IMG_DIR}/{name}"
        defect = (
            e.sample.truth.defect_type
            if e.sample.truth and e.sample.truth.defect_type
            else ("good" if e.label == 0 else "anomalous")
        )
        why = e.result.explanation
        if why and len(why) > 400:
            why = why[:400] + "…"
        cards.append(
            {
                "id": e.sample.id,
                "pic": pic,
                "defect": defect,
                "score": e.score,
                "normalized": e.normalized,
                "best_f1_call": None if best_f1 is None else ("anomalous" if e.score >= best_f1 else "normal"),
                "why": why,
            }
        )
    return cards


# -- tables ----------------------------------------------------------------------------------
def _per_type(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    given = summary.get("per_type")
    if not isinstance(given, dict):
        return {}
    return {str(k): (v if isinstance(v, dict) else {"value": v}) for k, v in given.items()}


def _columns(rows: dict[str, dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for row in rows.values():
        cols.extend(c for c in row if c not in cols)
    return cols


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
        if re.fullmatch(r"(roc|pr|pro|hist|f[pn]_\d+)\.png", old.name):
            old.unlink()
    summary = redact(dict(run.summary))
    curves = getattr(run, "curves", None)

    entries = [
        _Entry(
            i,
            s,
            r,
            int(s.label),
            float(r.score),  # type: ignore[arg-type]
            _num(r.normalized_score),
            None if r.decision is None else bool(r.decision),
        )
        for i, (s, r) in enumerate(zip(run.samples, run.results))
        if r.ok and s.label is not None and math.isfinite(float(r.score))  # type: ignore[arg-type]
    ]
    labels = np.array([e.label for e in entries], dtype=np.int64)

    hist = _histogram_plot(img_dir, curves)
    plots = _curve_plots(img_dir, curves, summary)

    # the galleries: the detector's real mistakes at its own threshold, ranked on the
    # normalised score where every image has one (it is comparable across batches), else raw
    norm = bool(entries) and all(e.normalized is not None for e in entries)

    def rank(e: _Entry) -> float:
        return e.normalized if norm and e.normalized is not None else e.score

    fp_all = sorted((e for e in entries if e.label == 0 and e.decision is True), key=lambda e: (-rank(e), e.i))
    fn_all = sorted((e for e in entries if e.label == 1 and e.decision is False), key=lambda e: (rank(e), e.i))
    fps, fns = fp_all[:gallery_size], fn_all[:gallery_size]
    vmin, vmax = _shared_scale(run, [*fps, *fns])

    dm = summary.get("decision")
    own = dm if isinstance(dm, dict) and dm.get("n") else None
    best_raw = _num(summary.get("image_f1_threshold"))
    thresholds = {
        "own_normalized": None if own is None else _num(own.get("threshold_normalized")),
        "own_raw": None if own is None else _num(own.get("threshold")),
        "best_normalized": _num(summary.get("image_f1_threshold_normalized")),
        "best_raw": best_raw,
    }
    counts = ("tp", "fp", "tn", "fn")
    confusion = own if own is not None and all(isinstance(own.get(k), int) for k in counts) else None

    title = f"genad evaluation: {summary.get('detector', 'detector')} on {summary.get('data_dir', 'data')}"
    skip = set(_HEADLINE) | {"per_type", "failed", "decision", "image_f1_threshold", "image_f1_threshold_normalized"}
    failed = [(f.get("id"), f.get("error")) if isinstance(f, dict) else (f, "") for f in summary.get("failed") or []]
    per_type = _per_type(summary)
    page = render(
        "eval_report.html.j2",
        title=title,
        fmt=_fmt,
        pct=_pct,
        cards=[(summary.get(k), _LABELS[k]) for k in _HEADLINE if k in summary],
        n_scored=len(entries),
        n_normal=int((labels == 0).sum()),
        n_anomalous=int((labels == 1).sum()),
        own=own,
        thresholds=thresholds,
        confusion=confusion,
        decided=any(e.decision is not None for e in entries),
        hist=hist,
        plots=plots,
        per_type=per_type,
        per_type_columns=_columns(per_type),
        vmin=vmin,
        vmax=vmax,
        n_false_positives=len(fp_all),
        n_false_negatives=len(fn_all),
        false_positives=_gallery(run, fps, img_dir, "fp", thumb_px, vmin, vmax, best_raw),
        false_negatives=_gallery(run, fns, img_dir, "fn", thumb_px, vmin, vmax, best_raw),
        failed=failed,
        details={k: v for k, v in summary.items() if k not in skip},
    )
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


# -- the overview of a root of categories ---------------------------------------------------
def write_eval_overview(out_dir: Path, root: dict[str, Any], reports: dict[str, str | None]) -> Path:
    """Write out_dir/index.html: the per-category table of a root summary
    (genad.evaluate_root.run_categories), with the mean, each category linked to its own
    report at the relative path `reports[name]` (None: it has none). Returns its path."""
    from urllib.parse import quote

    from genad.evaluate_root import COLUMNS, table_rows

    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GenadError(f"cannot create the report folder {out_dir}: {e}") from e
    rows = table_rows(root)
    links = {name: quote(path) for name, path in reports.items() if path}
    shots = root.get("shots")
    page = render(
        "eval_overview.html.j2",
        title=f"genad evaluation: {root.get('detector', 'detector')} on {root.get('root', 'data')}",
        settings=(
            f"{root.get('n_categories', len(rows) - 1)} categories, {f'{shots}-shot' if shots else 'zero-shot'}, "
            f"seed {root.get('seed')}" + (f", {root['limit']} images per category" if root.get("limit") else "")
        ),
        columns=[c for c in COLUMNS if c not in ("category", "note")],
        rows=rows,
        links=links,
        fmt=_fmt,
        params=redact(dict(root.get("params") or {})),
    )
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
