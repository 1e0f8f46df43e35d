"""The video detector on a generated clip with a known event (no data download, no key).

    .venv/bin/python benchmarks/video.py

80 frames of 64x96: a grey square slides across a dark background; frames 40-59 add a red
square (the test suite's clip, `tests/video_helpers.py`). Few-shot references are 27 frames of
the same clip without the event (every third frame). Prints a Markdown table: frame AUROC, the
peak frame, the detector's own decision (its normalised score) and ranges, the frames it flags
inside and outside the event, wall time; the zero-shot rows are repeated on the clip without
its event, where every flagged frame is a false alarm.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the clip generator is shared with the tests

import genad  # noqa: E402
from genad.types import VideoSample  # noqa: E402
from video_helpers import SPAN, labels, moving_square_frames  # noqa: E402

IMAGE_PARAMS = {"resolution": 96}


def run(name: str, image_detector: str, normal: VideoSample | None, event: bool = True) -> str:
    det = genad.create(
        "video", image_detector=image_detector, image_params=IMAGE_PARAMS if image_detector == "embedded" else {}
    )
    t = time.perf_counter()
    if normal is not None:
        det.fit([normal])
    [r] = det.predict([VideoSample(id="clip", frames=moving_square_frames(anomaly=event))])
    dt = time.perf_counter() - t
    if r.error:
        return f"| {name} | error: {r.error} | | | | | {dt:.1f} s |"
    lab = labels() if event else np.zeros(len(r.anomaly_map), bool)
    flagged = np.zeros(len(lab), bool)
    for a, b in r.ranges:
        flagged[a:b] = True
    auroc = f"{roc_auc_score(lab, r.anomaly_map):.3f}" if event else "-"
    peak = int(np.argmax(r.anomaly_map))
    where = "in event" if SPAN[0] <= peak < SPAN[1] else "outside event"
    if not event:
        where = "no event"
    decision = f"{'anomalous' if r.decision else 'normal'} ({r.normalized_score:.2f})"
    frames = f"{int((flagged & lab).sum())} / {int(lab.sum())} in, {int((flagged & ~lab).sum())} out"
    return f"| {name} | {auroc} | {peak} ({where}) | {decision} | {r.ranges or 'none'} | {frames} | {dt:.1f} s |"


def main() -> None:
    normal = VideoSample(id="normal", frames=moving_square_frames(anomaly=False)[::3])
    rows = [
        run("video, embedded, zero-shot", "embedded", None),
        run(f"video, embedded, few-shot ({len(normal.frames)} normal frames)", "embedded", normal),
        run("video, baseline, few-shot", "baseline", normal),
        run("video, baseline, zero-shot", "baseline", None),
        run("video, embedded, zero-shot, clip without the event", "embedded", None, event=False),
        run("video, embedded, few-shot, clip without the event", "embedded", normal, event=False),
        run("video, baseline, zero-shot, clip without the event", "baseline", None, event=False),
    ]
    print(
        "| detector | frame AUROC | peak frame | decision (normalised score) | ranges | flagged frames | time |\n"
        "|---|---|---|---|---|---|---|"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
