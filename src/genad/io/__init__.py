"""Loaders: turn files and folders into Samples.

`load_inputs` is the one entry the CLI and the service use: it walks folders, guesses each
file's modality from its suffix (or takes `modality=`) and hands the file to the loader of
that modality. The series, point-cloud and video loaders are imported only when needed, so
an image-only install never pays for them.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from genad.errors import GenadError
from genad.io import video as _video  # noqa: F401 - registers the frame reader
from genad.io.folder import list_files, sample_id
from genad.io.images import IMAGE_SUFFIXES
from genad.types import ImageSample, Sample, set_reader

SERIES_SUFFIXES = {".csv", ".npy", ".txt", ".tsv"}
POINTCLOUD_SUFFIXES = {".ply", ".pcd", ".xyz", ".pts"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}

# What a file suffix means when no modality is given.
SUFFIXES_BY_MODALITY: dict[str, set[str]] = {
    "image": IMAGE_SUFFIXES,
    "timeseries": SERIES_SUFFIXES,
    "pointcloud": POINTCLOUD_SUFFIXES,
    "video": VIDEO_SUFFIXES,
}
# Extra suffixes a modality accepts when asked for explicitly (e.g. --modality pointcloud).
_ACCEPTED_WHEN_ASKED: dict[str, set[str]] = {
    "image": IMAGE_SUFFIXES,
    "timeseries": SERIES_SUFFIXES,
    "pointcloud": POINTCLOUD_SUFFIXES | {".npy", ".pts", ".csv", ".txt", ".tif", ".tiff"},
    "video": VIDEO_SUFFIXES,
}
# modality -> (module, function, extra to install)
_LOADERS: dict[str, tuple[str, str, str]] = {
    "timeseries": ("genad.io.timeseries", "load_series_file", "timeseries"),
    "pointcloud": ("genad.io.pointcloud", "load_point_cloud", "pointcloud"),
    "video": ("genad.io.video", "load_video", "video"),
}
MODALITIES = ("image", "timeseries", "pointcloud", "video")
_log = logging.getLogger("genad.io")


def guess_modality(path: Path) -> str | None:
    """The modality a file's suffix suggests, or None for an unknown suffix."""
    suffix = path.suffix.lower()
    for modality, suffixes in SUFFIXES_BY_MODALITY.items():
        if suffix in suffixes:
            return modality
    return None


def _loader(modality: str) -> Callable[..., Sample]:
    module_name, func, extra = _LOADERS[modality]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise GenadError(
                f"reading {modality} files needs {module_name}, which this install lacks: pip install 'genad[{extra}]'"
            ) from e
        raise GenadError(f"reading {modality} files needs the package {e.name!r}: pip install 'genad[{extra}]'") from e
    return getattr(module, func)


def load_file(path: Path, modality: str, sid: str) -> Sample:
    """One file as a Sample of `modality`, with id `sid`. Images are read lazily."""
    if modality == "image":
        return ImageSample(id=sid, path=path)
    sample = _loader(modality)(path)
    sample.id = sid
    if sample.path is None:
        sample.path = path
    return sample


def _check_modality(modality: str | None) -> None:
    if modality is not None and modality not in MODALITIES:
        raise GenadError(f"unknown modality {modality!r}: choose one of {', '.join(MODALITIES)}")


def _expand_folder(folder: Path, modality: str | None, recursive: bool) -> list[tuple[Path, str]]:
    if modality is not None:
        files = list_files(folder, _ACCEPTED_WHEN_ASKED[modality], recursive)
        return [(p, modality) for p in files]
    known = set().union(*SUFFIXES_BY_MODALITY.values())
    files = list_files(folder, known, recursive)
    pairs = [(p, guess_modality(p) or "image") for p in files]
    return pairs


