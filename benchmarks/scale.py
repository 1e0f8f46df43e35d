"""Cost as work grows: wall time and peak memory of `genad eval` on magnetic_tile, zero-shot and
4-shot, on 100, 400 and 868 test images (a stratified --limit; 868 is the whole test set),
locally and on a local 2-worker Ray cluster (a head with 2 CPUs on 127.0.0.1, started here).

    .venv/bin/python benchmarks/scale.py [--sizes 100 400 868] [--shots 0 4] [--backends local ray]

Each run is the real command (`genad eval DATA -d embedded --shots K --limit N --json ...`) in
its own process, so nothing is warm but the disk cache. Memory is sampled every 0.2 s from
/proc: the command and its children, plus (Ray) every worker process of the head (`ray::...`);
"peak" is the highest sum seen. Each finished run is appended to
benchmarks/results/scale.jsonl and skipped when the script runs again; the table is
benchmarks/results/scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "magnetic_tile"
FULL = 868


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _tree(pid: int) -> set[int]:
    seen, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo += _children(p)
    return seen


def _ray_workers() -> set[int]:
    pids = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "cmdline").read_bytes().startswith(b"ray::"):
                    pids.add(int(d.name))
            except OSError:
                pass
    return pids


def measure(cmd: list[str], env: dict[str, str], ray: bool) -> tuple[float, float, int]:
    """(wall seconds, peak MB of the command's tree + Ray workers, exit code)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            pids = _tree(proc.pid) | (_ray_workers() if ray else set())
            peak = max(peak, sum(_rss_mb(p) for p in pids))
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _, err = proc.communicate()
    done.set()
    th.join()
    if proc.returncode:
        print(err[-2000:], file=sys.stderr)
    return time.perf_counter() - t0, peak, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 400, FULL])
    ap.add_argument("--shots", type=int, nargs="+", default=[0, 4])
    ap.add_argument("--backends", nargs="+", default=["local", "ray"])
    args = ap.parse_args()
    res = ROOT / "benchmarks" / "results"
    done_path = res / "scale.jsonl"
    done = [json.loads(line) for line in done_path.read_text().splitlines()] if done_path.exists() else []
    genad_cli = str(Path(sys.executable).parent / "genad")
    rows = []
    for backend in args.backends:
        todo = [
            (n, k)
            for k in args.shots
            for n in args.sizes
            if not any((r["backend"], r["n"], r["shots"]) == (backend, n, k) for r in done)
        ]
        rows += [r for r in done if r["backend"] == backend]
        if not todo:
            continue
        from genad.run.ray_backend import LOOPBACK_ENV, local_head

        env = {**os.environ, **LOOPBACK_ENV}
        head = local_head(2, connect_here=False) if backend == "ray" else None
        address = head.__enter__() if head is not None else None
        try:
            for n, k in todo:
                with tempfile.TemporaryDirectory() as tmp:
                    cmd = [genad_cli, "eval", str(DATA), "-d", "embedded", "--shots", str(k), "-q"]
                    cmd += ["--json", f"{tmp}/s.json", "--run-dir", f"{tmp}/run"]
                    if n < FULL:
                        cmd += ["--limit", str(n)]
                    if address:
                        cmd += ["--ray", address]
                    wall, peak, rc = measure(cmd, env, backend == "ray")
                    s = json.loads(Path(f"{tmp}/s.json").read_text()) if rc == 0 else {}
                row = {
                    "backend": backend,
                    "n": n,
                    "shots": k,
                    "wall_s": round(wall, 1),
                    "peak_mb": round(peak),
                    "driver_peak_mb": s.get("peak_rss_mb"),
                    "image_auroc": s.get("image_auroc"),
                    "pixel_auroc": s.get("pixel_auroc"),
                    "exit_code": rc,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
                with done_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
        finally:
            if head is not None:
                head.__exit__(None, None, None)
    lines = [
        "| images | mode | local: wall / peak memory | Ray, 2 workers: wall / peak memory (driver + workers) | image AUROC (equal) |",
        "|---|---|---|---|---|",
    ]
    for k in args.shots:
        for n in args.sizes:
            got = {r["backend"]: r for r in rows if (r["n"], r["shots"]) == (n, k)}

            def cell(r: dict | None) -> str:
                return "-" if r is None else f"{r['wall_s']:.0f} s / {r['peak_mb'] / 1024:.1f} GB"

            aucs = sorted({round(r["image_auroc"], 4) for r in got.values() if r.get("image_auroc") is not None})
            mode = "zero-shot" if k == 0 else f"{k}-shot"
            lines.append(
                f"| {n} | {mode} | {cell(got.get('local'))} | {cell(got.get('ray'))} | {' / '.join(map(str, aucs))} |"
            )
    (res / "scale.md").write_text(
        f"# Cost as work grows ({time.strftime('%Y-%m-%d')}, 2 CPU cores)\n\n" + "\n".join(lines) + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
