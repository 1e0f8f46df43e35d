"""What every series detector shares: cleaning, window choice, thresholds, ranges, explanations.

Cleaning rules (documented for users):
- an empty series, or one of fewer than 3 points, is an error;
- NaN / inf values are interpolated linearly (held constant at the ends) and their indices are
  reported in Result.extra["nan_indices"]; more than `max_nan_frac` of them is an error;
- time gaps (a step more than twice the median step) are reported in Result.extra["gaps"];
  detectors treat the series by position, so a gap is not filled in;
- a constant series has no shape to compare: every point scores 0 and the explanation says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from genad.errors import GenadError
from genad.ops import merge_ranges, runs_to_ranges
from genad.types import TimeSeriesSample

MAX_LISTED = 1000  # cap on indices listed in Result.extra, so results stay small
MIN_POINTS = 3


@dataclass
class Prepared:
    """A series ready for a detector: float64 (T, D), finite."""

    values: np.ndarray
    nan_mask: np.ndarray
    extra: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.values.shape[0])

    @property
    def constant(self) -> bool:
        return bool(np.all(np.ptp(self.values, axis=0) == 0))


def as_2d(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2:
        raise GenadError(f"a series must be shaped (T,) or (T, D), got {v.shape}")
    return v


def interpolate_nans(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation of non-finite values per column; returns (filled, bad_row_mask)."""
    v = as_2d(v).copy()
    bad = ~np.isfinite(v)
    idx = np.arange(v.shape[0])
    for d in np.flatnonzero(bad.any(axis=0)):
        ok = ~bad[:, d]
        v[bad[:, d], d] = np.interp(idx[bad[:, d]], idx[ok], v[ok, d])
    return v, bad.any(axis=1)


def prepare(sample: TimeSeriesSample, max_nan_frac: float = 0.2) -> Prepared:
    v = as_2d(sample.values)
    if v.shape[0] == 0 or v.shape[1] == 0:
        raise GenadError(f"series {sample.id!r} is empty: nothing to score")
    if v.shape[0] < MIN_POINTS:
        raise GenadError(
            f"series {sample.id!r} has only {v.shape[0]} point(s): too few to judge (at least {MIN_POINTS})"
        )
    bad = ~np.isfinite(v)
    if bad.all(axis=0).any():
        raise GenadError(f"series {sample.id!r} has a column with no numeric value: drop it or fix the file")
    frac = float(bad.any(axis=1).mean())
    if frac > max_nan_frac:
        raise GenadError(
            f"series {sample.id!r} is {frac:.0%} missing values (more than {max_nan_frac:.0%}): "
            "fill them first or raise max_nan_frac"
        )
    filled, nan_rows = interpolate_nans(v)
    extra: dict = {}
    if nan_rows.any():
        where = np.flatnonzero(nan_rows)
        extra["nan_points"] = int(where.size)
        extra["nan_indices"] = where[:MAX_LISTED].tolist()
    gaps = find_gaps(sample.timestamps)
    if gaps:
        extra["gaps"] = gaps[:MAX_LISTED]
    return Prepared(filled, nan_rows, extra)


def find_gaps(timestamps: np.ndarray | None) -> list[int]:
    """Indices i where the step timestamps[i] - timestamps[i-1] is over twice the median step."""
    if timestamps is None or len(timestamps) < 3:
        return []
    t = np.asarray(timestamps)
    step = np.diff(t).astype(np.float64)
    med = float(np.median(step))
    if med <= 0:
        return []
    return (np.flatnonzero(step > 2 * med) + 1).tolist()


