"""What look-twice fusion can gain, measured with a simulated verifier (no LMM, no key).

    .venv/bin/python benchmarks/look_twice_oracle.py --per-type 8 --good 40 --shots 4

The embedded engine (few-shot) scores a balanced slice of magnetic_tile; look-twice proposes
its top-k regions per image exactly as in `LookTwiceDetector`, and a *simulated* verifier
answers for each region from the ground-truth mask (anomalous when >= 10% of the region's
pixels are defect), right with probability `accuracy`. The answers go through the detector's
own parsing and fusion (`_plan`/`_finish`), so only the HTTP call is skipped. The figures are
an upper bound for a verifier of that accuracy, not a measurement of any real model.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def main() -> None:
    from genad.engines.lmm.hybrid import LookTwiceDetector, normalise_embedded
    from genad.engines.lmm.provider import LMMClient, LMMConfig, LMMReply
    from genad.io.mvtec import load_mvtec, load_mvtec_train
    from genad.metrics.image import image_ap, image_auroc
    from genad.metrics.pixel import PixelMetrics
    from genad.types import Usage

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="magnetic_tile")
    ap.add_argument("--per-type", type=int, default=8, help="test images per defect type")
    ap.add_argument("--good", type=int, default=40, help="defect-free test images")
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--weight", type=float, nargs="+", default=[0.5])
    ap.add_argument("--accuracy", type=float, nargs="+", default=[1.0, 0.8])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--embedded",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="embedded engine settings, e.g. strides=8,16 (default: the look-twice defaults)",
    )
    args = ap.parse_args()

    rng = random.Random(args.seed)
    test = load_mvtec(DATA / args.data, split="test")
    by_type: dict[str, list] = {}
    for s in test:
        by_type.setdefault(s.truth.defect_type or "good", []).append(s)
    want = {t: (args.good if t == "good" else args.per_type) for t in by_type}
    picked = [s for t in sorted(by_type) for s in rng.sample(by_type[t], min(want[t], len(by_type[t])))]
    refs = rng.sample(load_mvtec_train(DATA / args.data), args.shots)

    # the LMM is never called here; the client only carries settings
    client = LMMClient(LMMConfig(base_url="http://127.0.0.1:9/v1", model="simulated", api_key="none", cache_dir=None))
    bad = [kv for kv in args.embedded if "=" not in kv]
    if bad:
        ap.error(f"--embedded takes key=value settings, got {bad}")
    params = dict(kv.split("=", 1) for kv in args.embedded)
    det = LookTwiceDetector(k=args.k, client=client, embedded_params=params or None)
    t0 = time.perf_counter()
    det.fit(refs)
    base = det.embedded.predict(picked)
    t_emb = time.perf_counter() - t0

    labels = [int(s.label) for s in picked]
    rows: dict[str, dict] = {}
    emb_scores = [float(normalise_embedded(np.float32(r.score), r.threshold)) for r in base]
    pm = PixelMetrics()
    for s, r in zip(picked, base):
        pm.add(r.anomaly_map, s.mask())
    rows["embedded alone"] = {
        "image_auroc": image_auroc(labels, emb_scores),
        "image_ap": image_ap(labels, emb_scores),
        "accuracy@0.5": float(np.mean([(x >= 0.5) == bool(y) for x, y in zip(emb_scores, labels)])),
        **{k: v for k, v in pm.compute().items() if k in ("pixel_auroc", "aupro")},
    }
    # how often the proposals cover a defect at all: the ceiling of any verifier
    covered = 0
    for s, r in zip(picked, base):
        plan = det._plan(s, r)
        gt = s.mask()
        if s.label and gt is not None and not isinstance(plan, str):
            covered += any(
                (gt & (plan.labels == i)).sum() >= 0.1 * (plan.labels == i).sum() for i in range(1, plan.n + 1)
            )
    t_fuse = 0.0
    runs = [(w, acc) for w in args.weight for acc in args.accuracy]
    for w, acc in runs:
        det.weight = w
        vr = random.Random(args.seed + 1)
        scores, pm = [], PixelMetrics()
        for s, r in zip(picked, base):
            t1 = time.perf_counter()
            plan = det._plan(s, r)
            gt = s.mask()
            gt = np.zeros(plan.labels.shape, bool) if gt is None else gt
            verdicts = []
            for i in range(1, plan.n + 1):
                region = plan.labels == i
                truth = bool((gt & region).sum() >= 0.1 * region.sum())
                said = truth if vr.random() < acc else not truth
                verdicts.append({"region": i, "anomalous": said, "confidence": 0.9, "reason": "simulated"})
            reply = LMMReply(json.dumps({"regions": verdicts}), None, Usage(), cached=False)
            res = det._finish(s, r, plan, reply if plan.n else None)
            t_fuse += time.perf_counter() - t1
            scores.append(res.score)
            pm.add(res.anomaly_map, s.mask())
        rows[f"look-twice w={w}, verifier {acc:.0%} right"] = {
            "image_auroc": image_auroc(labels, scores),
            "image_ap": image_ap(labels, scores),
            "accuracy@0.5": float(np.mean([(x >= 0.5) == bool(y) for x, y in zip(scores, labels)])),
            **{k: v for k, v in pm.compute().items() if k in ("pixel_auroc", "aupro")},
        }
    n = len(picked)
    print(
        f"{args.data}: {n} test images ({sum(labels)} defective), {args.shots}-shot, k={args.k}; "
        f"embedded {t_emb / n:.2f} s/img, proposals+marks+fusion "
        f"{t_fuse / n / len(runs) * 1000:.0f} ms/img; {covered} of {sum(labels)} defective images "
        "have a proposal that is >= 10% defect"
    )
    print("| run | image AUROC | image AP | accuracy @0.5 | pixel AUROC | AUPRO |")
    print("|---|---|---|---|---|---|")
    for name, m in rows.items():
        print(
            f"| {name} | {m['image_auroc']:.3f} | {m['image_ap']:.3f} | {m['accuracy@0.5']:.3f} | "
            f"{m['pixel_auroc']:.3f} | {m['aupro']:.3f} |"
        )


if __name__ == "__main__":
    main()
