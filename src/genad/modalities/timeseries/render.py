"""Pictures of series: a clean chart for a multimodal model to read, and a result plot for people.

matplotlib with the Agg backend (no display needed); figures are closed after use so a long
run does not leak memory.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from genad.modalities.timeseries.common import as_2d, interpolate_nans
from genad.types import Result, TimeSeriesSample


def _plt():  # import lazily: matplotlib is an extra and slow to import
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _fig_to_array(fig) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.uint8).copy()


def render_chart(
    values: np.ndarray,
    title: str | None = None,
    columns: list[str] | None = None,
    size: tuple[int, int] = (1200, 500),
    max_points: int = 4000,
) -> np.ndarray:
    """The series as a line chart, x = point index (the unit answers are asked in), with a dense
    readable index axis and a grid. Long series are drawn from min/max per bucket, so a one-point
    spike stays visible. Returns uint8 RGB HxWx3."""
    plt = _plt()
    v, _ = interpolate_nans(as_2d(values))
    n = v.shape[0]
    x, y = _minmax_downsample(v, max_points)
    dpi = 100
    fig, ax = plt.subplots(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    try:
        for d in range(y.shape[1]):
            label = columns[d] if columns and d < len(columns) else (f"dim {d}" if y.shape[1] > 1 else None)
            ax.plot(x, y[:, d], lw=0.8, label=label)
        ax.set_xlim(0, max(n - 1, 1))
        ax.xaxis.set_major_locator(plt.MaxNLocator(nbins=20, integer=True))
        ax.minorticks_on()
        ax.grid(True, which="major", alpha=0.5)
        ax.grid(True, which="minor", alpha=0.15)
        ax.set_xlabel("index")
        ax.set_ylabel("value")
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        if y.shape[1] > 1:
            ax.legend(loc="upper right", fontsize=8)
        if title:
            ax.set_title(title, fontsize=10)
        fig.tight_layout()
        return _fig_to_array(fig)
    finally:
        plt.close(fig)


def _minmax_downsample(v: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) with at most ~max_points points: each bucket contributes its min and its max."""
    n = v.shape[0]
    if n <= max_points:
        return np.arange(n), v
    buckets = max_points // 2
    edges = np.linspace(0, n, buckets + 1).astype(int)
    xs, ys = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        seg = v[a:b]
        i, j = a + seg.argmin(axis=0), a + seg.argmax(axis=0)
        lo, hi = np.minimum(i, j).min(), np.maximum(i, j).max()
        xs += [lo, hi]
        ys += [v[lo], v[hi]]
    return np.array(xs), np.array(ys)


def plot_result(
    sample: TimeSeriesSample, result: Result, path: str | Path, size: tuple[int, int] = (1400, 700)
) -> Path:
    """PNG of the series (top) and the point scores with the threshold (bottom); detected ranges
    shaded red, true ranges (when known) shaded green. x = timestamps when the series has them."""
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    v, _ = interpolate_nans(as_2d(sample.values))
    n = v.shape[0]
    x = sample.timestamps if sample.timestamps is not None and len(sample.timestamps) == n else np.arange(n)
    if np.issubdtype(np.asarray(x).dtype, np.datetime64):
        x = np.asarray(x).astype("datetime64[ms]").astype(object)  # matplotlib dates
    dpi = 100
    fig, (ax1, ax2) = plt.subplots(
        2, 1, figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi, sharex=True, gridspec_kw={"height_ratios": [2, 1]}
    )
    try:
        for d in range(v.shape[1]):
            label = sample.columns[d] if sample.columns and d < len(sample.columns) else None
            ax1.plot(x, v[:, d], lw=0.8, label=label)
        if sample.columns and v.shape[1] > 1:
            ax1.legend(loc="upper right", fontsize=8)
        truth = sample.truth.ranges if sample.truth is not None and sample.truth.ranges else []

        def shade(ax, ranges, color, label):
            for k, (a, b) in enumerate(ranges):
                a, b = max(0, int(a)), min(n - 1, int(b) - 1)
                if b >= a:
                    ax.axvspan(x[a], x[b], color=color, alpha=0.25, lw=0, label=label if k == 0 else None)

        for ax in (ax1, ax2):
            shade(ax, truth, "tab:green", "true anomaly" if ax is ax1 else None)
            shade(ax, result.ranges, "tab:red", "detected" if ax is ax1 else None)
        if truth or result.ranges:
            ax1.legend(loc="upper left", fontsize=8)
        title = f"{sample.id}: score {result.score:.3g}" if result.score is not None else f"{sample.id}: {result.error}"
        ax1.set_title(title, fontsize=10)
        ax1.grid(True, alpha=0.3)
        if result.anomaly_map is not None and len(result.anomaly_map) == n:
            ax2.plot(x, result.anomaly_map, lw=0.8, color="tab:purple")
            if result.threshold is not None and np.isfinite(result.threshold):
                ax2.axhline(result.threshold, color="tab:red", ls="--", lw=0.8, label="threshold")
                ax2.legend(loc="upper left", fontsize=8)
        ax2.set_ylabel("anomaly score")
        ax2.set_xlabel("time" if sample.timestamps is not None else "index")
        ax2.grid(True, alpha=0.3)
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return path
