"""Peak memory and runtime of pixel metrics (pixel AUROC, AP, AUPRO) on a large generated set.

    .venv/bin/python benchmarks/metrics_memory.py            # 1,000 images of 512x512
    .venv/bin/python benchmarks/metrics_memory.py --n 200 --size 256

Maps and masks are generated one at a time (a noisy blurred copy of random elliptic defects;
every fourth image is defect-free), so the data itself never sits in memory: the figures are
those of genad.metrics.pixel.PixelMetrics. Peak RSS comes from resource.getrusage (the whole
process, Python and libraries included); tracemalloc gives the peak of Python/numpy
allocations made during the run. With --check N the first N images are also scored exactly
(scikit-learn on the concatenated pixels, full-sort AUPRO) to report the approximation error.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from scipy import ndimage

from genad.metrics.pixel import PixelMetrics


def generate(i: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, i])
    yy, xx = np.ogrid[:size, :size]
    mask = np.zeros((size, size), bool)
    if i % 4:
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, size, 2)
            ry, rx = rng.uniform(3, size / 8, 2)
            mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    # blur at a quarter of the resolution, as patch-feature maps are, then upsample
    small = ndimage.zoom(mask.astype(np.float32), 0.25, order=1)
    amap = ndimage.zoom(ndimage.gaussian_filter(small, 1.5), 4, order=1)[:size, :size] * 2.5
    amap += rng.normal(0, 0.6, (size, size)).astype(np.float32)
    return amap.astype(np.float32), mask


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--check", type=int, default=0, help="also score the first N images exactly")
    args = ap.parse_args(argv)

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    pm = PixelMetrics()
    t_gen = 0.0
    t0 = time.perf_counter()
    for i in range(args.n):
        g = time.perf_counter()
        amap, mask = generate(i, args.size)
        t_gen += time.perf_counter() - g
        pm.add(amap, mask)
    result = pm.compute()
    total = time.perf_counter() - t0
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

    out = {
        "images": args.n,
        "size": args.size,
        "pixels": args.n * args.size * args.size,
        **result,
        "seconds_metrics": round(total - t_gen, 2),
        "seconds_generating": round(t_gen, 2),
        "peak_rss_mib": round(rss / 1024, 1),
        "rss_before_mib": round(rss0 / 1024, 1),
        "tracemalloc_peak_mib": round(traced_peak / 2**20, 1),
    }
    if args.check:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from sklearn.metrics import average_precision_score, roc_auc_score

        from metrics_helpers import exact_aupro

        pairs = [generate(i, args.size) for i in range(args.check)]
        sub = PixelMetrics()
        for a, m in pairs:
            sub.add(a, m)
        approx = sub.compute()
        y = np.concatenate([m.ravel() for _, m in pairs])
        s = np.concatenate([a.ravel() for a, _ in pairs])
        exact = {
            "pixel_auroc": roc_auc_score(y, s),
            "pixel_ap": average_precision_score(y, s),
            "aupro": exact_aupro([a for a, _ in pairs], [m for _, m in pairs]),
        }
        out["check_images"] = args.check
        out["abs_error_vs_exact"] = {k: float(abs(approx[k] - exact[k])) for k in exact}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
