"""Full-shot fitting of the embedded engine: all 476 magnetic_tile train images as references.

    .venv/bin/python benchmarks/fullshot.py            # about 8 minutes on 2 cores

Steps, each in its own subprocess (so that each peak RSS is its own), the feature cache in a
fresh temporary folder (GENAD_CACHE_DIR), never ~/.cache:

  fit-cold   fit() on the 476 images, empty feature cache: seconds, peak RSS
  fit-warm   the same fit again: features from the cache
  eval-476   genad.evaluate.run_benchmark(data, "embedded", shots=476) (fit warm), full test set
  eval-16    the same at 16 shots, for comparison (and against benchmarks/results/embedded.json)
  coreset    greedy_coreset time per N on the real patch features; the plain farthest-point loop
             it replaced (timed over a few hundred picks, extrapolated) and both selections
             compared on a subset
  loo        the calibration the slow method used (8 leave-one-out banks, each its own coreset)
             against leave-one-out by masking: thresholds, and the decisions each would make on
             eval-476's scores

Writes benchmarks/results/fullshot.json and fullshot.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
DATA_DIR = DATA / "magnetic_tile"
LIMIT: int | None = None
METRICS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro")


def peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def load_average() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return " ".join(f"{v:.2f}" for v in os.getloadavg())


def references(data: Path, shots: int, seed: int):
    from genad.evaluate import draw_references
    from genad.io.mvtec import load_mvtec

    refs, _, _ = draw_references(data, load_mvtec(data, "test"), shots, seed)
    return refs


# -- steps (each in a child process) ----------------------------------------------------------
def step_fit(a: argparse.Namespace) -> dict:
    import genad

    refs = references(a.data, a.shots, a.seed)
    t = time.perf_counter()
    det = genad.create("embedded").fit(refs)
    seconds = time.perf_counter() - t
    cache = det._cache
    assert det.bank_ is not None and det.calibration_ is not None
    return {
        "references": len(refs),
        "fit_seconds": round(seconds, 2),
        "peak_rss_mb": peak_mb(),
        "bank_rows": det.bank_.size,
        "cache_hits": None if cache is None else cache.hits,
        "cache_misses": None if cache is None else cache.misses,
        "threshold": det.calibration_.threshold,
        "reference_scores": det.reference_scores_,
    }


def step_eval(a: argparse.Namespace) -> dict:
    from genad.evaluate import run_benchmark

    with tempfile.TemporaryDirectory(prefix="genad-fullshot-") as tmp:
        run = run_benchmark(
            a.data, "embedded", shots=a.shots, seed=a.seed, limit=a.limit, run_dir=Path(tmp), progress=False
        )
    s = run.summary
    scores = [r.score for r in run.results]
    labels = [getattr(x, "label", None) for x in run.samples]
    Path(a.scores_out).write_text(json.dumps({"scores": scores, "labels": labels}))
    keep = (*METRICS, "decision", "n_images", "fit_seconds", "predict_seconds", "images_per_second", "seconds")
    return {k: s.get(k) for k in keep} | {"peak_rss_mb": s.get("peak_rss_mb")}


def _reference_features(a: argparse.Namespace):
    """The references' features in fit()'s order (from the warm cache) and a fitted detector."""
    import genad

    refs = references(a.data, a.shots, a.seed)
    det = genad.create("embedded").fit(refs)
    got = dict(det._features(refs, det.scale_, cached=True))
    first: dict = {}
    for i in range(len(refs)):
        first.setdefault(got[i].work, i)
    order = sorted(got, key=lambda i: (first[got[i].work], i))
    return det, [got[i] for i in order]


def plain_greedy(x, size: int, proj_dim: int = 128, seed: int = 0, limit: int | None = None):
    """The farthest-point loop greedy_coreset replaced (before 2026-12): one pass over all rows
    per pick. `limit`: stop after that many picks (for timing)."""
    import torch

    n, d = x.shape
    g = torch.Generator().manual_seed(seed)
    if d > proj_dim:
        x = x @ (torch.randn(d, proj_dim, generator=g) / proj_dim**0.5)
    start = int(torch.randint(n, (1,), generator=g))
    chosen = [start]
    mind = ((x - x[start]) ** 2).sum(1)
    for _ in range(1, min(size, limit or size)):
        i = int(torch.argmax(mind))
        chosen.append(i)
        mind = torch.minimum(mind, ((x - x[i]) ** 2).sum(1))
    return torch.tensor(chosen)


def step_coreset(a: argparse.Namespace) -> dict:
    import torch

    from genad.engines.embedded.search import coverage_radius, greedy_coreset

    det, feats = _reference_features(a)
    r = sorted(feats[0].by_r)[0]
    allf = torch.cat([f.by_r[r] for f in feats])
    n_all = int(allf.shape[0])
    cap = det.bank_cap
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(n_all, generator=g)
    rows = []
    for n in (50_000, 100_000, n_all):
        x = allf[perm[:n]].contiguous() if n < n_all else allf
        t = time.perf_counter()
        greedy_coreset(x, cap)
        rows.append({"n": n, "size": cap, "seconds": round(time.perf_counter() - t, 2)})
        print(rows[-1], file=sys.stderr, flush=True)
    picks = 100
    t = time.perf_counter()
    plain_greedy(allf, cap, limit=picks)
    per_pick = (time.perf_counter() - t) / picks
    # both selections on a subset, coverage radius in the full feature space
    n_cmp, k_cmp = min(50_000, n_all), 2048
    x = allf[perm[:n_cmp]].contiguous()
    fast = greedy_coreset(x, k_cmp)
    t = time.perf_counter()
    plain = plain_greedy(x, k_cmp)
    plain_s = time.perf_counter() - t
    rand = torch.randperm(n_cmp, generator=g)[:k_cmp]
    return {
        "patches": n_all,
        "dims": int(allf.shape[1]),
        "fast": rows,
        "plain_seconds_per_pick_at_all": round(per_pick, 4),
        "plain_estimated_seconds_at_all": round(per_pick * cap),
        "compare": {
            "n": n_cmp,
            "size": k_cmp,
            "plain_seconds": round(plain_s, 1),
            "same_rows": len(set(fast.tolist()) & set(plain.tolist())) / k_cmp,
            "radius_fast": coverage_radius(x, fast),
            "radius_plain": coverage_radius(x, plain),
            "radius_random": coverage_radius(x, rand),
        },
        "peak_rss_mb": peak_mb(),
    }


def step_loo(a: argparse.Namespace) -> dict:
    from genad.decision import from_reference_scores
    from genad.engines.embedded.few_shot import MemoryBank

    det, feats = _reference_features(a)
    t = time.perf_counter()
    explicit = []
    for i in range(min(len(feats), 8)):
        bank = MemoryBank(det.bank_cap, det.seed).build([f for j, f in enumerate(feats) if j != i])
        explicit.append(det._finish(feats[i], bank.score(feats[i]))[1])
    seconds = time.perf_counter() - t
    assert det.calibration_ is not None
    return {
        "masked_scores": det.reference_scores_,
        "masked_threshold": det.calibration_.threshold,
        "explicit_scores": explicit,
        "explicit_threshold": from_reference_scores(explicit, det.few_shot_k).threshold,
        "explicit_seconds": round(seconds, 1),
    }


STEPS = {"fit": step_fit, "eval": step_eval, "coreset": step_coreset, "loo": step_loo}


# -- the parent ---------------------------------------------------------------------------------
def child(step: str, shots: int, env: dict, scores_out: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--step", step, "--shots", str(shots), "--data", str(DATA_DIR)]
    if LIMIT is not None:
        cmd += ["--limit", str(LIMIT)]
    if scores_out is not None:
        cmd += ["--scores-out", str(scores_out)]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-4000:])
        raise SystemExit(f"step {step} failed")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["wall_seconds"] = round(time.perf_counter() - t, 1)
    print(f"{step} {shots}: {out}", flush=True)
    return out


def decisions_at(scores_file: Path, threshold: float) -> dict:
    import numpy as np

    from genad.metrics.image import decision_metrics

    d = json.loads(scores_file.read_text())
    keep = [i for i, (s, y) in enumerate(zip(d["scores"], d["labels"])) if s is not None and y is not None]
    y = np.asarray([d["labels"][i] for i in keep])
    s = np.asarray([d["scores"][i] for i in keep])
    m = decision_metrics(y, s > threshold) or {}
    return {k: m.get(k) for k in ("f1", "precision", "recall", "false_alarm_rate", "flagged")}


def f3(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if v < 10 else f"{v:.0f}"
    return "-" if v is None else str(v)


def own(d: dict | None) -> str:
    return "-" if not d else f"{d['f1']:.3f} ({d['precision']:.2f} / {d['recall']:.2f})"


def markdown(res: dict) -> str:
    fc, fw = res["fit_cold"], res["fit_warm"]
    e476, e16 = res["eval_476"], res["eval_16"]
    before = res.get("before_16") or {}
    lines = [
        "# Full-shot fitting (magnetic_tile, all 476 train images)",
        "",
        f"Date: {res['date']}. Command: `{res['command']}`. Machine: {res['machine']}.",
        f"Load at start: `{res['load_start']}`; at end: `{res['load_end']}`.",
        "",
        "## Fit",
        "",
        "| fit | references | seconds | peak RSS MB | features from cache | bank rows | threshold |",
        "|---|---|---|---|---|---|---|",
        f"| cold cache | {fc['references']} | {fc['fit_seconds']} | {fc['peak_rss_mb']:.0f} | "
        f"{fc['cache_hits']} / {fc['references']} | {fc['bank_rows']} | {fc['threshold']:.4f} |",
        f"| warm cache | {fw['references']} | {fw['fit_seconds']} | {fw['peak_rss_mb']:.0f} | "
        f"{fw['cache_hits']} / {fw['references']} | {fw['bank_rows']} | {fw['threshold']:.4f} |",
        "",
        "## Full test set (868 images), `run_benchmark(..., shots=K)`",
        "",
        "| shots | image AUROC | pixel AUROC | AUPRO | F1-max | own decisions F1 (P / R) | fit s | predict s | images/s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, e in (("476", e476), ("16", e16)):
        lines.append(
            f"| {k} | {f3(e['image_auroc'])} | {f3(e['pixel_auroc'])} | {f3(e['aupro'])} | {f3(e['image_f1_max'])} | "
            f"{own(e.get('decision'))} | {e['fit_seconds']:.1f} | {e['predict_seconds']:.0f} | "
            f"{f3(e['images_per_second'])} | {e['peak_rss_mb']:.0f} |"
        )
    if before:
        lines.append(
            f"| 16, before (embedded.json) | {f3(before.get('image_auroc'))} | {f3(before.get('pixel_auroc'))} | "
            f"{f3(before.get('aupro'))} | {f3(before.get('image_f1_max'))} | {own(before.get('decision'))} | "
            f"{f3(before.get('fit_seconds'))} | {f3(before.get('predict_seconds'))} | "
            f"{f3(before.get('images_per_second'))} | {f3(before.get('peak_rss_mb'))} |"
        )
    c = res.get("coreset")
    if c:
        lines += [
            "",
            f"## Coreset ({c['patches']} patches of {c['dims']} dimensions, to {c['fast'][0]['size']})",
            "",
            "| patches N | greedy_coreset seconds |",
            "|---|---|",
        ]
        lines += [f"| {r['n']} | {r['seconds']} |" for r in c["fast"]]
        cmp_ = c["compare"]
        lines += [
            "",
            f"The plain loop it replaced: {c['plain_seconds_per_pick_at_all'] * 1000:.0f} ms per pick at "
            f"N = {c['patches']}, so about {c['plain_estimated_seconds_at_all']} s for the bank.",
            f"Both on a random {cmp_['n']}-patch subset, {cmp_['size']} picks: the plain loop took "
            f"{cmp_['plain_seconds']} s; {cmp_['same_rows']:.1%} of the rows are the same; coverage radius "
            f"(largest distance to the nearest chosen row, full features) fast {cmp_['radius_fast']:.4f}, "
            f"plain {cmp_['radius_plain']:.4f}, a random subset {cmp_['radius_random']:.4f}.",
        ]
    lo = res.get("loo")
    if lo:
        lines += [
            "",
            "## Calibration: leave-one-out by masking vs one coreset per left-out reference",
            "",
            "| calibration | 8 reference scores (mean) | threshold | seconds | decisions F1 (P / R), false alarms |",
            "|---|---|---|---|---|",
        ]
        for name, sc, thr, sec, dec in (
            ("masking (now)", lo["masked_scores"], lo["masked_threshold"], "-", lo["decisions_masked"]),
            (
                "8 banks (before)",
                lo["explicit_scores"],
                lo["explicit_threshold"],
                lo["explicit_seconds"],
                lo["decisions_explicit"],
            ),
        ):
            mean = sum(sc) / len(sc)
            lines.append(
                f"| {name} | {mean:.4f} | {thr:.4f} | {sec} | {dec['f1']:.3f} ({dec['precision']:.2f} / "
                f"{dec['recall']:.2f}), {dec['false_alarm_rate']:.1%} |"
            )
        lines.append("")
        lines.append(
            "(the 8 banks were built with the fast coreset; with the plain loop they took about 20 minutes each)"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA / "magnetic_tile")
    ap.add_argument("--shots", type=int, default=476)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="stratified test subset (a quick check)")
    ap.add_argument("--skip", nargs="*", default=[], choices=("coreset", "loo", "eval-16"))
    ap.add_argument("--step", choices=tuple(STEPS), help=argparse.SUPPRESS)
    ap.add_argument("--scores-out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.step:
        print(json.dumps(STEPS[a.step](a)))
        return
    global DATA_DIR, LIMIT
    DATA_DIR, LIMIT = a.data, a.limit

    res: dict = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([Path(sys.executable).name, "benchmarks/fullshot.py", *sys.argv[1:]]),
        "machine": f"2 CPU cores ({platform.processor() or platform.machine()}, {os.cpu_count()} visible)",
        "load_start": load_average(),
    }
    cache = Path(tempfile.mkdtemp(prefix="genad-fullshot-cache-"))
    env = dict(os.environ, GENAD_CACHE_DIR=str(cache))
    scores = cache / "scores.json"
    try:
        res["fit_cold"] = child("fit", a.shots, env)
        res["fit_warm"] = child("fit", a.shots, env)
        res["eval_476"] = child("eval", a.shots, env, scores)
        if "eval-16" not in a.skip:
            res["eval_16"] = child("eval", min(16, a.shots), env, cache / "scores16.json")
        if "coreset" not in a.skip:
            res["coreset"] = child("coreset", a.shots, env)
        if "loo" not in a.skip:
            lo = child("loo", a.shots, env)
            lo["decisions_masked"] = decisions_at(scores, lo["masked_threshold"])
            lo["decisions_explicit"] = decisions_at(scores, lo["explicit_threshold"])
            res["loo"] = lo
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    res["load_end"] = load_average()
    before = RESULTS / "embedded.json"
    if before.exists():
        res["before_16"] = json.loads(before.read_text()).get("magnetic_tile|effnet-lite0|16-shot|full")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fullshot.json").write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(res) if "eval_16" in res else json.dumps(res, indent=1)
    (RESULTS / "fullshot.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
