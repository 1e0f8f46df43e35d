"""Samples in, results out: the plain data every part of genad speaks.

Samples are light: an image sample keeps its path and loads pixels on demand, so a
benchmark of thousands of images does not hold them all in memory at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

Modality = Literal["image", "timeseries", "pointcloud", "video"]


@dataclass
class Knowledge:
    """Human expertise about a class: what normal looks like and which defects are known."""

    normal_standards: str | None = None
    defect_types: list[str] = field(default_factory=list)
    notes: str | None = None

    def is_empty(self) -> bool:
        return not (self.normal_standards or self.defect_types or self.notes)


@dataclass
class GroundTruth:
    """What is known to be true about a sample; every field is optional.

    label: 1 anomalous, 0 normal. mask: bool HxW for images (loaded lazily from mask_path).
    ranges: [start, end) index ranges for series and videos. point_labels: bool (N,) for clouds.
    frame_labels: bool (F,) for videos. defect_type: e.g. "crack", "good".
    """

    label: int | None = None
    defect_type: str | None = None
    mask: np.ndarray | None = None
    mask_path: Path | None = None
    ranges: list[tuple[int, int]] | None = None
    point_labels: np.ndarray | None = None
    frame_labels: np.ndarray | None = None

    def get_mask(self, shape: tuple[int, int] | None = None) -> np.ndarray | None:
        """The pixel mask (bool HxW), read from disk on first use. Raises GenadError if the
        mask's size differs from `shape` (the image's HxW)."""
        if self.mask is None and self.mask_path is not None:
            from genad.io.images import read_mask

            self.mask = read_mask(self.mask_path)
        if self.mask is not None and shape is not None and self.mask.shape != tuple(shape):
            from genad.errors import GenadError

            where = f" ({self.mask_path})" if self.mask_path else ""
            raise GenadError(
                f"mask size {self.mask.shape[1]}x{self.mask.shape[0]}{where} differs from its "
                f"image {shape[1]}x{shape[0]}: fix or remove the mask"
            )
        return self.mask


@dataclass
class Sample:
    """Base of all samples. `id` is unique within a run (usually a relative path)."""

    id: str
    modality: Modality = "image"
    class_name: str | None = None
    knowledge: Knowledge | None = None
    truth: GroundTruth | None = None
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> int | None:
        return None if self.truth is None else self.truth.label


@dataclass
class ImageSample(Sample):
    """An RGB image. `array` (uint8 HxWx3) may be given directly; else it is read from `path`."""

    array: np.ndarray | None = None
    modality: Modality = "image"

    def load(self) -> np.ndarray:
        """Pixels as uint8 RGB HxWx3 (greyscale, RGBA and 16-bit inputs are converted)."""
        if self.array is not None:
            return self.array
        if self.path is None:
            from genad.errors import GenadError

            raise GenadError(f"sample {self.id!r} has neither pixels nor a path")
        from genad.io.images import read_image

        return read_image(self.path)

    def mask(self) -> np.ndarray | None:
        """Ground-truth pixel mask checked against this image's size, or None."""
        if self.truth is None:
            return None
        if self.truth.mask is None and self.truth.mask_path is None:
            return None
        return self.truth.get_mask(self.load().shape[:2])


@dataclass
class TimeSeriesSample(Sample):
    """values: float (T,) or (T, D) for multivariate; timestamps optional (T,).
    train_end: index where a normal training prefix ends (UCR style), if any."""

    values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    timestamps: np.ndarray | None = None
    columns: list[str] | None = None
    train_end: int | None = None
    modality: Modality = "timeseries"


@dataclass
class PointCloudSample(Sample):
    """points: float (N, 3); colors optional (N, 3) uint8."""

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    colors: np.ndarray | None = None
    modality: Modality = "pointcloud"


@dataclass
class VideoSample(Sample):
    """A video from a file (decoded with PyAV) or a folder of frames; `frames` may be given
    directly as uint8 (F, H, W, 3). `fps` is the sampling rate after any subsampling."""

    frames: np.ndarray | None = None
    frame_paths: list[Path] | None = None
    fps: float | None = None
    modality: Modality = "video"


@dataclass
class Region:
    """One localised finding. box is (x0, y0, x1, y1) in input pixels; mask is bool HxW."""

    score: float
    box: tuple[int, int, int, int] | None = None
    mask: np.ndarray | None = None
    label: str | None = None
    index: int | None = None
    explanation: str | None = None


@dataclass
class Usage:
    """LMM cost of producing a result: tokens, estimated cost (USD), calls and cache hits."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0
    cached_calls: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cost_usd + other.cost_usd,
            self.calls + other.calls,
            self.cached_calls + other.cached_calls,
        )


@dataclass
class Result:
    """A detector's answer about one sample.

    score: higher = more anomalous (None when the detector could not score, see `error`).
    decision: True = anomalous. anomaly_map: float32 at the input's own resolution: HxW for
    images, (T,) for series, (N,) for point clouds, (F,) for videos. ranges: [start, end)
    index ranges judged anomalous (series, video frames).
    """

    sample_id: str
    score: float | None = None
    decision: bool | None = None
    anomaly_map: np.ndarray | None = None
    regions: list[Region] = field(default_factory=list)
    ranges: list[tuple[int, int]] = field(default_factory=list)
    explanation: str | None = None
    threshold: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    usage: Usage | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.score is not None

    def to_dict(self, with_map: bool = False) -> dict[str, Any]:
        """JSON-ready dict. Maps are left out unless asked (they are large); region masks never."""
        d: dict[str, Any] = {
            "sample_id": self.sample_id,
            "score": None if self.score is None else float(self.score),
            "decision": self.decision,
            "threshold": None if self.threshold is None else float(self.threshold),
            "regions": [
                {
                    "index": r.index,
                    "score": float(r.score),
                    "box": None if r.box is None else [int(v) for v in r.box],
                    "label": r.label,
                    "explanation": r.explanation,
                }
                for r in self.regions
            ],
            "ranges": [[int(a), int(b)] for a, b in self.ranges],
            "explanation": self.explanation,
            "timings": {k: round(float(v), 6) for k, v in self.timings.items()},
            "usage": None if self.usage is None else self.usage.__dict__.copy(),
            "error": self.error,
        }
        if self.extra:
            d["extra"] = _jsonable(self.extra)
        if with_map and self.anomaly_map is not None:
            d["anomaly_map"] = np.asarray(self.anomaly_map).tolist()
        return d


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist() if v.size <= 4096 else f"<array {v.shape}>"
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    return v
