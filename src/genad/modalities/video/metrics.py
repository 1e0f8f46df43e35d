"""Frame-level scores against frame labels, with labels given on the source timeline, and the
quality of the detector's own decisions: its flagged frames (Result.ranges) against the
labelled ones, and its verdict per video (Result.decision) against the video's label."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from genad.errors import GenadError
from genad.metrics.image import image_ap, image_auroc
from genad.types import Result, VideoSample


def sampled_frame_labels(sample: VideoSample, n_frames: int | None = None) -> np.ndarray | None:
    """The sample's frame labels for the frames it holds. Labels may be given per kept frame, or
    per source frame (then `meta["frame_index"]` picks them), or as `truth.ranges` of source
    frames. `n_frames`: how many frames were scored, for a video read from its file whose
    frames are not held (every frame read: source frame i is scored frame i)."""
    t = sample.truth
    if t is None:
        return None
    idx = sample.meta.get("frame_index")
    n = len(sample.frames) if sample.frames is not None else (len(sample.frame_paths or []) or n_frames)
    if t.frame_labels is not None:
        lab = np.asarray(t.frame_labels, dtype=bool)
        if n is not None and len(lab) == n:
            return lab
        if idx is not None:
            idx = np.asarray(idx)
            if idx.max(initial=-1) >= len(lab):
                raise GenadError(f"video {sample.id!r}: {len(lab)} frame labels but frames up to index {idx.max()}")
            return lab[idx]
        raise GenadError(f"video {sample.id!r}: {len(lab)} frame labels for {n} frames")
    if t.ranges is not None:
        if n is None:
            return None
        src = np.asarray(idx) if idx is not None else np.arange(n)
        lab = np.zeros(len(src), dtype=bool)
        for a, b in t.ranges:
            lab |= (src >= a) & (src < b)
        return lab
    return None


def frame_metrics(samples: Sequence[VideoSample], results: Sequence[Result]) -> dict[str, float | None | int]:
    """Frame AUROC / AP pooled over all labelled frames of all videos (failed results left out)."""
    if len(samples) != len(results):
        raise GenadError(f"{len(samples)} samples but {len(results)} results")
    labs, scores = [], []
    for s, r in zip(samples, results):
        if not r.ok or r.anomaly_map is None:
            continue
        lab = sampled_frame_labels(s, len(r.anomaly_map))
        if lab is None:
            continue
        if len(lab) != len(r.anomaly_map):
            raise GenadError(f"video {s.id!r}: {len(lab)} frame labels but {len(r.anomaly_map)} frame scores")
        labs.append(lab)
        scores.append(np.asarray(r.anomaly_map, dtype=np.float64))
    if not labs:
        return {"frame_auroc": None, "frame_ap": None, "n_frames": 0}
    y, sc = np.concatenate(labs), np.concatenate(scores)
    return {"frame_auroc": image_auroc(y, sc), "frame_ap": image_ap(y, sc), "n_frames": int(len(y))}


def _prf(tp: int, fp: int, fn: int) -> tuple[float | None, float | None, float | None]:
    """(precision, recall, F1); precision None when nothing is flagged, recall None when
    nothing is labelled, F1 None when both are empty."""
    return (
        tp / (tp + fp) if tp + fp else None,
        tp / (tp + fn) if tp + fn else None,
        2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
    )


def video_row(sample: VideoSample, result: Result) -> dict[str, Any]:
    """One video's figures: frame AUROC / AP (None when its frames are all of one class), the
    peak frame and whether it is labelled anomalous, the verdict and its normalised score, the
    ranges, and the flagged frames inside and outside the labelled ones."""
    row: dict[str, Any] = {"id": sample.id, "label": sample.label, "error": result.error}
    if not result.ok or result.anomaly_map is None:
        row["error"] = result.error or "no frame scores"
        return row
    scores = np.asarray(result.anomaly_map, dtype=np.float64)
    lab = sampled_frame_labels(sample, len(scores))
    if lab is None:
        lab = np.zeros(len(scores), dtype=bool) if sample.label == 0 else None
    if lab is not None and len(lab) != len(scores):
        raise GenadError(f"video {sample.id!r}: {len(lab)} frame labels but {len(scores)} frame scores")
    flagged = np.zeros(len(scores), dtype=bool)
    for a, b in result.ranges:
        flagged[max(0, a) : max(0, b)] = True
    peak = int(np.argmax(scores))
    row.update(
        frames=len(scores),
        frame_auroc=None if lab is None else image_auroc(lab, scores),
        frame_ap=None if lab is None or not lab.any() else image_ap(lab, scores),
        peak_frame=peak,
        peak_in_event=None if lab is None else bool(lab[peak]),
        decision=None if result.decision is None else bool(result.decision),
        normalized_score=result.normalized_score,
        ranges=[[int(a), int(b)] for a, b in result.ranges],
        labelled_frames=None if lab is None else int(lab.sum()),
        flagged_in=None if lab is None else int((flagged & lab).sum()),
        flagged_out=None if lab is None else int((flagged & ~lab).sum()),
    )
    return row


def video_metrics(samples: Sequence[VideoSample], results: Sequence[Result]) -> dict[str, Any]:
    """Frame AUROC / AP pooled over every labelled frame (frame_metrics); flagged-frame
    precision / recall / F1 pooled the same way (the frames inside the detector's ranges against
    the labelled frames); video precision / recall / F1 of the verdicts against the videos'
    labels; and `per_video` rows (video_row)."""
    if len(samples) != len(results):
        raise GenadError(f"{len(samples)} samples but {len(results)} results")
    rows = [video_row(s, r) for s, r in zip(samples, results)]
    out: dict[str, Any] = dict(frame_metrics(samples, results))
    scored = [r for r in rows if r["error"] is None and r["labelled_frames"] is not None]
    tp = sum(r["flagged_in"] for r in scored)
    fp = sum(r["flagged_out"] for r in scored)
    fn = sum(r["labelled_frames"] - r["flagged_in"] for r in scored)
    out["frame_precision"], out["frame_recall"], out["frame_f1"] = _prf(tp, fp, fn) if scored else (None,) * 3
    decided = [r for r in rows if r["error"] is None and r["decision"] is not None and r["label"] is not None]
    vtp = sum(1 for r in decided if r["decision"] and r["label"] == 1)
    vfp = sum(1 for r in decided if r["decision"] and r["label"] == 0)
    vfn = sum(1 for r in decided if not r["decision"] and r["label"] == 1)
    out["video_precision"], out["video_recall"], out["video_f1"] = _prf(vtp, vfp, vfn) if decided else (None,) * 3
    out["n_videos"] = len(rows)
    out["n_failed"] = sum(1 for r in rows if r["error"] is not None)
    out["per_video"] = rows
    return out
