"""What look-twice fusion can gain, measured with a simulated verifier (no LMM, no key).

    .venv/bin/python benchmarks/look_twice_oracle.py --per-type 8 --good 40 --shots 4

The embedded engine (few-shot) scores a balanced slice of magnetic_tile; look-twice proposes
its top-k regions per image exactly as in `LookTwiceDetector`, and a *simulated* verifier
answers for each region from the ground-truth mask (anomalous when >= 10% of the region's
pixels are defect), right with probability `accuracy`. The answers go through the detector's
own parsing and fusion (`_plan`/`_finish`), so only the HTTP call is skipped. The figures are
an upper bound for a verifier of that accuracy, not a measurement of any real model.

Region division mode (Text2Segmentation, no embedded engine):

    .venv/bin/python benchmarks/look_twice_oracle.py --regions grid:4 grid:8 slic:60 \
        --accuracy 1.0 0.9 0.8 --out benchmarks/results/region_division

Each `method:n` is a `visual_prompt.divide` call ("grid": n x n cells, "slic": about n SLIC
superpixels) on every selected test image (the same balanced, seeded slice as above), timed
together with `render_set_of_mark`. A *simulated* GPT-4V-AD model then answers from the
ground-truth mask. The truth of region i: anomalous when >= 10% of its pixels are defect (the
look-twice rule above; `--region-rule 0` makes every region that holds a defect pixel
anomalous: a model that sees every defect, however small its share of the region). The model
lists the regions it calls anomalous with score 1.0 and no others (as the GPT-4V-AD prompt
asks), and errs with probability 1 - accuracy, but only as a real model would:

* a miss: each truly anomalous region is left out with probability 1 - accuracy;
* a false alarm: each truly normal region is listed with probability
  (1 - accuracy) * min(1, 3 / n_regions), so a model calls about 3 * (1 - accuracy) normal
  regions anomalous per image whatever the division (not 20 of 60).

The draws use random.Random(seed + 1), restarted for every (rule, division, accuracy); with
`--repeats R` the answers are drawn R times from that stream and the figures averaged (their
standard deviation over the draws is kept as *_sd). The answer becomes a map with
`text2seg.scores_to_map` and an image score with `text2seg.image_score(None, region_scores)`
(the highest listed score; 0 when none is listed). Reported per division and accuracy: pixel
AUROC, AUPRO, image AUROC, how many defective images and how many defects (8-connected
ground-truth components) are covered by at least one listed region that overlaps them, and
the regions listed per good image; per division: regions per image, divide + mark time per
image, and the readability of the numbers: `visual_prompt.font_size_for` for each image's
size, the share of regions too small to hold their number (set-of-mark then prints it outside
the region, over a neighbour) and the share of pixels the lines and numbers paint over.
`--context-image` (default: the 900x900 MVTec bottle of gpt4v_cases) is divided the same way
for the readability figures on a large image. `--out OUT` writes OUT.json and OUT.md. The
figures bound what a model of that accuracy can reach with that division; they do not measure
how well a real model reads small numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
BOTTLE = DATA / "gpt4v_cases/Cases/Industrial-AL/Case1/abnormal.png"
REGION_RULE = 0.1  # a region is anomalous when at least this share of its pixels is defect (look-twice rule)
FALSE_ALARMS = 3  # a wrong model lists about (1 - accuracy) * this many normal regions per image


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
        "--regions",
        nargs="+",
        default=[],
        metavar="METHOD:N",
        help="region division mode: simulated Text2Segmentation per division, e.g. grid:4 grid:8 slic:60",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="region mode: draw the simulated answers this many times (one random stream) and average",
    )
    ap.add_argument(
        "--region-rule",
        type=float,
        nargs="+",
        default=[REGION_RULE],
        metavar="SHARE",
        help="region mode: a region is truly anomalous when at least this share of its pixels is defect "
        "(0: any defect pixel); several values give one run each",
    )
    ap.add_argument("--out", default="", help="region mode: write OUT.json and OUT.md")
    ap.add_argument(
        "--context-image",
        default=str(BOTTLE),
        help="region mode: an image for the readability figures at another size ('' to skip)",
    )
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
    if args.regions:
        divisions = []
        for spec in args.regions:
            method, _, n = spec.partition(":")
            if method not in ("grid", "slic") or not n.isdigit() or int(n) < 1:
                ap.error(f"--regions takes grid:N or slic:N, got {spec!r}")
            divisions.append((method, int(n)))
        if args.repeats < 1:
            ap.error("--repeats must be at least 1")
        region_division(args, picked, divisions)
        return
    refs = rng.sample(load_mvtec_train(DATA / args.data), args.shots)

    # the LMM is never called here; the client only carries settings
    client = LMMClient(LMMConfig(base_url="http://127.0.0.1:9/v1", model="simulated", api_key="none", cache_dir=None))
    bad = [kv for kv in args.embedded if "=" not in kv]
    if bad:
        ap.error(f"--embedded takes key=value settings, got {bad}")
    params = dict(kv.split("=", 1) for kv in args.embedded)
    # no --embedded: leave embedded_params out (the detector takes a dict, not None)
    det = LookTwiceDetector(k=args.k, client=client, **({"embedded_params": params} if params else {}))
    t0 = time.perf_counter()
    det.fit(refs)
    base = det.engine.predict(picked)
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


def _label_boxes_outside(labels: np.ndarray, n: int, font_px: int) -> int:
    """How many of the n regions are too small to hold their number, so that set-of-mark
    prints it outside the region (the rule of `visual_prompt._label_box`)."""
    from PIL import Image, ImageDraw, ImageFont

    draw = ImageDraw.Draw(Image.new("RGB", (8, 8)))
    font = ImageFont.load_default(size=font_px)
    pad = max(2, font_px // 6)
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    outside = 0
    for i in range(1, n + 1):
        l, t, r, b = draw.textbbox((0, 0), str(i), font=font, anchor="mm")
        outside += ((r - l) + 2 * pad) * ((b - t) + 2 * pad) > 0.25 * areas[i]
    return int(outside)


def _readability(image: np.ndarray, method: str, n: int) -> dict:
    """Regions, font size, labels outside their region, the share of pixels the marks (lines and
    numbers) paint over, divide + mark time and the label image (pixel = region number)."""
    from genad.engines.lmm.visual_prompt import as_labels, divide, font_size_for, render_set_of_mark

    t0 = time.perf_counter()
    masks = divide(image, method, n)
    som = render_set_of_mark(image, masks)
    dt = time.perf_counter() - t0
    labels, k = as_labels(masks)
    font = font_size_for(image.shape[:2], k)
    outside = _label_boxes_outside(labels, k, font)
    hidden = float((som != image).any(axis=-1).mean()) if image.ndim == 3 else float((som[..., 0] != image).mean())
    return {
        "regions": k,
        "font_px": font,
        "labels_outside": outside,
        "marks_hide": hidden,
        "seconds": dt,
        "labels": labels,
    }


def region_division(args: argparse.Namespace, picked: list, divisions: list[tuple[str, int]]) -> None:
    """The region division mode (see the module docstring)."""
    from scipy import ndimage

    labels = [int(s.label) for s in picked]
    images = [s.load() for s in picked]
    truths = []  # per image: the ground-truth mask, its 8-connected components, and their count
    for img, s in zip(images, picked):
        gt = s.mask()
        gt = np.zeros(img.shape[:2], bool) if gt is None else gt
        comp, k = ndimage.label(gt, structure=np.ones((3, 3), bool))
        truths.append((gt, comp, k))
    n_defective = sum(labels)
    n_defects = sum(k for _, _, k in truths)
    context = None
    if args.context_image:
        from genad.io.images import read_image

        context = read_image(args.context_image)

    out: list[dict] = []
    for method, n in divisions:
        name = f"{method}:{n}"
        per_image = []  # (label image, number of regions, pixels and defect pixels of regions 1..n)
        seconds, fonts, outside, hidden, counts = [], [], [], [], []
        for img, (gt, _, _) in zip(images, truths):
            info = _readability(img, method, n)
            lab, k = info["labels"], int(info["regions"])
            area = np.bincount(lab.ravel(), minlength=k + 1)[1:]
            defect = np.bincount(lab[gt], minlength=k + 1)[1:]
            per_image.append((lab, k, area, defect))
            seconds.append(info["seconds"])
            fonts.append(info["font_px"])
            outside.append(info["labels_outside"] / k)
            hidden.append(info["marks_hide"])
            counts.append(k)
        row: dict = {
            "division": name,
            "method": method,
            "n": n,
            "regions_per_image": float(np.mean(counts)),
            "regions_min": int(np.min(counts)),
            "regions_max": int(np.max(counts)),
            "divide_mark_ms_per_image": 1000 * float(np.mean(seconds)),
            "font_px_median": float(np.median(fonts)),
            "font_px_min": int(np.min(fonts)),
            "labels_outside_region": float(np.mean(outside)),
            "marks_hide": float(np.mean(hidden)),
            "runs": [],
        }
        if context is not None:
            c = _readability(context, method, n)
            row["context"] = {
                "image": str(args.context_image),
                "size": f"{context.shape[1]}x{context.shape[0]}",
                "regions": c["regions"],
                "font_px": c["font_px"],
                "labels_outside_region": c["labels_outside"] / c["regions"],
                "marks_hide": c["marks_hide"],
                "divide_mark_ms": 1000 * c["seconds"],
            }
        for rule, acc in [(rule, acc) for rule in args.region_rule for acc in args.accuracy]:
            vr = random.Random(args.seed + 1)
            reps = [_simulate(picked, per_image, truths, labels, rule, acc, vr) for _ in range(args.repeats)]
            run: dict = {"rule": rule, "accuracy": acc, "repeats": args.repeats}
            for key in reps[0]:
                vals = [r[key] for r in reps]
                if any(v is None for v in vals):
                    run[key] = None
                    continue
                run[key] = float(np.mean(vals))
                if args.repeats > 1:
                    run[key + "_sd"] = float(np.std(vals))
            row["runs"].append(run)
        out.append(row)
        print(f"{name}: done ({row['regions_per_image']:.1f} regions/img)", file=sys.stderr)

    command = ".venv/bin/python benchmarks/look_twice_oracle.py " + shlex.join(sys.argv[1:])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result = {
        "command": command,
        "date": _date(),
        "machine": f"{os.cpu_count()} CPU cores" + (f", load average {load:.1f} at the end" if load else ""),
        "data": args.data,
        "seed": args.seed,
        "images": len(picked),
        "defective_images": n_defective,
        "defects": n_defects,
        "per_type": args.per_type,
        "good": args.good,
        "repeats": args.repeats,
        "rule": (
            "truth: region anomalous when >= RULE of its pixels are defect (RULE "
            + ", ".join(_rule_name(x) for x in args.region_rule)
            + "); the simulated model "
            "lists its anomalous regions with score 1.0 and no others; misses each anomalous region with "
            f"probability 1 - accuracy, lists each normal region with probability (1 - accuracy) * "
            f"min(1, {FALSE_ALARMS} / n_regions); image score = highest listed score, 0 when none"
        ),
        "divisions": out,
    }
    md = _region_markdown(result)
    print(md)
    if args.out:
        base = Path(args.out)
        base.parent.mkdir(parents=True, exist_ok=True)
        base.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        base.with_suffix(".md").write_text(md)


def _simulate(
    picked: list, per_image: list, truths: list, labels: list[int], rule: float, acc: float, vr: random.Random
) -> dict[str, float | None]:
    """One pass of the simulated model over all images (see the module docstring)."""
    from genad.engines.lmm.text2seg import image_score, scores_to_map
    from genad.metrics.image import image_auroc
    from genad.metrics.pixel import PixelMetrics

    pm, scores = PixelMetrics(), []
    covered_images = covered_defects = 0
    listed_normal, listed_defective = [], []
    for s, (lab, k, area, defect), (gt, comp, n_comp) in zip(picked, per_image, truths):
        truth = (area > 0) & (defect >= np.maximum(rule * area, 1))  # rule 0: any defect pixel
        p_false = (1 - acc) * min(1.0, FALSE_ALARMS / k)
        said = [vr.random() < (acc if t else p_false) for t in truth]
        region_scores = {i + 1: 1.0 for i, x in enumerate(said) if x}
        amap = scores_to_map(lab, region_scores, gt.shape)
        score = image_score(None, region_scores)
        scores.append(0.0 if score is None else score)
        pm.add(amap, s.mask())
        (listed_defective if s.label else listed_normal).append(len(region_scores))
        if n_comp:
            hit = np.unique(comp[(amap > 0) & gt])
            covered_defects += int((hit > 0).sum())
            covered_images += bool(len(hit))
    m = pm.compute()
    return {
        "pixel_auroc": m["pixel_auroc"],
        "aupro": m["aupro"],
        "image_auroc": image_auroc(labels, scores),
        "covered_images": covered_images,
        "covered_defects": covered_defects,
        "listed_per_normal_image": float(np.mean(listed_normal)) if listed_normal else None,
        "listed_per_defective_image": float(np.mean(listed_defective)) if listed_defective else None,
    }


def _rule_name(rule: float) -> str:
    return "any defect pixel" if rule <= 0 else f"{rule:.0%}"


def _date() -> str:
    """What `date` prints (its own format), else the same fields from Python."""
    import subprocess

    try:
        return subprocess.run(["date"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return time.strftime("%a %b %d %H:%M:%S %Z %Y")


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _sd(run: dict, key: str) -> str:
    """The mean, with its standard deviation over the draws when that is not ~0."""
    v = run.get(key + "_sd")
    return f"{_f(run[key])} ± {v:.3f}" if v and v >= 5e-4 else _f(run[key])


def _count(x: float, of: int) -> str:
    x = round(float(x), 1)
    return f"{x:.0f} of {of}" if x.is_integer() else f"{x:.1f} of {of}"


def _run_rows(d: dict, runs: list[dict], r: dict) -> list[str]:
    """Markdown rows of one division's runs (one per accuracy)."""
    return [
        f"| {d['division'] if j == 0 else ''} | {run['accuracy']:.0%} | {_sd(run, 'pixel_auroc')} | "
        f"{_sd(run, 'aupro')} | {_sd(run, 'image_auroc')} | {_count(run['covered_images'], r['defective_images'])} "
        f"| {_count(run['covered_defects'], r['defects'])} | {run['listed_per_normal_image']:.2f} |"
        for j, run in enumerate(runs)
    ]


