"""Generated videos with a known anomalous span, for the video tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genad.io.video import write_video

SPAN = (40, 60)  # frames [40, 60) hold the anomaly


def moving_square_frames(n: int = 80, h: int = 64, w: int = 96, anomaly: bool = True) -> np.ndarray:
    """A grey square sliding left to right on a dark background; during SPAN a red square
    appears in the lower left (the 'second object')."""
    frames = np.full((n, h, w, 3), 30, np.uint8)
    side = h // 4
    for i in range(n):
        x = (i * 2) % (w - side)
        frames[i, h // 4 : h // 4 + side, x : x + side] = 200
        if anomaly and SPAN[0] <= i < SPAN[1]:
            frames[i, h - side - 4 : h - 4, 6 : 6 + side] = (255, 40, 40)
    return frames


def labels(n: int = 80) -> np.ndarray:
    lab = np.zeros(n, bool)
    lab[SPAN[0] : SPAN[1]] = True
    return lab


def write_test_video(path: Path, n: int = 80, anomaly: bool = True, fps: float = 20.0) -> Path:
    return write_video(path, moving_square_frames(n, anomaly=anomaly), fps=fps)
