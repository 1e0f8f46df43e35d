"""Samples in, results out: the plain data every part of genad speaks.

Samples are light: an image sample keeps its path and loads pixels on demand, so a
benchmark of thousands of images does not hold them all in memory at once.

Nothing here reads files. A sample gets its pixels from a loader callable (`loader=`, set by
genad.io's loaders, or your own, e.g. a camera grab); a sample made with only a path uses the
readers that genad.io registers with `set_reader` when it is imported (genad imports it).

`as_samples` is the one conversion of what a detector's fit() and predict() are handed (Samples,
numpy arrays, paths, or lists of them) into Samples; paths go through the "samples" reader that
genad.io registers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from genad.errors import GenadError

Modality = Literal["image", "timeseries", "pointcloud", "video"]

# kind -> reader: "image" (path -> uint8 HxWx3), "image_size" (path -> (w, h)),
# "mask" (path -> bool HxW), "video" (VideoSample -> uint8 (F, H, W, 3)),
# "pil" (PIL image of any mode -> uint8 HxWx3),
# "samples" ((path, modality or None) -> list[Sample]: a file or folder given to fit/predict)
_READERS: dict[str, Callable[..., Any]] = {}


def set_reader(kind: str, reader: Callable[..., Any]) -> None:
    """Register the function that reads `kind` for samples made with only a path (genad.io
    does this for images, masks and videos)."""
    _READERS[kind] = reader


def read(kind: str, *args: Any) -> Any:
    """Read with the registered reader of `kind` (see set_reader)."""
    reader = _READERS.get(kind)
    if reader is None:  # pragma: no cover - genad/__init__ imports genad.io, which registers
        raise GenadError(f"no reader for {kind} is registered: import genad.io first")
    return reader(*args)


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
            self.mask = read("mask", self.mask_path)
        if self.mask is not None and shape is not None and self.mask.shape != tuple(shape):
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
    """An RGB image: `array` (uint8 HxWx3) given directly, else `loader()` (a callable that
    returns the pixels), else read from `path`. Pixels that are loaded are not kept."""

    array: np.ndarray | None = None
    modality: Modality = "image"
    loader: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)

    def load(self) -> np.ndarray:
        """Pixels as uint8 RGB HxWx3 (greyscale, RGBA and 16-bit inputs are converted)."""
        if self.array is not None:
            return self.array
        if self.loader is not None:
            return self.loader()
        if self.path is None:
            raise GenadError(f"sample {self.id!r} has neither pixels nor a path")
        return read("image", self.path)

    def size(self) -> tuple[int, int]:
        """(H, W) without decoding the pixels where possible."""
        if self.array is not None:
            return int(self.array.shape[0]), int(self.array.shape[1])
        if self.path is not None:
            w, h = read("image_size", self.path)
            return int(h), int(w)
        a = self.load()
        return int(a.shape[0]), int(a.shape[1])

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
    loader: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)

    def load_frames(self) -> np.ndarray:
        """The frames as uint8 (F, H, W, 3): given, from `loader()`, or read from disk."""
        if self.frames is None and self.loader is not None:
            return np.asarray(self.loader())
        return np.asarray(read("video", self))


@dataclass
class Region:
    """One localised finding. box is (x0, y0, x1, y1) in input pixels; mask is bool HxW."""

    score: float
    box: tuple[int, int, int, int] | None = None
    mask: np.ndarray | None = None
    label: str | None = None
    index: int | None = None
    explanation: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; the mask is left out (it is large; `box` locates the region)."""
        return {
            "index": self.index,
            "score": float(self.score),
            "box": None if self.box is None else [int(v) for v in self.box],
            "label": self.label,
            "explanation": self.explanation,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Region:
        box = d.get("box")
        return cls(
            score=float(d["score"]),
            box=None if not box else (int(box[0]), int(box[1]), int(box[2]), int(box[3])),
            label=d.get("label"),
            index=d.get("index"),
            explanation=d.get("explanation"),
        )


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": int(self.prompt_tokens),
            "completion_tokens": int(self.completion_tokens),
            "cost_usd": float(self.cost_usd),
            "calls": int(self.calls),
            "cached_calls": int(self.cached_calls),
        }


@dataclass
class VisualPrompt:
    """What a multimodal model was shown to localise, and how its region numbers map to
    pixels: `labels` is an int label image at the input's size (pixel value = region number,
    0 = in no region), `method` how the regions were made ("grid:16", "slic", "proposals:3"),
    `image` the marked (set-of-mark) picture, or None where it was dropped to save memory
    (re-drawn from `labels` when needed)."""

    labels: np.ndarray
    method: str
    image: np.ndarray | None = None

    @property
    def n_regions(self) -> int:
        return int(self.labels.max()) if self.labels.size else 0


