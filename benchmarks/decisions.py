"""Benchmark the detectors' own yes/no decisions (genad.decision), not only their ranking.

    .venv/bin/python benchmarks/decisions.py                 # everything (about 15 minutes on 2 cores)
    .venv/bin/python benchmarks/decisions.py --only shares   # the composed batches only

Two parts, default settings throughout (embedded engine, EfficientNet-Lite0):
* shares: zero-shot batches drawn (seed 0) from magnetic_tile and brain_mri test sets with
  0%, 10%, 50% and 90% defective images; per batch the share of normals flagged, the recall
  and the decision F1 beside the best F1 in hindsight (F1-max);
* full: `genad eval`'s protocol (run_benchmark) on both sets at 0 and 4 shots: decision
  precision / recall / F1 vs F1-max. At 4 shots the references' leave-one-out scores and the
  test scores are kept, so that the few-shot boundary (mean + k sd) is also reported for
  other k without rescoring.

Results: benchmarks/results/decisions.json and decisions.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
SHARES = (0.0, 0.1, 0.5, 0.9)
BATCH = {"magnetic_tile": 200, "brain_mri": 100}
K_SWEEP = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)


def f1_max(y: np.ndarray, s: np.ndarray) -> float | None:
    if y.min() == y.max():
        return None
    from genad.metrics.image import f1_max as best

    v = best(y, s)[0]
    return None if v is None else float(v)


def rates(y: np.ndarray, d: np.ndarray) -> dict:
    tp = int((d & (y == 1)).sum())
    fp = int((d & (y == 0)).sum())
    n_norm, n_anom = int((y == 0).sum()), int((y == 1).sum())
    return {
        "normals_flagged": fp / n_norm if n_norm else None,
        "recall": tp / n_anom if n_anom else None,
        "precision": tp / (tp + fp) if tp + fp else None,
        "f1": 2 * tp / (2 * tp + fp + n_anom - tp) if n_anom else None,
        "n_normal": n_norm,
        "n_anomalous": n_anom,
    }


def shares() -> dict:
    import genad
    from genad.io.mvtec import load_mvtec

    out = {}
    for name, size in BATCH.items():
        test = load_mvtec(DATA / name)
        good = [s for s in test if s.label == 0]
        bad = [s for s in test if s.label == 1]
        for share in SHARES:
            n_bad = round(share * size)
            n_good = min(size - n_bad, len(good))
            rng = np.random.default_rng(0)
            batch = [good[i] for i in rng.choice(len(good), n_good, replace=False)]
            batch += [bad[i] for i in rng.choice(len(bad), n_bad, replace=False)]
            t0 = time.perf_counter()
            res = genad.create("embedded").predict(batch)
            y = np.array([s.label for s in batch])
            s = np.array([r.score for r in res], dtype=np.float64)
            d = np.array([bool(r.decision) for r in res])
            key = f"{name}|{int(share * 100)}%"
            out[key] = rates(y, d) | {"f1_max": f1_max(y, s), "seconds": time.perf_counter() - t0}
            print(key, {k: v for k, v in out[key].items() if k != "seconds"}, flush=True)
    return out


def full() -> dict:
    import genad
    from genad.evaluate import draw_references, run_benchmark
    from genad.io.mvtec import load_mvtec

    out = {}
    for name in BATCH:
        for shots in (0, 1, 4) if name == "magnetic_tile" else (0, 4):
            with tempfile.TemporaryDirectory(prefix="genad-dec-") as tmp:
                run = run_benchmark(DATA / name, "embedded", {}, shots=shots, seed=0, run_dir=Path(tmp), progress=False)
            s = run.summary
            key = f"{name}|{shots}-shot"
            entry = {
                "decision": s.get("decision"),
                "f1_max": s.get("image_f1_max"),
                "image_auroc": s.get("image_auroc"),
            }
            if shots > 1:
                # the few-shot boundary for other k, from the same scores
                refs, test, _ = draw_references(DATA / name, load_mvtec(DATA / name), shots, 0)
                det = genad.create("embedded").fit(refs)
                loo = np.asarray(det.reference_scores_, dtype=np.float64)
                pairs = [(t.label, r.score) for t, r in zip(run.samples, run.results) if r is not None and r.ok]
                y = np.array([p[0] for p in pairs], dtype=int)
                sc = np.array([p[1] for p in pairs], dtype=np.float64)
                mean, sd = float(loo.mean()), max(float(loo.std(ddof=1)), 0.05 * abs(float(loo.mean())))
                entry["reference_scores"] = loo.tolist()
                entry["k_sweep"] = {str(k): rates(y, sc > mean + k * sd) for k in K_SWEEP}
            out[key] = entry
            print(key, json.dumps(entry.get("decision")), "F1-max", entry["f1_max"], flush=True)
    return out


def fmt(v: object) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def write_markdown(res: dict) -> Path:
    lines = ["## Zero-shot batches with different shares of defects", ""]
    lines += ["| batch | normals flagged | recall | precision | F1 | F1-max |", "|---|---|---|---|---|---|"]
    for k, r in res.get("shares", {}).items():
        lines.append(
            f"| {k} ({r['n_normal']} good + {r['n_anomalous']} defective) | {fmt(r['normals_flagged'])} | "
            f"{fmt(r['recall'])} | {fmt(r['precision'])} | {fmt(r['f1'])} | {fmt(r['f1_max'])} |"
        )
    lines += ["", "## Full test sets (genad eval protocol)", ""]
    lines += ["| run | precision | recall | F1 | F1-max | false alarms / normals |", "|---|---|---|---|---|---|"]
    for k, r in res.get("full", {}).items():
        d = r.get("decision") or {}
        fa = d.get("false_alarms")
        nn = d.get("n_normal") or (None if d.get("tn") is None else d.get("tn", 0) + d.get("fp", 0))
        lines.append(
            f"| {k} | {fmt(d.get('precision'))} | {fmt(d.get('recall'))} | {fmt(d.get('f1'))} | {fmt(r.get('f1_max'))} | "
            f"{fa if fa is not None else '-'} / {nn if nn is not None else '-'} |"
        )
        for kk, rr in (r.get("k_sweep") or {}).items():
            lines.append(
                f"| {k}, few_shot_k={kk} | {fmt(rr['precision'])} | {fmt(rr['recall'])} | {fmt(rr['f1'])} | | "
                f"{fmt(rr['normals_flagged'])} of normals |"
            )
    path = RESULTS / "decisions.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=("shares", "full"))
    a = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "decisions.json"
    res = json.loads(path.read_text()) if path.exists() else {}
    if a.only in (None, "shares"):
        res["shares"] = shares()
    if a.only in (None, "full"):
        res["full"] = full()
    res["measured"] = time.strftime("%Y-%m-%d")
    path.write_text(json.dumps(res, indent=1))
    print(write_markdown(res).read_text())


if __name__ == "__main__":
    sys.exit(main())
