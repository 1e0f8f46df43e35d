"""Point-cloud benchmark on GENERATED shapes (no public point-cloud AD data is at hand).

For each shape (plane, wavy, sphere, cylinder): `--train` normal references, `--normal` good
test parts and `--defective` parts with a dent, bump, crack or hole (cycled), all from
genad.modalities.pointcloud.synth with fixed seeds. Reports object AUROC (the cloud's score vs
its label) and point AUROC (per-point scores vs point labels, pooled over the test set), for
few-shot (fit on the references) and zero-shot (the test batch scored against itself), and the
detector's own decisions at its own threshold: object precision / recall / F1 of
Result.decision and precision / recall / F1 of the flagged points (pooled over the test set).
The protocol and the figures are the package's (genad.evaluate_modalities.evaluate_samples,
genad.modalities.pointcloud.metrics; `genad eval` on such a folder gives the same): this script
only makes the shapes and writes the README's table.

    .venv/bin/python benchmarks/pointcloud.py --shapes plane sphere --image-detector embedded
    .venv/bin/python benchmarks/pointcloud.py --json out.json
"""

from __future__ import annotations

import argparse
import json

from genad.evaluate_modalities import evaluate_samples
from genad.modalities.pointcloud.synth import SHAPES, make_dataset

DECISION_KEYS = ("object_precision", "object_recall", "object_f1", "point_precision", "point_recall", "point_f1")


def _round(v: object) -> float | None:
    return None if v is None else round(float(v), 4)  # type: ignore[arg-type]


def _f(v: object) -> str:
    return "-" if v is None else f"{float(v):.3f}"  # type: ignore[arg-type]


def run(shape: str, mode: str, args: argparse.Namespace) -> dict[str, float | str | int]:
    train, test = make_dataset(
        shape,
        n_train=args.train,
        n_normal=args.normal,
        n_defective=args.defective,
        n_points=args.points,
        seed=args.seed,
    )
    params = json.loads(args.image_params) if args.image_params else {}
    det_params = {"image_detector": args.image_detector, "image_params": params, "views": args.views, "size": args.size}
    m = evaluate_samples(test, "pointcloud", det_params, refs=train if mode == "few-shot" else []).summary
    if m["n_failed"]:
        raise SystemExit(f"{shape} {mode}: {m['n_failed']} errors, first: {m['failed'][0]['error']}")
    seconds = m["fit_seconds"] + m["predict_seconds"]
    return {
        "shape": shape,
        "mode": mode,
        "object_auroc": round(float(m["object_auroc"]), 4),
        "point_auroc": round(float(m["point_auroc"]), 4),
        "point_auroc_defective": round(float(m["point_auroc_defective"]), 4),
        **{k: _round(m.get(k)) for k in DECISION_KEYS},
        "n_test": len(test),
        "seconds": round(seconds, 1),
        "clouds_per_second": round(len(test) / seconds, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=SHAPES)
    ap.add_argument("--modes", nargs="+", default=["few-shot", "zero-shot"], choices=["few-shot", "zero-shot"])
    ap.add_argument("--image-detector", default="embedded")
    ap.add_argument("--image-params", default="", help="JSON, e.g. '{\"resolution\": 224}'")
    ap.add_argument("--views", type=int, default=6)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--train", type=int, default=4)
    ap.add_argument("--normal", type=int, default=20)
    ap.add_argument("--defective", type=int, default=20)
    ap.add_argument("--points", type=int, default=8000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    rows = []
    print(
        "| shape | mode | object AUROC | point AUROC | point AUROC (defective parts) | object P | object R "
        "| object F1 | flagged-point P | flagged-point R | flagged-point F1 | s | clouds/s |"
    )
    print("|" + "---|" * 13)
    for shape in args.shapes:
        for mode in args.modes:
            r = run(shape, mode, args)
            rows.append(r)
            print(
                f"| {shape} | {mode} | {r['object_auroc']:.3f} | {r['point_auroc']:.3f} | "
                f"{r['point_auroc_defective']:.3f} | "
                + " | ".join(_f(r[k]) for k in DECISION_KEYS)
                + f" | {r['seconds']} | {r['clouds_per_second']} |",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
