"""Time the visual-prompt steps (divide, set-of-mark, region scores -> map) on real images.

    .venv/bin/python benchmarks/visual_prompt_speed.py

Median of 3 runs per method; the proposals method uses a random map (the embedded engine's
own time is not included).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
IMAGES = {
    "magnetic tile": DATA / "magnetic_tile/test/crack/exp1_num_249594.jpg",
    "MVTec bottle (GPT-4V case)": DATA / "gpt4v_cases/Cases/Industrial-AL/Case1/abnormal.png",
}


def main() -> None:
    from genad.engines.lmm.text2seg import scores_to_map
    from genad.engines.lmm.visual_prompt import divide, render_set_of_mark
    from genad.io.images import read_image

    rng = np.random.default_rng(0)
    print("| image | method | regions | divide ms | set-of-mark ms | map ms |")
    print("|---|---|---|---|---|---|")
    for name, path in IMAGES.items():
        img = read_image(path)
        amap = rng.random(img.shape[:2]).astype(np.float32)
        for method, n in [("grid", 4), ("slic", 16), ("proposals", 3)]:
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                masks = divide(img, method, n, anomaly_map=amap)
                t1 = time.perf_counter()
                render_set_of_mark(img, masks)
                t2 = time.perf_counter()
                scores_to_map(masks, {1: 0.9}, img.shape[:2])
                ts.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
            d, r, m = np.median(ts, axis=0) * 1000
            print(
                f"| {name} {img.shape[1]}x{img.shape[0]} | {method} {n} | {len(masks)} | {d:.0f} | {r:.0f} | {m:.0f} |"
            )


if __name__ == "__main__":
    main()
