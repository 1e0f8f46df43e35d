"""Series benchmark: NAB (58 series, label windows) and UCR (4 InternalBleeding series).

    .venv/bin/python benchmarks/timeseries.py                  # both data sets, both classical detectors
    .venv/bin/python benchmarks/timeseries.py --datasets ucr --detectors ts-iforest,ts-matrix-profile:window=100

Writes benchmarks/results/timeseries.json (per series and summary) and timeseries.md (table).

The protocol and the figures are the package's (`genad eval DATA/nab` gives the same numbers for
one detector): genad.evaluate_modalities.evaluate_samples runs each detector through the run
loop and genad.modalities.timeseries.metrics computes, per series, with each detector's defaults
(window = autocorrelation period):
- point AUROC / AP / point-adjusted F1 (best threshold) on per-point scores; series without an
  anomaly are left out of these means. UCR is scored after its training prefix (the standard
  protocol; the prefix is the detector's normal reference).
- NAB score (standard profile): detections are the peaks of the detector's own ranges (its
  threshold rule, not a tuned threshold; one detection per range); raw, null and perfect scores are summed over the
  data set, then normalised, as NAB does, so false alarms on anomaly-free series count.
- range precision / recall / F1 (Tatbul et al. 2018, flat bias, alpha 0, reciprocal cardinality)
  of the detector's own ranges (those of its decision, at its own threshold), averaged over
  series with an anomaly (precision over series that flagged something; a series with no
  detection has range F1 0).
- flagged-point precision / recall / F1: the points inside the detector's own ranges against
  the labelled points (after the training prefix), averaged as the range figures.
- series decisions: the share of series with an anomaly that the detector calls anomalous
  (Result.decision) and the share of anomaly-free series it calls anomalous.
- UCR hit rate (Wu and Keogh): the highest-scoring point lies within 100 points of the anomaly.
- seconds: wall time of predict() summed over series (2 shared CPU cores in our runs).

This script only picks the data and detectors and writes the README's table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from genad.evaluate_modalities import evaluate_samples  # noqa: E402
from genad.io.datasets import load_labelled  # noqa: E402
from genad.registry import create  # noqa: E402


def make(spec: str):
    """ "name" or "name:key=value:key=value" (values read as JSON when they parse)."""
    name, *opts = spec.split(":")
    params = {}
    for o in opts:
        k, _, v = o.partition("=")
        try:
            params[k] = json.loads(v)
        except json.JSONDecodeError:
            params[k] = v
    return create(name, **params)


def run(detector: str, samples: list) -> dict:
    """{"summary": the package's series figures, "per_series": its rows}."""
    summary = dict(evaluate_samples(samples, make(detector), modality="timeseries").summary)
    rows = summary.pop("per_series")
    summary["seconds"] = summary.pop("detector_seconds")  # predict() summed over series, as before
    return {"summary": summary, "per_series": rows}


def table(results: dict) -> str:
    head = (
        "| data set | detector | series | point AUROC | point AP | PA-F1 | range P | range R | range F1 "
        "| flagged-point P | flagged-point R | flagged-point F1 | anomalous series flagged "
        "| normal series flagged | NAB score | UCR hit | seconds |"
    )
    lines = [head, "|" + "---|" * 17]
    f = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"  # noqa: E731

    def share(rate: float | None, count: int) -> str:
        return "-" if rate is None or not count else f"{round(rate * count)}/{count}"

    for ds in ("nab", "ucr"):
        for det, by_ds in results.items():
            if ds not in by_ds:
                continue
            s = by_ds[ds]["summary"]
            nab = "-" if s["nab_score"] is None or math.isnan(s["nab_score"]) else f"{s['nab_score']:.1f}"
            lines.append(
                f"| {ds.upper()} | {det} | {s['series']} | {f(s['point_auroc'])} | {f(s['point_ap'])} | "
                f"{f(s['point_adjusted_f1'])} | {f(s['range_precision'])} | {f(s['range_recall'])} | "
                f"{f(s['range_f1'])} | {f(s['point_precision'])} | {f(s['point_recall'])} | "
                f"{f(s['point_f1'])} | {share(s['anomalous_series_flagged'], s['anomalous_series'])} | "
                f"{share(s['normal_series_flagged'], s['normal_series'])} | {nab} | {f(s.get('ucr_hit_rate'))} | "
                f"{s['seconds']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--datasets", default="nab,ucr")
    ap.add_argument(
        "--detectors",
        default="ts-matrix-profile,ts-matrix-profile:normalize=true,ts-matrix-profile:normalize=false,ts-iforest",
        help="comma-separated; options as name:key=value",
    )
    ap.add_argument("--limit", type=int, default=None, help="first N series of each data set (a quick check)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)

    data = {}
    for ds in args.datasets.split(","):
        data[ds] = load_labelled(args.data / ds, ds)[0][: args.limit]
    results: dict = {}
    t0 = time.time()
    for det in args.detectors.split(","):
        results[det] = {}
        for ds, samples in data.items():
            results[det][ds] = run(det, samples)
            print(f"{det} {ds}: {json.dumps(results[det][ds]['summary'])}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python benchmarks/timeseries.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "total_seconds": round(time.time() - t0, 1),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "limit": args.limit,
    }
    (args.out / "timeseries.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    md = table(results)
    (args.out / "timeseries.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