def _video_folder(folder: Path, recursive: bool) -> list[Sample]:
    """With --modality video: a folder holding image files is one video (its frames); else
    each video file, and each sub-folder of frames, is one video."""
    if any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
        return [load_file(folder, "video", folder.name)]
    out = [load_file(p, "video", sample_id(p, folder)) for p in list_files(folder, VIDEO_SUFFIXES, recursive)]
    subdirs = sorted(
        d for d in (folder.rglob("*") if recursive else folder.iterdir()) if d.is_dir() and not d.name.startswith(".")
    )
    for d in subdirs:
        if any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in d.iterdir()):
            out.append(load_file(d, "video", sample_id(d, folder)))
    return out


def load_inputs(paths: Sequence[str | Path], modality: str | None = None, recursive: bool = True) -> list[Sample]:
    """Files and folders -> Samples, in the order given (folders sorted by path).

    Dispatch is by suffix: images -> ImageSample; .csv/.npy/.txt/.tsv -> time series;
    .ply/.pcd/.xyz -> point cloud; .mp4/.avi/.mov/.mkv/.webm -> video. `modality` overrides
    the guess: e.g. "pointcloud" reads .npy files as clouds, and "video" reads a folder of
    frames as one video (and a folder of frame folders as one video each). Raises GenadError for a missing path, an unknown suffix or a folder
    with nothing readable in it.
    """
    _check_modality(modality)
    if not paths:
        raise GenadError("no input given: name one or more files or folders")
    samples: list[Sample] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise GenadError(f"no such file or folder: {path}")
        if path.is_dir():
            if modality == "video":
                videos = _video_folder(path, recursive)
                if videos:
                    samples.extend(videos)
                    continue
            pairs = _expand_folder(path, modality, recursive)
            if not pairs:
                what = f"{modality} files" if modality else "images, series, point clouds or videos"
                raise GenadError(f"no {what} found in {path}: check the folder, or pass --modality")
            samples.extend(_load_walked(pairs, path, strict=modality is not None))
            continue
        m = modality or guess_modality(path)
        if m is None:
            raise GenadError(
                f"cannot tell what {path} is from its suffix {path.suffix or '(none)'!r}: pass --modality "
                f"({', '.join(MODALITIES)})"
            )
        samples.append(load_file(path, m, path.name))
    return _unique_ids(samples)


def _load_walked(pairs: list[tuple[Path, str]], root: Path, strict: bool) -> list[Sample]:
    """Files found by walking a folder. Without an explicit modality a stray file that its
    guessed loader cannot read (a README.txt beside the images) is skipped with a warning
    rather than stopping the run; if nothing at all can be read, the first error is raised."""
    out: list[Sample] = []
    first: GenadError | None = None
    for p, m in pairs:
        try:
            out.append(load_file(p, m, sample_id(p, root)))
        except GenadError as e:
            if strict or m == "image":
                raise
            first = first or e
            _log.warning("skipped %s: %s (pass --modality to read it as something else)", p, e)
    if not out and first is not None:
        raise first
    return out


def _unique_ids(samples: list[Sample]) -> list[Sample]:
    # Two inputs with the same name (a/x.png, b/x.png given as files) must not collide.
    seen: dict[str, int] = {}
    for s in samples:
        n = seen.get(s.id, 0)
        seen[s.id] = n + 1
        if n:
            s.id = f"{s.id}#{n + 1}"
    return samples


def _path_samples(path: Path, modality: str | None) -> list[Sample]:
    """A file or folder handed to a detector's fit() or predict() (genad.types.as_samples), read
    as `load_inputs` reads it with `modality` (the detector's); a file whose suffix that
    modality does not read is refused here rather than failing later."""
    accepted = _ACCEPTED_WHEN_ASKED.get(modality or "")
    if accepted is not None and path.is_file() and path.suffix.lower() not in accepted:
        raise GenadError(
            f"{path} is not a file that {'an' if modality == 'image' else 'a'} {modality} detector reads "
            f"({', '.join(sorted(accepted))})"
        )
    return load_inputs([path], modality)


set_reader("samples", _path_samples)  # genad.types.as_samples: paths given to fit() / predict()

__all__ = ["load_inputs", "load_file", "guess_modality", "MODALITIES"]
