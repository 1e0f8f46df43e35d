"""Input normalisation as a measured choice: the weights' own (x - 0.5) / 0.5 against ImageNet's
mean/std, on brain_mri and magnetic_tile at 0/1/4/16 shots, and what `normalization="auto"`
picks (genad.engines.embedded.detector.choose_normalization).

    .venv/bin/python benchmarks/normalization.py [--data brain_mri magnetic_tile] [--shots 0 1 4 16]

Each run is genad's protocol (genad.evaluate.run_benchmark, seed 0, full test sets; brain_mri has
no train split, so its references come from test/good and are left out of the scored set).
Writes benchmarks/results/normalization.{json,md}; each finished run is appended to
benchmarks/results/normalization.jsonl at once and skipped when the script runs again (a run of
the whole grid takes about two hours on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def main() -> None:
    import genad
    from genad.engines.embedded.detector import choose_normalization
    from genad.evaluate import run_benchmark
    from genad.io.mvtec import load_mvtec

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", nargs="+", default=["brain_mri", "magnetic_tile"])
    ap.add_argument("--shots", type=int, nargs="+", default=[0, 1, 4, 16])
    ap.add_argument("--norms", nargs="+", default=["own", "imagenet"])
    args = ap.parse_args()
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    done_path = res / "normalization.jsonl"
    done = [json.loads(line) for line in done_path.read_text().splitlines()] if done_path.exists() else []
    rows = []
    for data in args.data:
        auto = choose_normalization(list(load_mvtec(DATA / data, "test")))
        for shots in args.shots:
            for norm in args.norms:
                old = [r for r in done if (r["data"], r["shots"], r["normalization"]) == (data, shots, norm)]
                if old:
                    rows.append({**old[-1], "auto_picks": auto})
                    continue
                t0 = time.perf_counter()
                det = genad.create("embedded", normalization=norm)
                s = run_benchmark(DATA / data, det, shots=shots, seed=0, progress=False).summary
                rows.append(
                    {
                        "data": data,
                        "shots": shots,
                        "normalization": norm,
                        "auto_picks": auto,
                        "image_auroc": s["image_auroc"],
                        "pixel_auroc": s.get("pixel_auroc"),
                        "aupro": s.get("aupro"),
                        "image_f1_max": s["image_f1_max"],
                        "decision_f1": (s.get("decision") or {}).get("f1"),
                        "seconds": round(time.perf_counter() - t0, 1),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
                with done_path.open("a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")
    (res / "normalization.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "| data | shots | own: image AUROC / pixel AUROC / AUPRO | imagenet: image AUROC / pixel AUROC / AUPRO | auto picks |",
        "|---|---|---|---|---|",
    ]
    for data in args.data:
        for shots in args.shots:
            got = {r["normalization"]: r for r in rows if r["data"] == data and r["shots"] == shots}

            def cell(r: dict | None) -> str:
                if r is None:
                    return "-"
                vals = [r["image_auroc"], r["pixel_auroc"], r["aupro"]]
                return " / ".join("-" if v is None else f"{v:.3f}" for v in vals)

            auto = next(iter(got.values()))["auto_picks"] if got else "-"
            lines.append(f"| {data} | {shots} | {cell(got.get('own'))} | {cell(got.get('imagenet'))} | {auto} |")
    (res / "normalization.md").write_text(
        f"# Input normalisation ({time.strftime('%Y-%m-%d')}, 2 CPU cores, seed 0)\n\n" + "\n".join(lines) + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
