"""Series scores against labelled ranges, over a corpus of series (NAB, UCR, labelled CSVs):
the figures `genad eval` reports and benchmarks/timeseries.py tabulates.

Per series (`per_series` rows), with the scored part starting after a normal training prefix
(`train_end`, UCR) where there is one:
- point AUROC / AP / point-adjusted F1 (best threshold) on the per-point scores (only for
  series with an anomalous point);
- range precision / recall / F1 (Tatbul et al. 2018, flat bias, alpha 0, reciprocal
  cardinality) of the detector's own ranges (its decision, at its own threshold) against the
  labelled ones, and flagged-point precision / recall / F1 (the points inside its ranges
  against the labelled points), for series with a labelled range;
- NAB totals (standard profile): one detection at the peak of each of the detector's ranges;
- UCR hit (Wu and Keogh) for series with a training prefix: the highest-scoring point lies
  within 100 points of the anomaly.
Summary: the mean of each per-series figure over the series that have it (series without an
anomaly are left out of the point and range means; a series with no detection has range F1 0;
precision is averaged over series that flagged something), the NAB score from raw, null and
perfect totals summed over the corpus and then normalised, as NAB does (so false alarms on
anomaly-free series count), the share of series with / without an anomaly that the detector
calls anomalous (Result.decision), and `detector_seconds`: predict() time summed over series.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from genad.errors import GenadError
from genad.metrics.timeseries import (
    NabTotals,
    nab_totals,
    point_adjusted_f1,
    point_ap,
    point_auroc,
    range_peaks,
    range_precision_recall,
    ranges_to_labels,
)
from genad.types import Result, TimeSeriesSample

#: points either side of UCR's anomaly within which the highest score counts as a hit
UCR_MARGIN = 100


def _mean(xs: Sequence[float | None]) -> float | None:
    kept = [x for x in xs if x is not None and not math.isnan(x)]
    return float(np.mean(kept)) if kept else None


def flagged_point_prf(labels: np.ndarray, flagged: np.ndarray) -> tuple[float | None, float, float]:
    """(precision, recall, F1) of flagged points against labelled ones; precision None when
    nothing is flagged (F1 is then 0)."""
    tp = int((labels & flagged).sum())
    fp, fn = int((~labels & flagged).sum()), int((labels & ~flagged).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else 0.0
    return precision, recall, 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def series_row(sample: TimeSeriesSample, result: Result) -> tuple[dict[str, Any], NabTotals | None]:
    """One series' figures (see the module doc) and its NAB totals (None when it failed)."""
    n = len(sample.values)
    truth = (sample.truth.ranges if sample.truth is not None else None) or []
    row: dict[str, Any] = {
        "id": sample.id,
        "n": n,
        "seconds": round(result.timings.get("seconds", 0.0), 3),
        "error": result.error,
    }
    if result.error is not None or result.anomaly_map is None:
        row["error"] = result.error or "no point scores"
        return row, None
    if len(result.anomaly_map) != n:
        raise GenadError(f"series {sample.id!r}: {n} points but {len(result.anomaly_map)} point scores")
    start = sample.train_end or 0
    y = ranges_to_labels(truth, n)[start:]
    sc = np.asarray(result.anomaly_map, dtype=np.float64)[start:]
    row.update(
        window=result.extra.get("window"),
        auroc=point_auroc(y, sc) if y.any() else None,
        ap=point_ap(y, sc) if y.any() else None,
        pa_f1=point_adjusted_f1(y, sc)[0] if y.any() else None,
        ranges=[list(x) for x in result.ranges],
    )
    row["decision"] = bool(result.decision)
    row["normalized_score"] = result.normalized_score
    flagged = ranges_to_labels(result.ranges, n)[start:]
    if truth:
        row["range_p"], row["range_r"], row["range_f1"] = range_precision_recall(truth, result.ranges)
        row["point_p"], row["point_r"], row["point_f1"] = flagged_point_prf(y, flagged)
    totals = nab_totals(truth, range_peaks(result.ranges, result.anomaly_map), n=n)
    row["nab_raw"] = round(totals.raw, 4)
    if sample.train_end is not None and truth:
        peak = start + int(np.argmax(sc))
        a, b = truth[0]
        row["ucr_hit"] = bool(a - UCR_MARGIN <= peak < b + UCR_MARGIN)
    return row, totals


def series_metrics(samples: Sequence[TimeSeriesSample], results: Sequence[Result]) -> dict[str, Any]:
    """{"summary": figures over the corpus, "per_series": one row per series} (module doc);
    `results[i]` belongs to `samples[i]` and carries its point scores (anomaly_map)."""
    if len(samples) != len(results):
        raise GenadError(f"{len(samples)} series but {len(results)} results")
    rows, nab = [], NabTotals()
    has_prefix = False
    for s, r in zip(samples, results):
        row, totals = series_row(s, r)
        rows.append(row)
        has_prefix = has_prefix or s.train_end is not None
        if totals is not None:
            nab = nab + totals
    ok = [r for r in rows if r["error"] is None]
    with_anomaly = [r for r in ok if "range_f1" in r]
    without = [r for r in ok if "range_f1" not in r]
    summary: dict[str, Any] = {
        "series": len(rows),
        "errors": len(rows) - len(ok),
        "point_auroc": _mean([r["auroc"] for r in ok]),
        "point_ap": _mean([r["ap"] for r in ok]),
        "point_adjusted_f1": _mean([r["pa_f1"] for r in ok]),
        "range_precision": _mean([r.get("range_p") for r in ok]),
        "range_recall": _mean([r.get("range_r") for r in ok]),
        "range_f1": _mean([r.get("range_f1") for r in ok]),
        "point_precision": _mean([r.get("point_p") for r in ok]),
        "point_recall": _mean([r.get("point_r") for r in ok]),
        "point_f1": _mean([r.get("point_f1") for r in ok]),
        "anomalous_series": len(with_anomaly),
        "anomalous_series_flagged": _mean([float(r["decision"]) for r in with_anomaly]),
        "normal_series": len(without),
        "normal_series_flagged": _mean([float(r["decision"]) for r in without]),
        "nab_score": None if math.isnan(nab.score) else nab.score,
        "detector_seconds": round(sum(r["seconds"] for r in rows), 2),
        "points": int(sum(r["n"] for r in rows)),
    }
    if has_prefix:
        summary["ucr_hit_rate"] = _mean([float(r["ucr_hit"]) for r in ok if "ucr_hit" in r])
    return {"summary": summary, "per_series": rows}