def estimate_period(
    x: np.ndarray, min_period: int = 4, max_period: int | None = None, max_len: int = 50_000
) -> int | None:
    """Dominant period by autocorrelation: the highest ACF peak after its first zero crossing.
    None when the series shows no clear period (peak ACF below 0.1)."""
    x = as_2d(x)[:max_len, 0]
    n = x.size
    if n < 3 * min_period:
        return None
    t = np.arange(n)
    x = x - np.polyval(np.polyfit(t, x, 1), t)  # a trend would swamp the ACF
    if not np.any(x):
        return None
    f = np.fft.rfft(x, 2 * n)
    acf = np.fft.irfft(f * np.conj(f))[:n]
    acf /= acf[0]
    max_period = min(max_period or n // 3, n - 1)
    a = acf[: max_period + 2]
    # the ACF's first trough: its first zero crossing, or its first local minimum when a level
    # shift or a trend keeps it above zero
    neg = np.flatnonzero(a < 0)
    mins = np.flatnonzero((a[1:-1] < a[:-2]) & (a[1:-1] <= a[2:])) + 1
    cands = [int(v[0]) for v in (neg, mins) if v.size]
    if not cands:
        return None
    lo = max(min(cands), min_period)
    if lo >= max_period:
        return None
    seg = acf[lo : max_period + 1]
    best = float(seg.max())
    if best < 0.1:
        return None
    # the first local peak nearly as high as the best (a multiple of the period scores the same)
    # that also rises clearly above the trough before it
    peaks = np.flatnonzero((seg[1:-1] >= seg[:-2]) & (seg[1:-1] >= seg[2:])) + 1
    good = [k for k in peaks if seg[k] >= 0.8 * best and seg[k] - seg[:k].min() >= 0.1]
    if not good:
        k = int(np.argmax(seg))
        return lo + k if k > 0 and seg[k] - seg[:k].min() >= 0.1 else None
    return lo + int(good[0])


def choose_window(
    x: np.ndarray, window: int | str | None, default: int = 32, min_window: int = 4, max_window: int = 300
) -> tuple[int, int | None]:
    """(window, period). window="auto"/None: the estimated period (up to max_window; 300 holds
    a day of 5-minute data), else `default`; the result is capped at a quarter of the series
    so that enough windows remain to compare."""
    n = as_2d(x).shape[0]
    if window not in (None, "auto"):
        try:
            m = int(window)
        except (TypeError, ValueError) as e:
            raise GenadError(f"window must be a whole number of points or 'auto', got {window!r}") from e
        if m < 3:
            raise GenadError(f"window={m} is too small: use 3 points or more")
        return m, None
    period = estimate_period(x, min_period=min_window, max_period=max(min_window, min(n // 4, max_window)))
    m = period if period is not None else default
    # very short periods (a few points) make windows too short to have a shape: 16 at least
    return max(min_window, min(max(m, 16), n // 4)), period


def check_length(n: int, m: int, sample_id: str, need: int = 2) -> None:
    if n < need * m:
        raise GenadError(
            f"series {sample_id!r} has {n} points, too short for a window of {m} "
            f"(needs at least {need * m}): pass a smaller window="
        )


def windows_to_points(win_scores: np.ndarray, starts: np.ndarray, m: int, n: int) -> np.ndarray:
    """Per-window scores -> per-point scores: a point scores the mean of the windows that cover
    it. A one-point spike is covered by all the odd windows and so peaks exactly where it is;
    an odd stretch gets a plateau over itself. Points no window covers (windows taken with a
    stride longer than the window) are interpolated."""
    s = np.asarray(win_scores, dtype=np.float64)
    finite = np.isfinite(s)
    if not finite.any():
        return np.zeros(n, dtype=np.float32)
    # a window with no valid neighbour (inf) is as odd as the oddest one we could measure
    s = np.where(finite, s, np.max(s[finite]))
    st = np.asarray(starts, dtype=np.int64)
    total = np.bincount(st, weights=s, minlength=n + m) - np.bincount(st + m, weights=s, minlength=n + m)
    count = np.bincount(st, minlength=n + m) - np.bincount(st + m, minlength=n + m)
    total, count = np.cumsum(total)[:n], np.cumsum(count)[:n]
    covered = count > 0
    out = np.zeros(n)
    out[covered] = total[covered] / count[covered]
    if not covered.all():
        idx = np.arange(n)
        out[~covered] = np.interp(idx[~covered], idx[covered], out[covered])
    return out.astype(np.float32)


def ranges_above(
    scores: np.ndarray, threshold: float, merge_gap: int = 0, max_ranges: int | None = None, min_len: int = 1
) -> list[tuple[int, int]]:
    """[start, end) runs where scores > threshold (the decision's rule: a score above the
    boundary); runs closer than merge_gap are joined, runs shorter than min_len dropped (a real
    finding of a window detector spans part of a window, a lone point above the line is noise);
    the max_ranges with the highest peaks are kept, in index order."""
    runs = runs_to_ranges(np.asarray(scores) > threshold)
    merged = [(a, b) for a, b in merge_ranges(runs, merge_gap) if b - a >= min_len]
    if max_ranges is not None and len(merged) > max_ranges:
        peaks = [float(np.max(scores[a:b])) for a, b in merged]
        keep = sorted(np.argsort(peaks)[::-1][:max_ranges].tolist())
        merged = [merged[i] for i in keep]
    return merged


def peak_run(scores: np.ndarray, threshold: float) -> tuple[int, int]:
    """The [start, end) run of scores > threshold around the highest score (that one point
    alone when it does not pass): the range reported when a series is judged anomalous but
    every run above the boundary is too short to count as a range."""
    s = np.asarray(scores)
    i = int(np.argmax(s))
    if not s[i] > threshold:
        return i, i + 1
    below = np.flatnonzero(~(s > threshold))
    a = int(below[below < i].max()) + 1 if (below < i).any() else 0
    b = int(below[below > i].min()) if (below > i).any() else int(s.size)
    return a, b


def describe_ranges(
    scores: np.ndarray,
    ranges: list[tuple[int, int]],
    threshold: float,
    method: str,
    timestamps: np.ndarray | None = None,
) -> str:
    """One readable sentence per finding, naming index ranges (and times when known)."""

    def at(i: int) -> str:
        if timestamps is not None and 0 <= i < len(timestamps):
            return f"{i} ({timestamps[i]})"
        return str(i)

    if not ranges:
        i = int(np.argmax(scores))
        return (
            f"{method}: no range reaches the threshold {threshold:.3g}; "
            f"the highest score is {float(scores[i]):.3g} at index {at(i)}."
        )
    parts = []
    for a, b in ranges:
        i = a + int(np.argmax(scores[a:b]))
        parts.append(f"[{a}, {b}) peaking at {float(scores[i]):.3g} at index {at(i)}")
    noun = "range" if len(ranges) == 1 else "ranges"
    return f"{method}: {len(ranges)} anomalous {noun} above {threshold:.3g}: " + "; ".join(parts) + "."