def _region_markdown(r: dict) -> str:
    lines = [
        "# Region division for Text2Segmentation (simulated model)",
        "",
        "```",
        r["command"],
        "```",
        "",
        f"{r['date']}; {r['machine']}. {r['data']}: {r['images']} test images ({r['good']} good, "
        f"{r['per_type']} of each defect type; seed {r['seed']}), {r['defective_images']} defective with "
        f"{r['defects']} defects (8-connected ground-truth components).",
        "",
        f"Rule: {r['rule']}. No real model was called: the figures bound what a model of that accuracy can "
        "reach with each division; they do not measure whether it can read the numbers."
        + (
            f" The answers were drawn {r['repeats']} times; figures are means (± standard deviation over the draws)."
            if r.get("repeats", 1) > 1
            else ""
        ),
        "",
        "| division | regions / image (min-max) | divide + mark ms / image | font px median (min) "
        "| labels outside their region | pixels under marks |",
        "|---|---|---|---|---|---|",
    ]
    for d in r["divisions"]:
        lines.append(
            f"| {d['division']} | {d['regions_per_image']:.1f} ({d['regions_min']}-{d['regions_max']}) | "
            f"{d['divide_mark_ms_per_image']:.0f} | {d['font_px_median']:.0f} ({d['font_px_min']}) | "
            f"{d['labels_outside_region']:.0%} | {d['marks_hide']:.0%} |"
        )
    rules = sorted({run.get("rule", REGION_RULE) for d in r["divisions"] for run in d["runs"]}, reverse=True)
    for rule in rules:
        lines += [
            "",
            f"Truth rule {_rule_name(rule)}:",
            "",
            "| division | model right | pixel AUROC | AUPRO | image AUROC | defective images covered | defects covered "
            "| regions listed per good image |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for d in r["divisions"]:
            runs = [run for run in d["runs"] if run.get("rule", REGION_RULE) == rule]
            lines += _run_rows(d, runs, r)
    ctx = [d for d in r["divisions"] if "context" in d]
    if ctx:
        c0 = ctx[0]["context"]
        lines += [
            "",
            f"The same divisions on a larger image ({c0['image'].split('/data/')[-1]}, {c0['size']}):",
            "",
            "| division | regions | font px | labels outside their region | pixels under marks | divide + mark ms |",
            "|---|---|---|---|---|---|",
        ]
        for d in ctx:
            c = d["context"]
            lines.append(
                f"| {d['division']} | {c['regions']} | {c['font_px']} | {c['labels_outside_region']:.0%} | {c['marks_hide']:.0%} | "
                f"{c['divide_mark_ms']:.0f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
