"""Point-cloud scores against known labels: object AUROC and point AUROC (pooled over clouds),
and the quality of the detector's own decisions: object precision / recall / F1 of
Result.decision, and precision / recall / F1 of the flagged points (pooled over clouds; a
cloud judged normal flags none)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from genad.errors import GenadError
from genad.metrics.image import image_ap, image_auroc
from genad.modalities.pointcloud.detector import flagged_points
from genad.types import PointCloudSample, Result


def pointcloud_metrics(samples: Sequence[PointCloudSample], results: Sequence[Result]) -> dict[str, float | None | int]:
    """object_auroc/object_ap over clouds with a label; point_auroc/point_ap over the points of
    clouds with point labels (all of them, and the defective ones only: localisation given that
    a part is defective). Failed results are left out and counted in n_failed."""
    if len(samples) != len(results):
        raise GenadError(f"{len(samples)} samples but {len(results)} results")
    ok = [(s, r) for s, r in zip(samples, results) if r.ok]
    labelled = [(s, r) for s, r in ok if s.truth is not None and s.truth.label is not None]
    y = [int(s.truth.label) for s, _ in labelled]  # type: ignore[union-attr,arg-type]
    sc = [float(r.score) for _, r in labelled]  # type: ignore[arg-type]
    out: dict[str, float | None | int] = {
        "object_auroc": image_auroc(y, sc) if labelled else None,
        "object_ap": image_ap(y, sc) if labelled else None,
        "n_clouds": len(samples),
        "n_failed": len(samples) - len(ok),
    }
    with_points = [
        (s.truth.point_labels, r.anomaly_map)
        for s, r in ok
        if s.truth is not None and s.truth.point_labels is not None and r.anomaly_map is not None
    ]
    for lab, amap in with_points:
        if len(lab) != len(amap):
            raise GenadError(f"point labels ({len(lab)}) and point scores ({len(amap)}) differ in length")
    if with_points:
        pl = np.concatenate([lab for lab, _ in with_points])
        ps = np.concatenate([m for _, m in with_points])
        out["point_auroc"], out["point_ap"] = image_auroc(pl, ps), image_ap(pl, ps)
        bad = [(lab, m) for lab, m in with_points if lab.any()]
        out["point_auroc_defective"] = (
            image_auroc(np.concatenate([lab for lab, _ in bad]), np.concatenate([m for _, m in bad])) if bad else None
        )
    decided = [(y_, bool(r.decision)) for y_, (_, r) in zip(y, labelled) if r.decision is not None]
    if decided:
        out["object_precision"], out["object_recall"], out["object_f1"] = _prf(
            np.array([d[0] for d in decided], bool), np.array([d[1] for d in decided], bool)
        )
    flagged = [
        (s.truth.point_labels, flagged_points(r))
        for s, r in ok
        if s.truth is not None and s.truth.point_labels is not None and r.anomaly_map is not None
    ]
    if flagged:
        pl = np.concatenate([np.asarray(lab, bool) for lab, _ in flagged])
        pf = np.concatenate([f for _, f in flagged if f is not None])
        out["point_precision"], out["point_recall"], out["point_f1"] = _prf(pl, pf)
    return out


def _prf(labels: np.ndarray, flagged: np.ndarray) -> tuple[float | None, float | None, float | None]:
    """(precision, recall, F1) of bool flags; precision None when nothing is flagged, recall
    None when nothing is labelled."""
    tp = int((labels & flagged).sum())
    fp, fn = int((~labels & flagged).sum()), int((labels & ~flagged).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    return precision, recall, f1


def pointcloud_per_type(samples: Sequence[PointCloudSample], results: Sequence[Result]) -> dict[str, dict[str, object]]:
    """Per defect type (truth.defect_type, "good" for normal clouds): the number of clouds,
    how many failed, their mean score and the object AUROC of that type against the good clouds."""
    by_type: dict[str, list[tuple[PointCloudSample, Result]]] = {}
    for s, r in zip(samples, results):
        t = (s.truth.defect_type if s.truth is not None else None) or ("good" if s.label == 0 else "anomalous")
        by_type.setdefault(t, []).append((s, r))
    good = [float(r.score) for _, r in by_type.get("good", []) if r.ok]  # type: ignore[arg-type]
    out: dict[str, dict[str, object]] = {}
    for t in sorted(by_type):
        scores = [float(r.score) for _, r in by_type[t] if r.ok]  # type: ignore[arg-type]
        auroc = None
        if t != "good" and scores and good:
            auroc = image_auroc([0] * len(good) + [1] * len(scores), good + scores)
        out[t] = {
            "n": len(by_type[t]),
            "n_failed": len(by_type[t]) - len(scores),
            "mean_score": float(np.mean(scores)) if scores else None,
            "object_auroc": auroc,
        }
    return out
