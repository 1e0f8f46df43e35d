"""Classical series detectors: the matrix profile (stumpy) and an isolation forest (scikit-learn)
on sliding windows. Both give a score per point (Result.anomaly_map, float32 (T,)), anomalous
[start, end) ranges (Result.ranges), Result.score = the highest point score of the scored part,
and an explanation naming the ranges.

Decisions (genad.decision): the calibration is `from_values(point scores, threshold_k)`, the
median + `threshold_k` (5) robust sigmas of the scored part's point scores, most of which are
normal; one robust sigma is the normalised scale. `threshold` (normalised, 0.5 = that boundary)
and `raw_threshold` (in point-score units, replaces it) set the boundary `Result.threshold`,
and `Result.decision` = the highest point score > that boundary. The ranges follow the
decision: they are the runs of point scores above `Result.threshold` (merged within a window,
runs shorter than a quarter window dropped); when that filtering leaves none although the
decision is True, the run around the highest point is reported, so ranges are empty exactly
when the decision is False. A constant series scores 0 (normalised ~0, decision False).

Both work zero-shot on one series. When the series carries a normal training prefix
(`sample.train_end`, as UCR files do) or when fit() was given normal series, those are the
reference: the matrix profile becomes an AB-join of the scored part against the references and
the forest is trained on reference windows only. The prefix itself is known normal and scores 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from genad.decision import from_values
from genad.detector import Detector, param, predict_each, raw_threshold_param, threshold_param
from genad.errors import GenadError
from genad.modalities.timeseries.common import (
    Prepared,
    check_length,
    choose_window,
    describe_ranges,
    peak_run,
    prepare,
    ranges_above,
    windows_to_points,
)
from genad.ops import robust_z
from genad.types import Result, Sample, TimeSeriesSample


class _SeriesDetector(Detector):
    """Shared predict loop: clean each series, score it, threshold, explain; one bad series
    gives an error Result and the others go on."""

    modalities = ("timeseries",)
    zero_shot = True
    method = "series detector"

    # checked per series (a bad value is that series' error): "auto" or a whole number >= 3
    window: int | str = param("auto", "any", doc="points per window, or auto (the period)")
    threshold: float = threshold_param()
    raw_threshold: float | None = raw_threshold_param()
    threshold_k: float = param(
        5.0, low=1e-6, high=1000.0, doc="calibrated boundary: robust sigmas of the point scores above their median"
    )
    max_ranges: int = param(5, low=1, high=10_000, doc="most anomalous ranges reported")
    max_nan_frac: float = param(0.2, low=0.0, high=1.0, doc="largest share of missing values tolerated")
    use_train: bool = param(True, doc="use a series' normal training prefix (UCR) as its reference")

    refs_: list[np.ndarray] = []  # fitted: normal reference series

    def fit(self, normal_samples: Sequence[Sample]) -> _SeriesDetector:
        """Keep normal series as references (NaNs interpolated)."""
        refs = []
        for s in normal_samples:
            if not isinstance(s, TimeSeriesSample):
                raise GenadError(f"{self.name} learns from time series; {s.id!r} is a {s.modality}")
            refs.append(prepare(s, self.max_nan_frac).values)
        dims = {r.shape[1] for r in refs}
        if len(dims) > 1:
            raise GenadError(f"normal series have different numbers of columns {sorted(dims)}: use one kind")
        self.refs_ = refs
        self.fitted_ = True
        return self

    # --- the part each detector writes
    def _score(self, prep: Prepared, sample: TimeSeriesSample) -> tuple[np.ndarray, dict]:
        raise NotImplementedError

    # --- shared
    def _to_points(
        self, n: int, start: int, win_scores: np.ndarray, starts: np.ndarray, m: int, period: int | None, alone: str
    ) -> tuple[np.ndarray, dict]:
        """Window scores of the scored part (from `start`) -> per-point scores of the whole
        series (the known-normal prefix scores 0), and what was used."""
        scores = np.zeros(n, dtype=np.float32)
        scores[start:] = windows_to_points(win_scores, starts, m, n - start)
        info = {
            "window": m,
            "period": period,
            "scored_from": start,
            "reference": "normal references" if self.refs_ else ("training prefix" if start else alone),
        }
        return scores, info

    def _references(self, prep: Prepared, sample: TimeSeriesSample) -> tuple[list[np.ndarray], int]:
        """(reference arrays, index where scoring starts)."""
        refs = list(self.refs_)
        if refs and refs[0].shape[1] != prep.values.shape[1]:
            raise GenadError(
                f"series {sample.id!r} has {prep.values.shape[1]} columns but the normal series have {refs[0].shape[1]}"
            )
        start = 0
        te = sample.train_end
        if self.use_train and te is not None and 0 < te < prep.n:
            refs.append(prep.values[:te])
            start = int(te)
        return refs, start

    def predict(self, samples: Sequence[Sample]) -> list[Result]:
        return predict_each(samples, lambda s, _: self._predict_one(s))

    def _predict_one(self, s: Sample) -> Result:
        if not isinstance(s, TimeSeriesSample):
            raise GenadError(f"{self.name} reads time series; {s.id!r} is a {s.modality} sample")
        prep = prepare(s, self.max_nan_frac)
        if prep.constant:
            zeros = np.zeros(prep.n, dtype=np.float32)
            return self.decide(
                Result(
                    sample_id=s.id,
                    score=0.0,
                    anomaly_map=zeros,
                    explanation="constant series: every value is the same, so there is no shape to "
                    "compare; every point scores 0.",
                    extra={**prep.extra, "method": self.method, "constant": True},
                ),
                from_values(zeros, self.threshold_k),
                verdict=False,  # no shape, nothing to find, whatever the boundary
            )
        scores, info = self._score(prep, s)
        start = int(info.get("scored_from", 0))
        scored = scores[start:]
        auto = from_values(scored, self.threshold_k)
        calibration = self.calibrated(auto)  # moved to raw_threshold when one is given
        m = int(info.get("window", 1))
        window_note = f"window {m}" + (" = estimated period" if info.get("period") == m else "")
        r = self.decide(
            Result(
                sample_id=s.id,
                score=float(scored.max()),
                anomaly_map=scores.astype(np.float32),
                extra={**prep.extra, "method": self.method, **info, "calibration": calibration.to_dict()},
            ),
            auto,
        )
        # the effective raw boundary (+-inf at a normalised threshold of 0 or 1)
        thr = calibration.raw_at(self.threshold)
        ranges: list[tuple[int, int]] = []
        if r.decision:  # the ranges follow the decision
            found = ranges_above(scored, thr, merge_gap=m, max_ranges=self.max_ranges, min_len=max(1, m // 4))
            ranges = [(a + start, b + start) for a, b in (found or [peak_run(scored, thr)])]
        r.ranges = ranges
        r.explanation = describe_ranges(scores, ranges, thr, f"{self.method} ({window_note})", s.timestamps)
        return r


def _normalize(value: object) -> bool | str:
    key = str(value).strip().lower()
    if key not in ("true", "false", "both"):
        raise GenadError(f"normalize must be true, false or both, got {value!r}")
    return "both" if key == "both" else key == "true"


def _max_samples(value: object) -> int | str:
    if value == "auto":
        return "auto"
    if (
        isinstance(value, (int, float, str))
        and not isinstance(value, bool)
        and str(value).isdigit()
        and int(value) >= 1
    ):
        return int(value)
    raise GenadError(f"max_samples must be auto or a whole number >= 1, got {value!r}")


def _join_refs(refs: list[np.ndarray], d: int) -> np.ndarray:
    """Reference series of one column, joined with a NaN between them so that no window
    spans two of them (stumpy gives such windows an infinite distance)."""
    parts: list[np.ndarray] = []
    for r in refs:
        if parts:
            parts.append(np.array([np.nan]))
        parts.append(r[:, d])
    return np.concatenate(parts)


def _profile(stumpy: Any, x: np.ndarray, m: int, tb: np.ndarray | None, znorm: bool) -> np.ndarray:
    """Each window's distance to its nearest neighbour (in `tb` when given, else elsewhere in
    x); z-normalised distances are divided by their maximum 2*sqrt(m), so they lie in [0, 1]."""
    with warnings.catch_warnings():
        # stumpy warns when many distances are ~0 (repeated flat stretches): expected here
        warnings.simplefilter("ignore", UserWarning)
        fn = stumpy.stump if znorm else stumpy.aamp
        mp = fn(x, m, T_B=tb, ignore_trivial=False) if tb is not None else fn(x, m)
    p = np.asarray(mp[:, 0], dtype=np.float64)
    return p / (2.0 * math.sqrt(m)) if znorm else p


class MatrixProfileDetector(_SeriesDetector):
    """Matrix profile discords (stumpy): a window is anomalous when even its nearest neighbour
    elsewhere in the series (or in the normal references) is far away.

    window: points per subsequence, or "auto" (the autocorrelation period; 32 if none).
    normalize: "both" (the default): the mean of the z-normalised profile (shape) and the raw
    Euclidean one (level and amplitude), each in robust standard deviations of the series, so
    scores are in those units. true: z-normalised only, distances divided by their largest
    possible value 2*sqrt(window), so in [0, 1]; false: raw only. On NAB "both" reached point
    AUROC 0.680 where true gave 0.523 (level shifts and spikes have a normal shape), and kept
    true's 1.000 on UCR, where false fell to 0.991 (benchmarks/timeseries.py).
    Multivariate: the mean of the per-column profiles.
    """

    name = "ts-matrix-profile"
    method = "matrix profile"

    normalize: bool | str = param("both", "any", convert=_normalize, doc="true (shape), false (raw) or both")

    def _configure(self) -> None:
        self._kinds = {True: (True,), False: (False,), "both": (True, False)}[self.normalize]

    def _score(self, prep: Prepared, sample: TimeSeriesSample) -> tuple[np.ndarray, dict]:
        stumpy = _stumpy()
        refs, start = self._references(prep, sample)
        test = prep.values[start:]
        m, period = choose_window(refs[-1] if start else test, self.window)
        check_length(test.shape[0], m, sample.id, need=1 if refs else 3)
        profiles = []
        for d in range(test.shape[1]):
            x = test[:, d]
            if np.ptp(x) == 0:  # a flat column has nothing to say
                profiles.append(np.zeros(x.size - m + 1))
                continue
            tb = None
            if refs:
                tb = _join_refs(refs, d)
                if np.count_nonzero(np.isfinite(tb)) < m:
                    raise GenadError(f"the normal references are shorter than the window {m}")
            parts = [_profile(stumpy, x, m, tb, z) for z in self._kinds]
            # "both": each profile in robust standard deviations, so that neither unit dominates
            profiles.append(parts[0] if len(parts) == 1 else np.mean([robust_z(p) for p in parts], axis=0))
        profile = np.mean(profiles, axis=0)
        return self._to_points(prep.n, start, profile, np.arange(profile.size), m, period, "self-join")


PAA_SEGMENTS = 8


class IsolationForestSeriesDetector(_SeriesDetector):
    """An isolation forest (scikit-learn) on features of sliding windows: windows unlike the
    rest (a spike, a shifted level, another rhythm) are isolated in few splits. Point scores are
    the forest's anomaly score in (0, 1) (0.5 = ordinary), centred on each window.

    window: as for the matrix profile. max_cells bounds memory: windows are taken with a stride
    so that at most this many values are held (scores are interpolated between them)."""

    name = "ts-iforest"
    method = "isolation forest"

    n_estimators: int = param(100, low=1, high=10_000, doc="trees in the forest")
    max_samples: int | str = param("auto", "any", convert=_max_samples, doc="windows per tree, or auto")
    random_state: int = param(0, doc="seed of the forest")
    max_cells: int = param(4_000_000, low=1000, doc="values held at once (windows are strided to fit)")

    def _windows(self, v: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        """(features (W, F), window starts), strided so that at most max_cells values are read
        at once. Features per column: the window's shape as PAA_SEGMENTS segment means, and
        min, max, std and largest step, so that a one-point spike is as easy to isolate as a
        changed shape (raw windows would hide it in one feature among hundreds)."""
        n_win = v.shape[0] - m + 1
        stride = max(1, math.ceil(n_win * m * v.shape[1] / self.max_cells))
        starts = np.arange(0, n_win, stride)
        if starts[-1] != n_win - 1:
            starts = np.append(starts, n_win - 1)
        w = np.lib.stride_tricks.sliding_window_view(v, m, axis=0)[starts]  # (W, D, m)
        k = min(PAA_SEGMENTS, m)
        edges = np.linspace(0, m, k + 1).astype(int)
        paa = np.add.reduceat(w, edges[:-1], axis=2) / np.diff(edges)
        step = np.abs(np.diff(w, axis=2)).max(axis=2)
        feats = [paa, w.min(axis=2)[..., None], w.max(axis=2)[..., None], w.std(axis=2)[..., None], step[..., None]]
        return np.concatenate(feats, axis=2).reshape(starts.size, -1), starts

    def _score(self, prep: Prepared, sample: TimeSeriesSample) -> tuple[np.ndarray, dict]:
        from sklearn.ensemble import IsolationForest

        refs, start = self._references(prep, sample)
        test = prep.values[start:]
        m, period = choose_window(refs[-1] if start else test, self.window)
        check_length(test.shape[0], m, sample.id, need=1 if refs else 3)
        # standardise columns on the reference so multivariate columns weigh alike
        base = np.concatenate(refs) if refs else test
        mu, sd = base.mean(axis=0), base.std(axis=0)
        sd[sd == 0] = 1.0
        z = (test - mu) / sd
        if refs:
            train = [self._windows((r - mu) / sd, m)[0] for r in refs if r.shape[0] >= m]
            if not train:
                raise GenadError(f"the normal references are shorter than the window {m}")
            x_fit = np.concatenate(train)
        else:
            x_fit = None
        x, starts = self._windows(z, m)
        forest = IsolationForest(
            n_estimators=self.n_estimators, max_samples=self.max_samples, random_state=self.random_state, n_jobs=1
        )
        forest.fit(x if x_fit is None else x_fit)
        win_scores = -forest.score_samples(x)
        return self._to_points(prep.n, start, win_scores, starts, m, period, "self")


_STUMPY_READY = False


def _stumpy() -> Any:
    """Import stumpy with numba's on-disk cache on, so its JIT compile (~40 s) is paid once per
    install rather than once per process."""
    global _STUMPY_READY
    try:
        import stumpy
        from stumpy import cache
    except ModuleNotFoundError as e:
        raise GenadError("the matrix profile needs stumpy: pip install 'genad[timeseries]'") from e
    if not _STUMPY_READY:
        import importlib

        try:
            for mod, fn in cache.get_njit_funcs():
                getattr(importlib.import_module(f".{mod}", package="stumpy"), fn).enable_caching()
        except Exception:  # caching is an optimisation; a read-only install still works
            pass
        _STUMPY_READY = True
    return stumpy


__all__ = ["MatrixProfileDetector", "IsolationForestSeriesDetector"]
