"""Video frames from a file (decoded by PyAV) or a folder of frame images.

Decoding streams frame by frame and keeps only the frames the chosen rate asks for, so a long
video never sits in memory at full rate; `max_side` shrinks frames while decoding. The source
index of every kept frame is in `meta["frame_index"]`, so that frame labels and results can be
matched to the original timeline.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from genad.errors import GenadError
from genad.io.images import is_image_file, read_image
from genad.types import GroundTruth, VideoSample, set_reader

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
# Refuse to hold more than this many bytes of frames: ask for a lower rate instead.
MAX_FRAME_BYTES = 4 * 1024**3


def load_video(
    path: str | Path,
    fps: float | None = None,
    max_frames: int | None = None,
    max_side: int | None = None,
) -> VideoSample:
    """Frames as uint8 (F, H, W, 3). `fps`: sample at this rate (None = every frame).
    `max_frames`: keep at most this many, spread evenly over the whole video when its length is
    known. `max_side`: shrink frames so the longer side is at most this. A folder of images is
    read as frames in sorted name order (`fps` then only labels their rate)."""
    path = Path(path)
    if fps is not None and fps <= 0:
        raise GenadError(f"fps must be > 0, got {fps}")
    if max_frames is not None and max_frames < 1:
        raise GenadError(f"max_frames must be >= 1, got {max_frames}")
    if not path.exists():
        raise GenadError(f"no such file or folder: {path}")
    if path.is_dir():
        return _load_folder(path, fps, max_frames, max_side)
    return _load_file(path, fps, max_frames, max_side)


def _target_size(w: int, h: int, max_side: int | None) -> tuple[int, int]:
    if max_side is None or max(w, h) <= max_side:
        return w, h
    s = max_side / max(w, h)
    return max(2, int(round(w * s))) // 2 * 2, max(2, int(round(h * s))) // 2 * 2


def _even_pick(n: int, k: int | None) -> np.ndarray:
    if k is None or n <= k:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(int))


def _load_folder(path: Path, fps: float | None, max_frames: int | None, max_side: int | None) -> VideoSample:
    files = sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p))
    if not files:
        raise GenadError(f"{path} holds no image frames (.png, .jpg, ...)")
    pick = _even_pick(len(files), max_frames)
    first = read_image(files[pick[0]])
    w, h = _target_size(first.shape[1], first.shape[0], max_side)
    frames = np.empty((len(pick), h, w, 3), dtype=np.uint8)
    _check_bytes(frames.nbytes, path)
    for j, i in enumerate(pick):
        im = first if j == 0 else read_image(files[i])
        if im.shape[:2] != (h, w):  # frames of mixed sizes: bring all to the first's size
            im = np.asarray(Image.fromarray(im).resize((w, h), Image.Resampling.BILINEAR))
        frames[j] = im
    return VideoSample(
        id=path.name,
        path=path,
        frames=frames,
        frame_paths=[files[i] for i in pick],
        fps=fps,
        meta={"frame_index": pick, "n_source_frames": len(files), "source": "folder"},
    )


def _check_bytes(nbytes: int, path: Path) -> None:
    if nbytes > MAX_FRAME_BYTES:
        raise GenadError(
            f"{path}: the frames would take {nbytes / 1024**3:.1f} GB: pass a lower fps, max_frames or max_side"
        )


def _load_file(path: Path, fps: float | None, max_frames: int | None, max_side: int | None) -> VideoSample:
    try:
        import av
    except ModuleNotFoundError as e:
        raise GenadError("reading video files needs PyAV: pip install 'genad[video]'") from e
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise GenadError(f"cannot decode video {path}: {e} (is it a complete video file?)") from e
    with container:
        if not container.streams.video:
            raise GenadError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        src_fps = float(stream.average_rate) if stream.average_rate else None
        n_src = int(stream.frames or 0)
        # Which source frames to keep: by time at `fps`, then evenly down to max_frames.
        step_t = None if fps is None else 1.0 / fps
        keep_idx: set[int] | None = None
        if max_frames is not None and n_src > 0:
            n_at_rate = n_src if (fps is None or not src_fps) else max(1, math.ceil(n_src * fps / src_fps))
            if n_at_rate > max_frames:
                if fps is None or not src_fps:
                    keep_idx = set(_even_pick(n_src, max_frames).tolist())
                else:
                    step_t = (n_src / src_fps) / max_frames
        frames: list[np.ndarray] = []
        index: list[int] = []
        nbytes = 0
        next_t = 0.0
        size: tuple[int, int] | None = None
        try:
            for i, frame in enumerate(container.decode(stream)):
                t = float(frame.time) if frame.time is not None else (i / src_fps if src_fps else float(i))
                if keep_idx is not None and i not in keep_idx:
                    continue
                if step_t is not None:
                    if t + 1e-6 < next_t:
                        continue
                    next_t = max(next_t + step_t, t + step_t * 0.5)
                if size is None:
                    size = _target_size(frame.width, frame.height, max_side)
                arr = frame.to_ndarray(width=size[0], height=size[1], format="rgb24")
                nbytes += arr.nbytes
                _check_bytes(nbytes, path)
                frames.append(arr)
                index.append(i)
                if max_frames is not None and len(frames) >= max_frames:
                    break
        except av.error.FFmpegError as e:
            if not frames:
                raise GenadError(f"cannot decode video {path}: {e} (is it a complete video file?)") from e
            # a truncated tail: keep what decoded, say so in meta
            truncated: str | None = str(e)
        else:
            truncated = None
    if not frames:
        raise GenadError(f"cannot decode video {path}: no frames could be read")
    meta = {
        "frame_index": np.asarray(index),
        "source_fps": src_fps,
        "n_source_frames": n_src or (index[-1] + 1),
        "source": "file",
    }
    if truncated:
        meta["truncated"] = truncated
    out_fps = fps if fps is not None else src_fps
    if step_t is not None and fps is not None and step_t != 1.0 / fps:
        out_fps = 1.0 / step_t
    elif keep_idx is not None and src_fps:
        out_fps = src_fps * len(frames) / max(n_src, 1)
    return VideoSample(id=path.name, path=path, frames=np.stack(frames), fps=out_fps, meta=meta)


def video_frames(sample: VideoSample) -> np.ndarray:
    """The sample's frames as uint8 (F, H, W, 3), reading them from disk if not loaded yet."""
    if sample.frames is not None:
        f = np.asarray(sample.frames)
        if f.ndim != 4 or f.shape[-1] != 3 or f.dtype != np.uint8:
            raise GenadError(f"video {sample.id!r}: frames must be uint8 (F, H, W, 3), got {f.dtype} {f.shape}")
        return f
    if sample.frame_paths:
        frames = [read_image(p) for p in sample.frame_paths]
        h, w = frames[0].shape[:2]
        return np.stack(
            [
                f if f.shape[:2] == (h, w) else np.asarray(Image.fromarray(f).resize((w, h), Image.Resampling.BILINEAR))
                for f in frames
            ]
        )
    if sample.path is not None:
        loaded = load_video(sample.path, fps=sample.fps)
        sample.meta.setdefault("frame_index", loaded.meta.get("frame_index"))
        return loaded.frames  # type: ignore[return-value]
    raise GenadError(f"video {sample.id!r} has neither frames nor a path")


