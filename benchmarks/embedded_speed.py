"""Speed of the embedded engine at default settings, against the issue's targets.

    .venv/bin/python benchmarks/embedded_speed.py            # magnetic_tile, ~3 minutes

Few-shot: fit on k references of train/good, then time `predict` alone over N test images read
from disk (decoding, features, search, maps: what a user waits for). Zero-shot: one `predict`
over a batch of 500 test images (a seeded random draw of all types). Writes
benchmarks/results/embedded_speed.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "results" / "embedded_speed.json"


def main() -> None:
    import genad
    from genad.io.mvtec import load_mvtec, load_mvtec_train

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="magnetic_tile")
    ap.add_argument("--backbone", default="effnet-lite0")
    ap.add_argument("--shots", nargs="+", type=int, default=[4, 16])
    ap.add_argument("--n-few", type=int, default=300, help="test images timed per few-shot run")
    ap.add_argument("--n-zero", type=int, default=500, help="zero-shot batch size")
    a = ap.parse_args()

    test = load_mvtec(DATA / a.data)
    train = load_mvtec_train(DATA / a.data)
    rng = np.random.default_rng(0)
    order = [test[i] for i in rng.permutation(len(test))]
    rows = []
    genad.create("embedded", backbone=a.backbone).fit(train[:2])  # load the model once, untimed
    for k in a.shots:
        det = genad.create("embedded", backbone=a.backbone).fit(train[:k])
        batch = order[: a.n_few]
        t = time.perf_counter()
        res = det.predict(batch)
        dt = time.perf_counter() - t
        assert all(r.ok for r in res)
        rows.append(
            {
                "mode": f"{k}-shot predict",
                "images": len(batch),
                "seconds": round(dt, 1),
                "images_per_second": round(len(batch) / dt, 1),
            }
        )
        print(rows[-1], flush=True)
    batch = order[: a.n_zero]
    t = time.perf_counter()
    res = genad.create("embedded", backbone=a.backbone).predict(batch)
    dt = time.perf_counter() - t
    assert all(r.ok for r in res)
    rows.append(
        {
            "mode": "zero-shot predict",
            "images": len(batch),
            "seconds": round(dt, 1),
            "images_per_second": round(len(batch) / dt, 1),
        }
    )
    print(rows[-1], flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "data": a.data,
        "backbone": a.backbone,
        "machine": platform.processor() or platform.machine(),
        "peak_rss_mb": round(peak),
        "rows": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1))
    print("| mode | images | seconds | images/s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['images']} | {r['seconds']} | {r['images_per_second']} |")
    print(f"peak RSS {peak:.0f} MB -> {OUT}")


if __name__ == "__main__":
    main()
