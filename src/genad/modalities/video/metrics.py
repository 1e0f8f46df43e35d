"""Frame-level scores against frame labels, with labels given on the source timeline."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from genad.errors import GenadError
from genad.metrics.image import image_ap, image_auroc
from genad.types import Result, VideoSample


def sampled_frame_labels(sample: VideoSample) -> np.ndarray | None:
    """The sample's frame labels for the frames it holds. Labels may be given per kept frame, or
    per source frame (then `meta["frame_index"]` picks them), or as `truth.ranges` of source
    frames."""
    t = sample.truth
    if t is None:
        return None
    idx = sample.meta.get("frame_index")
    n = len(sample.frames) if sample.frames is not None else (len(sample.frame_paths or []) or None)
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
        lab = sampled_frame_labels(s)
        if lab is None or not r.ok or r.anomaly_map is None:
            continue
        if len(lab) != len(r.anomaly_map):
            raise GenadError(f"video {s.id!r}: {len(lab)} frame labels but {len(r.anomaly_map)} frame scores")
        labs.append(lab)
        scores.append(np.asarray(r.anomaly_map, dtype=np.float64))
    if not labs:
        return {"frame_auroc": None, "frame_ap": None, "n_frames": 0}
    y, sc = np.concatenate(labs), np.concatenate(scores)
    return {"frame_auroc": image_auroc(y, sc), "frame_ap": image_ap(y, sc), "n_frames": int(len(y))}