set_reader("video", video_frames)  # VideoSample.load_frames() for samples made by hand


def write_video(path: str | Path, frames: np.ndarray, fps: float = 25.0, codec: str = "mpeg4") -> Path:
    """Write uint8 (F, H, W, 3) frames with PyAV (mpeg4 is in every FFmpeg build)."""
    import av

    path = Path(path)
    frames = np.asarray(frames, dtype=np.uint8)
    h, w = frames.shape[1:3]
    with av.open(str(path), mode="w") as out:
        st: Any = out.add_stream(codec, rate=int(round(fps)))
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        if codec == "mpeg4":
            st.bit_rate = 4_000_000  # default is low enough to smear small objects
        for f in frames:
            for pkt in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    return path


# --- a labelled folder of videos (for `genad eval`) ---------------------------------------

FRAME_LABELS_DIR = "frame_labels"
FRAME_LABELS_JSON = "frame_labels.json"


def _clips(folder: Path) -> list[tuple[str, Path]]:
    """(name, path) of each clip in `folder`: a video file, or a sub-folder of frame images."""
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES:
            out.append((p.stem, p))
        elif p.is_dir() and any(is_image_file(f) for f in p.iterdir() if f.is_file()):
            out.append((p.name, p))
    return out


def is_video_dataset(root: Path) -> bool:
    """True if `root` holds test/ clips with frame labels (see load_video_dataset)."""
    test = root / "test"
    if not test.is_dir() or not ((root / FRAME_LABELS_DIR).is_dir() or (root / FRAME_LABELS_JSON).is_file()):
        return False
    return bool(_clips(test))


