"""Benchmark the embedded engine: zero-shot and few-shot, per backbone, per dataset.

    .venv/bin/python benchmarks/embedded.py                          # the full table
    .venv/bin/python benchmarks/embedded.py --data magnetic_tile --shots 0 4 --limit 200

Each (dataset, backbone, shots) run goes through genad.evaluate.run_benchmark in its own
subprocess, so that its peak RAM is its own. Results are merged into
benchmarks/results/embedded.json (keyed by run) and rendered to benchmarks/results/embedded.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_SHOTS = {"magnetic_tile": [0, 1, 4, 16], "brain_mri": [0, 4]}
KEYS = (
    "image_auroc",
    "image_ap",
    "image_f1_max",
    "decision",
    "pixel_auroc",
    "aupro",
    "n_images",
    "images_per_second",
    "seconds",
    "fit_seconds",
    "predict_seconds",
    "peak_rss_mb",
)


def run_one(data: str, backbone: str, shots: int, limit: int | None, seed: int, params: dict) -> dict:
    from genad.evaluate import run_benchmark

    p = {"backbone": backbone, **params}
    with tempfile.TemporaryDirectory(prefix="genad-bench-") as tmp:
        run = run_benchmark(
            DATA / data, "embedded", p, shots=shots, seed=seed, limit=limit, run_dir=Path(tmp), progress=False
        )
    s = run.summary
    return {k: s.get(k) for k in KEYS} | {"per_type": s.get("per_type"), "params": p}


def key(data: str, backbone: str, shots: int, limit: int | None, tag: str) -> str:
    return f"{data}|{backbone}|{shots}-shot|{'full' if limit is None else f'limit{limit}'}{'|' + tag if tag else ''}"


def fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if v < 10 else f"{v:.0f}"
    return str(v)


def own(d: dict | None) -> str:
    """F1 (precision / recall) of the detector's own decisions; '-' for runs measured before."""
    return "-" if not d else f"{d['f1']:.3f} ({d['precision']:.2f} / {d['recall']:.2f})"


def write_markdown(results: dict) -> Path:
    lines = [
        "| dataset | backbone | shots | set | image AUROC | pixel AUROC | AUPRO | F1-max | own decisions F1 (P / R) | images/s | seconds | peak RAM MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k in sorted(results):
        r = results[k]
        data, backbone, shots, subset, *tag = k.split("|")
        lines.append(
            f"| {data} | {backbone}{' ' + tag[0] if tag else ''} | {shots} | {subset} ({r.get('n_images')}) | "
            f"{fmt(r.get('image_auroc'))} | {fmt(r.get('pixel_auroc'))} | {fmt(r.get('aupro'))} | "
            f"{fmt(r.get('image_f1_max'))} | {own(r.get('decision'))} | {fmt(r.get('images_per_second'))} | "
            f"{fmt(r.get('seconds'))} | "
            f"{fmt(r.get('peak_rss_mb'))} |"
        )
    path = RESULTS / "embedded.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=["magnetic_tile", "brain_mri"])
    ap.add_argument("--backbone", nargs="+", default=["effnet-lite0", "dinov2-s"])
    ap.add_argument("--shots", nargs="+", type=int, default=None, help="default: per dataset")
    ap.add_argument("--limit", type=int, default=None, help="stratified subset of the test set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--params", default="{}", help="extra detector parameters as JSON")
    ap.add_argument("--tag", default="", help="label for a non-default configuration")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    params = json.loads(a.params)
    if a.one:  # child process: one run, JSON on stdout's last line
        r = run_one(a.data[0], a.backbone[0], a.shots[0], a.limit, a.seed, params)
        print(json.dumps(r))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "embedded.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    for data in a.data:
        for backbone in a.backbone:
            for shots in a.shots or DEFAULT_SHOTS.get(data, [0, 4]):
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    "--data",
                    data,
                    "--backbone",
                    backbone,
                    "--shots",
                    str(shots),
                    "--seed",
                    str(a.seed),
                    "--params",
                    a.params,
                ]
                if a.limit:
                    cmd += ["--limit", str(a.limit)]
                t = time.time()
                p = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
                if p.returncode != 0:
                    print(f"{data} {backbone} {shots}-shot FAILED:\n{p.stderr[-2000:]}", flush=True)
                    continue
                r = json.loads(p.stdout.strip().splitlines()[-1])
                r["wall_seconds"] = round(time.time() - t, 1)
                r["load_average_1min"] = os.getloadavg()[0]
                k = key(data, backbone, shots, a.limit, a.tag)
                # Re-read before writing: another invocation may have added runs meanwhile.
                results = json.loads(out.read_text()) if out.exists() else {}
                results[k] = r
                print(k, {x: r.get(x) for x in KEYS}, flush=True)
                out.write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(write_markdown(results))


if __name__ == "__main__":
    main()
