"""Which labelled layout a path holds, for `genad eval`, and reading it as (test, normal
references).

    kind = data_kind(path)       # "images", "nab", "ucr", "series", "pointcloud" or "video"
    test, train = load_labelled(path, kind)

The layouts (see each loader for the details):
* images: MVTec-style (genad.io.mvtec), one category or a root of several; `genad eval` runs
  these through genad.evaluate, so load_labelled does not read them;
* nab: data/<group>/<name>.csv and labels/combined_windows.json (genad.io.timeseries.load_nab);
* ucr: files named ID_UCR_Anomaly_NAME_trainEnd_anomStart_anomEnd.txt, a folder of them or
  one (load_ucr);
* series: a .csv / .tsv series with a 0/1 label column (is_anomaly, anomaly, label), or a
  folder of them (load_labelled_series);
* pointcloud: test/<type>/ of .ply, .pcd, .xyz, .pts or .npy clouds (or MVTec 3D-AD's
  test/<type>/xyz/*.tiff with gt/*.png), optional train/good (load_pointcloud_dataset);
* video: test/<clip>.mp4 or test/<clip>/<frames> with frame_labels/<clip>.npy|.txt or
  frame_labels.json, optional train/ normal clips (load_video_dataset).
"""

from __future__ import annotations

from pathlib import Path

from genad.errors import GenadError
from genad.types import Sample

KINDS = ("images", "nab", "ucr", "series", "pointcloud", "video")
MODALITY_OF_KIND = {
    "images": "image",
    "nab": "timeseries",
    "ucr": "timeseries",
    "series": "timeseries",
    "pointcloud": "pointcloud",
    "video": "video",
}

LAYOUTS = (
    "an MVTec-style folder (test/good, test/<defect>/<images>) or a root of such categories; "
    "a NAB folder (data/<group>/*.csv + labels/combined_windows.json); "
    "UCR files (ID_UCR_Anomaly_NAME_trainEnd_anomStart_anomEnd.txt) or a folder of them; "
    "a .csv/.tsv series with a 0/1 label column (is_anomaly, anomaly, label) or a folder of them; "
    "point clouds in test/<type>/ (.ply .pcd .xyz .pts .npy, or MVTec 3D-AD xyz/*.tiff + gt/*.png); "
    "videos in test/ (files or frame folders) with frame_labels/<clip>.npy|.txt or frame_labels.json"
)


def _unknown(path: Path) -> GenadError:
    return GenadError(
        f"{path} is not an MVTec-style dataset nor another layout `genad eval` reads; it reads: {LAYOUTS}"
    )


def data_kind(path: str | Path) -> str:
    """The kind of labelled data at `path` (one of KINDS). A missing path is "images" (the
    image protocol names it); anything else that is none of the layouts raises GenadError with
    one line that lists them."""
    from genad.io.mvtec import categories, is_mvtec_root
    from genad.io.pointcloud import is_pointcloud_dataset
    from genad.io.timeseries import LABELLED_SUFFIXES, parse_ucr_name
    from genad.io.video import is_video_dataset

    path = Path(path)
    if not path.exists():
        return "images"
    if path.is_file():
        if parse_ucr_name(path.name) is not None:
            return "ucr"
        if path.suffix.lower() in LABELLED_SUFFIXES:
            return "series"
        raise _unknown(path)
    if (path / "labels" / "combined_windows.json").is_file() and (path / "data").is_dir():
        return "nab"
    if is_video_dataset(path):
        return "video"
    if is_pointcloud_dataset(path):
        return "pointcloud"
    if is_mvtec_root(path) or categories(path):
        return "images"
    files = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")]
    if files and any(parse_ucr_name(p.name) is not None for p in files if p.suffix.lower() == ".txt"):
        return "ucr"
    if files and all(p.suffix.lower() in LABELLED_SUFFIXES for p in files):
        return "series"
    raise _unknown(path)


def load_labelled(path: str | Path, kind: str) -> tuple[list[Sample], list[Sample]]:
    """(the labelled samples to score, the normal references the data set offers) of a
    non-image kind (see data_kind). Series data sets offer no references (UCR's normal
    training prefix lives in each series, as `train_end`)."""
    path = Path(path)
    if kind == "nab":
        from genad.io.timeseries import load_nab

        return list(load_nab(path)), []
    if kind == "ucr":
        from genad.io.timeseries import load_labelled_series, load_ucr

        return list(load_ucr(path) if path.is_dir() else load_labelled_series(path)), []
    if kind == "series":
        from genad.io.timeseries import load_labelled_series

        return list(load_labelled_series(path)), []
    if kind == "pointcloud":
        from genad.io.pointcloud import load_pointcloud_dataset

        return list(load_pointcloud_dataset(path, "test")), list(load_pointcloud_dataset(path, "train"))
    if kind == "video":
        from genad.io.video import load_video_dataset

        return list(load_video_dataset(path, "test")), list(load_video_dataset(path, "train"))
    raise GenadError(f"no loader for {kind!r} here: choose one of {', '.join(KINDS[1:])}")