@dataclass
class View:
    """One rendered view of a point cloud as the image engine saw it: the picture, the
    engine's map of it and the point scores coloured back onto it (None where unknown)."""

    image: np.ndarray
    anomaly_map: np.ndarray | None = None
    overlay: np.ndarray | None = None


@dataclass
class Result:
    """A detector's answer about one sample.

    score: higher = more anomalous, in the detector's own raw units (None when the detector
    could not score, see `error`). normalized_score: the same score calibrated to [0, 1] with
    the detector's decision boundary at 0.5 (genad.decision), the same convention for every
    detector. threshold: the raw score above which `decision` is True (the boundary used).
    decision: True = anomalous. anomaly_map: float32 at the input's own resolution: HxW for
    images, (T,) for series, (N,) for point clouds, (F,) for videos. ranges: [start, end)
    index ranges judged anomalous (series, video frames).

    Typed artifacts, for what other parts read: `visual_prompt` (the marked image an LMM
    localised on), `frame_scores` (a video's per-frame scores before smoothing), `views`
    (a point cloud's rendered views, when kept). `extra` holds small JSON-ready details for
    people (the prompt, the answer, the method); nothing in genad depends on its keys.
    """

    sample_id: str
    score: float | None = None
    decision: bool | None = None
    anomaly_map: np.ndarray | None = None
    regions: list[Region] = field(default_factory=list)
    ranges: list[tuple[int, int]] = field(default_factory=list)
    explanation: str | None = None
    threshold: float | None = None
    normalized_score: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    usage: Usage | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    visual_prompt: VisualPrompt | None = None
    frame_scores: np.ndarray | None = None
    views: list[View] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and self.score is not None

    def to_dict(self, with_map: bool = False) -> dict[str, Any]:
        """The one JSON form of a result (results.jsonl, the service, reports). Maps are left
        out unless asked (they are large; run folders keep them as arrays); region masks and
        pictures never."""
        d: dict[str, Any] = {
            "sample_id": self.sample_id,
            "score": None if self.score is None else float(self.score),
            "decision": None if self.decision is None else bool(self.decision),
            "threshold": None if self.threshold is None else float(self.threshold),
            "normalized_score": None if self.normalized_score is None else float(self.normalized_score),
            "regions": [r.to_dict() for r in self.regions],
            "ranges": [[int(a), int(b)] for a, b in self.ranges],
            "explanation": self.explanation,
            "timings": {k: round(float(v), 6) for k, v in self.timings.items()},
            "usage": None if self.usage is None else self.usage.to_dict(),
            "error": self.error,
        }
        if self.extra:
            d["extra"] = jsonable(self.extra)
        if self.visual_prompt is not None:
            d["visual_prompt"] = {"method": self.visual_prompt.method, "n_regions": self.visual_prompt.n_regions}
        if self.frame_scores is not None:
            d["frame_scores"] = [
                None if not np.isfinite(v) else float(v) for v in np.asarray(self.frame_scores).ravel()
            ]
        if with_map and self.anomaly_map is not None:
            d["anomaly_map"] = np.asarray(self.anomaly_map).tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        """A Result from its JSON form (`to_dict`); arrays come back only where the JSON has
        them (maps with with_map=True, frame scores)."""
        usage = d.get("usage")
        amap = d.get("anomaly_map")
        frames = d.get("frame_scores")
        return cls(
            sample_id=str(d.get("sample_id", d.get("id", ""))),
            score=d.get("score"),
            decision=d.get("decision"),
            anomaly_map=None if amap is None else np.asarray(amap, dtype=np.float32),
            regions=[Region.from_dict(r) for r in d.get("regions") or []],
            ranges=[(int(a), int(b)) for a, b in d.get("ranges") or []],
            explanation=d.get("explanation"),
            threshold=d.get("threshold"),
            normalized_score=d.get("normalized_score"),
            timings=dict(d.get("timings") or {}),
            usage=None if not usage else Usage(**usage),
            error=d.get("error"),
            extra=dict(d.get("extra") or {}),
            frame_scores=None
            if frames is None
            else np.asarray([np.nan if v is None else v for v in frames], np.float32),
        )


