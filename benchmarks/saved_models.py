"""What a saved model saves: load + predict against fit + predict, in one process and as commands.

    .venv/bin/python benchmarks/saved_models.py [--shots 16] [--repeats 3]

In one Python process (after a warm-up that loads the backbone): fit on `--shots` magnetic_tile
train images then predict 7 test images, against genad.load(model) then predict the same 7;
then the whole commands `genad detect TEST --normal REFS` and `genad detect TEST --model FILE`
(fresh processes, so each pays Python, torch and backbone start-up). Medians of `--repeats`.
Writes benchmarks/results/saved_models.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "magnetic_tile"
GENAD = str(Path(sys.executable).with_name("genad"))


def _load() -> str:
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "?"


def main() -> None:
    import genad
    from genad.io import load_inputs

    ap = argparse.ArgumentParser()
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    train = sorted((DATA / "train" / "good").glob("*"))
    tests = sorted(p for p in (DATA / "test").rglob("*") if p.is_file())
    work = Path(tempfile.mkdtemp(prefix="genad-bench-"))
    refs_dir, test_dir = work / "refs", work / "test"
    refs_dir.mkdir()
    test_dir.mkdir()
    for p in rng.sample(train, args.shots):
        shutil.copy(p, refs_dir / p.name)
    for p in rng.sample(tests, 7):
        shutil.copy(p, test_dir / p.name)
    refs, test = load_inputs([refs_dir]), load_inputs([test_dir])
    load_start = _load()

    genad.create("embedded").fit(refs[:2]).predict(test[:1])  # warm-up: backbone loaded once
    fit_predict, load_predict, fit_only = [], [], []
    model = work / "station.genad"
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        det = genad.create("embedded").fit(refs)
        t1 = time.perf_counter()
        a = det.predict(test)
        fit_predict.append(time.perf_counter() - t0)
        fit_only.append(t1 - t0)
        det.save(model)
        t0 = time.perf_counter()
        b = genad.load(model).predict(test)
        load_predict.append(time.perf_counter() - t0)
        assert max(abs(x.score - y.score) for x, y in zip(a, b)) == 0.0

    def run(cmd: list[str]) -> float:
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "NO_COLOR": "1"})
        return time.perf_counter() - t0

    cli_normal = [run([GENAD, "detect", str(test_dir), "--normal", str(refs_dir)]) for _ in range(args.repeats)]
    cli_model = [run([GENAD, "detect", str(test_dir), "--model", str(model)]) for _ in range(args.repeats)]
    med = statistics.median
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": "2 CPU cores",
        "load_average": [load_start, _load()],
        "shots": args.shots,
        "test_images": 7,
        "repeats": args.repeats,
        "model_bytes": model.stat().st_size,
        "in_process_fit_seconds": med(fit_only),
        "in_process_fit_predict_seconds": med(fit_predict),
        "in_process_load_predict_seconds": med(load_predict),
        "in_process_speedup": med(fit_predict) / med(load_predict),
        "cli_detect_normal_seconds": med(cli_normal),
        "cli_detect_model_seconds": med(cli_model),
        "cli_speedup": med(cli_normal) / med(cli_model),
    }
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "saved_models.json").write_text(json.dumps(out, indent=2) + "\n")
    md = [
        "# Saved models: load + predict against fit + predict",
        "",
        f"`{' '.join(['.venv/bin/python', 'benchmarks/saved_models.py', *sys.argv[1:]])}`; {out['date']}, "
        f"{out['machine']}, load average {out['load_average'][0]} -> {out['load_average'][1]}; "
        f"magnetic_tile, {args.shots} references, 7 test images, median of {args.repeats}; model file "
        f"{out['model_bytes'] / 2**20:.1f} MiB.",
        "",
        "| what | seconds |",
        "|---|---|",
        f"| in one process: fit ({args.shots} refs) | {out['in_process_fit_seconds']:.2f} |",
        f"| in one process: fit + predict 7 | {out['in_process_fit_predict_seconds']:.2f} |",
        f"| in one process: load + predict 7 | {out['in_process_load_predict_seconds']:.2f} "
        f"({out['in_process_speedup']:.1f}x faster) |",
        f"| `genad detect TEST --normal REFS` | {out['cli_detect_normal_seconds']:.2f} |",
        f"| `genad detect TEST --model FILE` | {out['cli_detect_model_seconds']:.2f} ({out['cli_speedup']:.1f}x faster) |",
    ]
    (res / "saved_models.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
