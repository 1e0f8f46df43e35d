"""The trained one-class engine (-d oneclass, both methods) beside the embedded engine, on the
same references and test images:

* brain_mri: no train split, so the references are half of test/good (49 of 98, drawn with seed
  0 by genad.evaluate.draw_references) and the scored set is the rest (49 normal, 155 tumour);
* magnetic_tile full-shot: all 476 train/good images, the full test set (868).

    .venv/bin/python benchmarks/oneclass.py [--runs brain_mri:oneclass-mae ...]

Each run is genad's protocol (genad.evaluate.run_benchmark, seed 0) with default options.
Training time is the fit's own record (training_["seconds"], features excluded); the scoring
speed is the run's images per second. Each finished run is appended to
benchmarks/results/oneclass.jsonl and skipped when the script runs again; the table is
benchmarks/results/oneclass.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SHOTS = {"brain_mri": 49, "magnetic_tile": 476}
RUNS = {
    "oneclass-mae": ("oneclass", {"method": "mae"}),
    "oneclass-contrastive": ("oneclass", {"method": "contrastive"}),
    "embedded": ("embedded", {}),
}
DEFAULT = [f"{d}:{r}" for d in SHOTS for r in RUNS]


def main() -> None:
    import genad
    from genad.evaluate import run_benchmark

    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="+", default=DEFAULT, help="data:run pairs, e.g. brain_mri:oneclass-mae")
    args = ap.parse_args()
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    done_path = res / "oneclass.jsonl"
    done = [json.loads(line) for line in done_path.read_text().splitlines()] if done_path.exists() else []
    rows = []
    for spec in args.runs:
        data, run = spec.split(":")
        old = [r for r in done if (r["data"], r["run"]) == (data, run)]
        if old:
            rows.append(old[-1])
            continue
        name, params = RUNS[run]
        det = genad.create(name, **params)
        t0 = time.perf_counter()
        out = run_benchmark(DATA / data, det, shots=SHOTS[data], seed=0, progress=False)
        s = out.summary
        training = getattr(det, "training_", None) or {}
        row = {
            "data": data,
            "run": run,
            "references": SHOTS[data],
            "image_auroc": s["image_auroc"],
            "pixel_auroc": s.get("pixel_auroc"),
            "aupro": s.get("aupro"),
            "image_f1_max": s["image_f1_max"],
            "decision_f1": (s.get("decision") or {}).get("f1"),
            "false_alarm_rate": (s.get("decision") or {}).get("false_alarm_rate"),
            "training_seconds": training.get("seconds"),
            "epochs_run": training.get("epochs_run"),
            "best_epoch": training.get("best_epoch"),
            "images_per_second": s.get("images_per_second"),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        with done_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def f3(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    lines = [
        "| data (references) | engine | image AUROC | pixel AUROC | AUPRO | decision F1 | false alarms | training | scoring |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        train = "-" if r["training_seconds"] is None else f"{r['training_seconds']:.0f} s ({r['epochs_run']} epochs)"
        ips = "-" if not r["images_per_second"] else f"{r['images_per_second']:.1f} img/s"
        far = "-" if r["false_alarm_rate"] is None else f"{100 * r['false_alarm_rate']:.1f}%"
        lines.append(
            f"| {r['data']} ({r['references']}) | {r['run']} | {f3(r['image_auroc'])} | {f3(r['pixel_auroc'])} | "
            f"{f3(r['aupro'])} | {f3(r['decision_f1'])} | {far} | {train} | {ips} |"
        )
    (res / "oneclass.md").write_text(
        f"# One-class engine ({time.strftime('%Y-%m-%d')}, 2 CPU cores, seed 0)\n\n" + "\n".join(lines) + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