def _read_frame_labels(path: Path) -> np.ndarray:
    """0/1 per source frame: a .npy array, or text with one number per line (or separated by
    commas or spaces)."""
    try:
        if path.suffix.lower() == ".npy":
            lab = np.load(path, allow_pickle=False)
        else:
            text = path.read_text(encoding="utf-8-sig").replace(",", " ").split()
            lab = np.array([float(v) for v in text])
    except (ValueError, OSError) as e:
        raise GenadError(f"cannot read the frame labels {path}: {e} (expected one 0/1 per frame)") from e
    lab = np.asarray(lab).ravel()
    if lab.size == 0 or not np.isin(lab, (0, 1)).all():
        raise GenadError(f"{path}: frame labels must be 0 or 1, one per frame of the clip")
    return lab.astype(bool)


def load_video_dataset(root: str | Path, split: str = "test") -> list[VideoSample]:
    """Labelled clips, read lazily (frames are decoded when a detector scores the clip):

        <root>/test/<clip>.mp4 | <root>/test/<clip>/<frames>.png   clips to score
        <root>/frame_labels/<clip>.npy | .txt | .csv               0/1 per source frame, or
        <root>/frame_labels.json          {"<clip>": [[start, end], ...]}: anomalous frames,
                                          0-based, end excluded ([] for a normal clip)
        <root>/train/<clip>.mp4 | <root>/train/<clip>/             optional normal clips

    truth.label is 1 when any frame of the clip is anomalous; every test clip needs labels.
    `split="train"` gives the normal clips ([] when there is no train/)."""
    root = Path(root)
    clips = _clips(root / split)
    if split != "test":
        return [
            VideoSample(id=f"{split}/{name}", path=p, frame_paths=_frame_files(p), truth=GroundTruth(label=0))
            for name, p in clips
        ]
    if not clips:
        raise GenadError(f"no clips found in {root}/test: expected video files or folders of frame images")
    ranges: dict[str, list] = {}
    json_path = root / FRAME_LABELS_JSON
    if json_path.is_file():
        import json

        try:
            ranges = json.loads(json_path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            raise GenadError(f"cannot read {json_path}: {e}") from e
        if not isinstance(ranges, dict):
            raise GenadError(f"{json_path} must map each clip's name to a list of [start, end] frame ranges")
    out = []
    for name, p in clips:
        truth: GroundTruth | None = None
        files = [root / FRAME_LABELS_DIR / f"{name}{suffix}" for suffix in (".npy", ".txt", ".csv")]
        label_file = next((f for f in files if f.is_file()), None)
        if label_file is not None:
            lab = _read_frame_labels(label_file)
            truth = GroundTruth(label=int(lab.any()), frame_labels=lab)
        elif name in ranges:
            try:
                rs = [(int(a), int(b)) for a, b in ranges[name]]
            except (TypeError, ValueError) as e:
                raise GenadError(f"{json_path}: {name!r} must be a list of [start, end] frame ranges") from e
            truth = GroundTruth(label=int(any(b > a for a, b in rs)), ranges=rs)
        if truth is None:
            raise GenadError(
                f"clip {name!r} in {root}/test has no frame labels: add {root}/{FRAME_LABELS_DIR}/{name}.npy "
                f"(or .txt, one 0/1 per frame) or an entry in {json_path}"
            )
        out.append(VideoSample(id=f"test/{name}", path=p, frame_paths=_frame_files(p), truth=truth))
    return out


def _frame_files(clip: Path) -> list[Path] | None:
    """The frame images of a clip folder, in name order (None for a video file)."""
    return sorted(f for f in clip.iterdir() if f.is_file() and is_image_file(f)) if clip.is_dir() else None