def jsonable(v: Any) -> Any:
    """A value as JSON can hold it: numpy scalars as numbers, small arrays as lists (large
    ones as a short note), paths as text, tuples as lists."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist() if v.size <= 4096 else f"<array {v.shape}>"
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    return v


# -- what fit() and predict() accept ------------------------------------------------------------
_SHAPES = {
    "image": "HxW or HxWxC (one image) or NxHxW / NxHxWxC (N images; C = 1, 3 or 4)",
    "timeseries": "(T,) (one series), (N, T) (N series, one a row) or (N, T, D) (N series of D columns)",
    "pointcloud": "(P, 3) (one cloud) or (N, P, 3) (N clouds)",
    "video": "(F, H, W) or (F, H, W, C) (one video) or (N, F, H, W[, C]) (N videos)",
}
_STACKED_SHAPES = {
    "image": "NxHxW or NxHxWxC (N images; C = 1, 3 or 4)",
    "timeseries": "(N, T) (N series, one a row) or (N, T, D) (N series of D columns)",
    "pointcloud": "(N, P, 3) (N clouds)",
    "video": "(N, F, H, W) or (N, F, H, W, C) (N videos)",
}
_ONE_SHAPES = {  # an array in a list is one sample
    "image": "HxW or HxWxC (C = 1, 3 or 4)",
    "timeseries": "(T,) or (T, D)",
    "pointcloud": "(P, 3)",
    "video": "(F, H, W) or (F, H, W, C)",
}


def as_samples(x: Any, modality: str | None = None, *, stacked: bool = False) -> list[Sample]:
    """What a detector is handed, as a list of Samples: one Sample; a numpy array (or anything
    numpy can read as one, such as a DataFrame); a path (str or Path) to a file or folder; or
    a list (any iterable) of those. Samples are passed through unchanged.

    Arrays are read as `modality` (None: "image"), their first axis counting samples where
    the shape says so: images HxW / HxWxC are one image (a 3-D array is one image when its
    last axis is 1, 3 or 4, else N greyscale images), NxHxW / NxHxWxC are N; series (T,) is
    one, (N, T) is N univariate series (one a row), (N, T, D) N series of D columns; clouds
    (P, 3) is one, (N, P, 3) N; videos (F, H, W[, C]) is one (a 4-D array is one video when
    its last axis is 1, 3 or 4), (N, F, H, W[, C]) N; a PIL image is one image. With
    `stacked=True` (tabular data, PyOD's X) the first axis always counts samples: a 3-D array
    is N greyscale images and a 2-D one is refused for images. An array in a list is one
    sample (a series (T,) or (T, D)); a path in a list may be a folder of many.

    Pixels become uint8 RGB: uint8 as given, bool as 0/255, other integers in 0..255 as given
    (uint16 beyond that scaled from 0..65535), floats in 0..1 scaled by 255 (in 0..255 as
    given); a whole array is scaled alike. Array samples get ids "array-0", "array-1", ... in
    order; paths are read by genad.io (ids: file names, or paths within a folder) with
    `modality` as `--modality` (None: by suffix). An id made here that repeats one seen before
    gets "#2", "#3", ...

    Raises GenadError, one line, for what cannot be read: an array of the wrong shape for
    the modality, a missing path, an object of another type."""
    kind = modality or "image"
    if kind not in _SHAPES:
        raise GenadError(f"unknown modality {modality!r}: choose one of {', '.join(_SHAPES)}")
    out: list[Sample] = []
    made: list[Sample] = []
    counter = [0]

    def add(item: Any, top: bool) -> None:
        if isinstance(item, Sample):
            out.append(item)
            return
        if isinstance(item, (str, Path)):
            if not str(item).strip():
                raise GenadError("an empty path cannot be samples: name a file or folder")
            got = list(read("samples", Path(item), modality))
        elif type(item).__module__.startswith("PIL.") and kind == "image":  # a PIL image, any mode
            got = [ImageSample(id=f"array-{counter[0]}", array=read("pil", item))]
            counter[0] += 1
        elif _array_like(item):
            got = _array_samples(_as_array(item), kind, counter, stacked=stacked and top, one=not top)
        elif top and isinstance(item, Iterable) and not isinstance(item, (bytes, dict)):
            for element in item:
                add(element, top=False)
            return
        else:
            what = "Samples, numpy arrays, paths, or a list of them" if top else "a Sample, a numpy array or a path"
            where = "" if top else " in a list"
            raise GenadError(f"cannot read {_a(type(item).__name__)}{where} as samples: give {what}")
        out.extend(got)
        made.extend(got)

    add(x, top=True)
    _unique(out, made)
    return out


def _a(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def _array_like(x: Any) -> bool:
    if isinstance(x, type):
        return False
    return isinstance(x, np.ndarray) or hasattr(x, "__array__") or hasattr(x, "__array_interface__")


def _as_array(x: Any) -> np.ndarray:
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise GenadError(f"cannot read {_a(type(x).__name__)} as an array: {e}") from e
    if a.dtype.kind not in "biuf":
        raise GenadError(f"an array of {a.dtype} cannot be samples: give numbers")
    return a


def _array_samples(a: np.ndarray, kind: str, counter: list[int], *, stacked: bool, one: bool) -> list[Sample]:
    """The samples in array `a` (`one`: it is one sample, an element of a list)."""
    many = False if one and _one_ok(a, kind) else None if one else _many(a, kind, stacked)
    if many is None:
        shapes = (_ONE_SHAPES if one else _STACKED_SHAPES if stacked else _SHAPES)[kind]
        inside = " in a list" if one else ""
        raise GenadError(
            f"{_a(kind)} detector reads arrays{inside} of shape {shapes}; got one of shape {tuple(a.shape)}"
        )
    if kind in ("image", "video") and a.dtype != np.uint8 and a.size:
        last = counter[0] + (len(a) - 1 if many else 0)
        a = _to_uint8(a, f"array-{counter[0]}" + (f"..array-{last}" if last > counter[0] else ""))
    out: list[Sample] = []
    for part in list(a) if many else [a]:
        out.append(_one_sample(part, kind, f"array-{counter[0]}"))
        counter[0] += 1
    return out


def _one_ok(a: np.ndarray, kind: str) -> bool:
    """`a` has the shape of one sample of `kind`."""
    n, last = a.ndim, a.shape[-1] if a.ndim else 0
    if kind == "image":
        return n == 2 or (n == 3 and last in (1, 3, 4))
    if kind == "timeseries":
        return n in (1, 2)
    if kind == "pointcloud":
        return n == 2 and last == 3
    return n == 3 or (n == 4 and last in (1, 3, 4))  # video


def _many(a: np.ndarray, kind: str, stacked: bool) -> bool | None:
    """True: the first axis of `a` counts samples; False: `a` is one sample; None: neither."""
    n = a.ndim
    if n >= 2 and _one_ok(a[0], kind) and not (n == 2 and kind == "image"):
        if stacked or not _one_ok(a, kind) or kind == "timeseries":
            return True
    if not stacked and _one_ok(a, kind):
        return False
    return None


def _one_sample(a: np.ndarray, kind: str, sid: str) -> Sample:
    if kind == "image":
        return ImageSample(id=sid, array=_rgb8(a, sid))
    if kind == "timeseries":
        values = np.asarray(a, dtype=np.float64)
        if values.size == 0:
            raise GenadError(f"series {sid} is empty")
        return TimeSeriesSample(id=sid, values=values)
    if kind == "pointcloud":
        return PointCloudSample(id=sid, points=np.asarray(a, dtype=np.float64))
    if len(a) == 0:
        raise GenadError(f"video {sid} has no frames")
    return VideoSample(id=sid, frames=np.stack([_rgb8(f, sid) for f in a]))


def _rgb8(a: np.ndarray, sid: str) -> np.ndarray:
    """uint8 pixels HxW or HxWxC (C = 1, 3 or 4) as RGB HxWx3 (see as_samples)."""
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
        raise GenadError(f"image {sid}: pixels must be HxW or HxWxC with C = 1, 3 or 4, got {tuple(a.shape)}")
    if a.shape[-1] == 4:  # composite on white, as image files with transparency are read
        alpha = a[:, :, 3:].astype(np.float32) / 255.0
        a = np.clip(a[:, :, :3] * alpha + 255.0 * (1.0 - alpha) + 0.5, 0, 255).astype(np.uint8)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=2)
    return a


def _to_uint8(a: np.ndarray, what: str) -> np.ndarray:
    """Pixels of any number type as uint8 (see as_samples); the whole array scaled alike."""
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if a.dtype.kind in "iu":
        lo, hi = int(a.min()), int(a.max())
        if lo >= 0 and hi <= 255:
            return a.astype(np.uint8)
        if a.dtype == np.uint16:
            return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
        raise GenadError(f"{what}: integer pixels must lie in 0..255 (uint16 in 0..65535), got {lo}..{hi}")
    f = a.astype(np.float64)
    if not np.isfinite(f).all():
        raise GenadError(f"{what}: pixels must be finite numbers (found NaN or infinity)")
    low, high = float(f.min()), float(f.max())
    if low < 0 or high > 255:
        raise GenadError(f"{what}: float pixels must lie in 0..1 (or 0..255), got {low:g}..{high:g}")
    if high <= 1.0:
        f = f * 255.0
    return np.clip(f + 0.5, 0, 255).astype(np.uint8)


def _unique(samples: list[Sample], made: list[Sample]) -> None:
    """Give a sample made here whose id repeats an earlier one "#2", "#3", ... (samples that
    were handed in keep theirs)."""
    mine = {id(s) for s in made}
    seen: dict[str, int] = {}
    for s in samples:
        n = seen.get(s.id, 0)
        seen[s.id] = n + 1
        if n and id(s) in mine:
            new = f"{s.id}#{n + 1}"
            while new in seen:
                n += 1
                new = f"{s.id}#{n + 1}"
            seen[new] = 1
            s.id = new
