"""The video detector on a generated clip with a known event (no data download, no key).

    .venv/bin/python benchmarks/video.py

80 frames of 64x96: a grey square slides across a dark background; frames 40-59 add a red
square (the test suite's clip, `tests/video_helpers.py`). Few-shot references are 27 frames of
the same clip without the event (every third frame). Prints a Markdown table: frame AUROC, the
peak frame, the detector's own decision (its normalised score) and ranges, the frames it flags
inside and outside the event, wall time; the zero-shot rows are repeated on the clip without
its event, where every flagged frame is a false alarm. The protocol and the figures are the
package's (genad.evaluate_modalities.evaluate_samples, genad.modalities.video.metrics: the
`per_video` row of `genad eval` on a video folder); this script only makes the clip and writes
the README's table.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the clip generator is shared with the tests

from genad.evaluate_modalities import evaluate_samples  # noqa: E402
from genad.types import GroundTruth, VideoSample  # noqa: E402
from video_helpers import labels, moving_square_frames  # noqa: E402

IMAGE_PARAMS = {"resolution": 96}


def run(name: str, image_detector: str, normal: VideoSample | None, event: bool = True) -> str:
    lab = labels() if event else np.zeros(len(labels()), bool)
    clip = VideoSample(
        id="clip", frames=moving_square_frames(anomaly=event), truth=GroundTruth(label=int(event), frame_labels=lab)
    )
    params = {"image_detector": image_detector, "image_params": IMAGE_PARAMS if image_detector == "embedded" else {}}
    s = evaluate_samples([clip], "video", params, refs=[normal] if normal is not None else []).summary
    dt = s["fit_seconds"] + s["predict_seconds"]
    [r] = s["per_video"]
    if r["error"]:
        return f"| {name} | error: {r['error']} | | | | | {dt:.1f} s |"
    auroc = f"{r['frame_auroc']:.3f}" if event else "-"
    where = ("in event" if r["peak_in_event"] else "outside event") if event else "no event"
    decision = f"{'anomalous' if r['decision'] else 'normal'} ({r['normalized_score']:.2f})"
    frames = f"{r['flagged_in']} / {r['labelled_frames']} in, {r['flagged_out']} out"
    ranges = [tuple(x) for x in r["ranges"]] or "none"
    return f"| {name} | {auroc} | {r['peak_frame']} ({where}) | {decision} | {ranges} | {frames} | {dt:.1f} s |"


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
