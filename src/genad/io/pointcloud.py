"""Point clouds from PLY, PCD, XYZ/CSV/TXT, NumPy and MVTec-3D organised TIFF files.

Every loader returns float64 (N, 3) points with missing points (NaN, inf, and the all-zero
pixels of organised TIFF scans) dropped; `meta["pixel_index"]` keeps, for a TIFF, the flat
pixel index of each kept point so that results can be drawn back onto the scan's grid.
The PLY and PCD readers are small and numpy-vectorised: no extra dependency.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from genad.errors import GenadError
from genad.types import GroundTruth, PointCloudSample

POINTCLOUD_SUFFIXES = {".ply", ".pcd", ".xyz", ".pts", ".npy", ".tif", ".tiff", ".csv", ".txt"}

# PLY scalar type names (both spellings) -> numpy type codes.
_PLY_TYPES = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}


def load_point_cloud(path: str | Path, *, drop_invalid: bool = True) -> PointCloudSample:
    """Read a point cloud file by its suffix. Raises GenadError with a clear message for a
    missing file, an unreadable header, an empty cloud or a cloud that is all NaN."""
    path = Path(path)
    if not path.exists():
        raise GenadError(f"no such file: {path}")
    if path.is_dir():
        raise GenadError(f"{path} is a folder, not a point cloud file")
    suffix = path.suffix.lower()
    meta: dict[str, Any] = {"format": suffix.lstrip(".")}
    colors: np.ndarray | None = None
    labels: np.ndarray | None = None
    if suffix == ".ply":
        cols = read_ply(path)
        points, colors, labels = _xyz_rgb_label(cols, path)
    elif suffix == ".pcd":
        cols = read_pcd(path)
        points, colors, labels = _xyz_rgb_label(cols, path)
    elif suffix == ".npy":
        points = _read_npy(path)
    elif suffix in (".tif", ".tiff"):
        points, pixel_index, shape = read_organised_tiff(path)
        meta["pixel_index"] = pixel_index
        meta["grid_shape"] = shape
    elif suffix in (".xyz", ".pts", ".csv", ".txt"):
        points, colors = _read_text(path)
    else:
        raise GenadError(f"unknown point cloud format {suffix!r} ({path}): use .ply, .pcd, .xyz, .csv, .npy or .tiff")
    points, colors, labels, keep = _clean(points, colors, labels, path, drop_invalid)
    if keep is not None:
        meta["n_dropped"] = int((~keep).sum())
        if "pixel_index" in meta:
            meta["pixel_index"] = meta["pixel_index"][keep]
    truth = None
    if labels is not None:
        point_labels = labels.astype(bool)
        truth = GroundTruth(label=int(point_labels.any()), point_labels=point_labels)
    return PointCloudSample(id=path.name, path=path, points=points, colors=colors, truth=truth, meta=meta)


def _clean(
    points: np.ndarray,
    colors: np.ndarray | None,
    labels: np.ndarray | None,
    path: Path,
    drop_invalid: bool,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise GenadError(f"{path}: expected points of shape (N, 3), got {points.shape}")
    if len(points) == 0:
        raise GenadError(f"{path} holds no points")
    finite = np.isfinite(points).all(axis=1)
    keep = None
    if not finite.all():
        if not drop_invalid:
            raise GenadError(f"{path}: {int((~finite).sum())} points are NaN or infinite")
        keep = finite
        points = points[keep]
        colors = None if colors is None else colors[keep]
        labels = None if labels is None else labels[keep]
    if len(points) == 0:
        raise GenadError(f"{path}: every point is NaN or infinite (missing), nothing to inspect")
    return points, colors, labels, keep


def _read_npy(path: Path) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise GenadError(f"cannot read {path}: {e} (expected a .npy array of shape (N, 3))") from e
    if a.ndim == 3 and a.shape[2] == 3:  # an organised H x W x 3 grid saved as .npy
        a = a.reshape(-1, 3)
        a = a[np.any(a != 0, axis=1)]
    if a.ndim != 2 or a.shape[1] < 3:
        raise GenadError(f"{path}: expected an array of shape (N, 3), got {a.shape}")
    return a[:, :3].astype(np.float64)


def _read_text(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """x y z [r g b] per line, separated by spaces, commas, semicolons or tabs; a header line
    of names (x,y,z,...) is skipped."""
    text = path.read_text(errors="replace").splitlines()
    rows = [ln for ln in text if ln.strip() and not ln.lstrip().startswith(("#", "//"))]
    if rows:
        try:
            [float(v) for v in re.split(r"[\s,;]+", rows[0].strip())]
        except ValueError:
            rows = rows[1:]  # a header line of column names
    if not rows:
        raise GenadError(f"{path} holds no points")
    try:
        data = np.array([re.split(r"[\s,;]+", ln.strip()) for ln in rows], dtype=np.float64)
    except ValueError as e:
        raise GenadError(
            f"cannot read {path}: every line must be 'x y z [r g b]' with the same number of numbers ({e})"
        ) from e
    if data.ndim != 2 or data.shape[1] < 3:
        raise GenadError(f"{path}: expected at least 3 numbers (x y z) per line")
    colors = None
    if data.shape[1] >= 6:
        c = data[:, 3:6]
        colors = (c * 255 if c.max(initial=0) <= 1.0 else c).clip(0, 255).astype(np.uint8)
    return data[:, :3], colors


# --- PLY ---------------------------------------------------------------------------------


def read_ply(path: str | Path) -> dict[str, np.ndarray]:
    """The vertex properties of a PLY file (ascii, binary little or big endian) by name."""
    path = Path(path)
    with open(path, "rb") as f:
        first = f.readline().strip()
        if first != b"ply":
            raise GenadError(f"{path} is not a PLY file (its first line must be 'ply')")
        fmt = None
        elements: list[tuple[str, int, list[tuple[str, str, str | None]]]] = []
        while True:
            line = f.readline()
            if not line:
                raise GenadError(f"unreadable PLY header in {path}: no 'end_header' line")
            words = line.decode("ascii", "replace").split()
            if not words or words[0] in ("comment", "obj_info"):
                continue
            if words[0] == "end_header":
                break
            try:
                if words[0] == "format":
                    fmt = words[1]
                elif words[0] == "element":
                    elements.append((words[1], int(words[2]), []))
                elif words[0] == "property":
                    if words[1] == "list":  # property list <count type> <item type> <name>
                        elements[-1][2].append((words[4], _ply_type(words[3], path), _ply_type(words[2], path)))
                    else:
                        elements[-1][2].append((words[2], _ply_type(words[1], path), None))
                else:
                    raise ValueError(words[0])
            except (IndexError, ValueError) as e:
                raise GenadError(f"unreadable PLY header in {path}: bad line {line.strip()!r}") from e
        if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
            raise GenadError(f"unreadable PLY header in {path}: unknown format {fmt!r}")
        if not any(name == "vertex" for name, _, _ in elements):
            raise GenadError(f"unreadable PLY header in {path}: no 'element vertex'")
        body = f.read()
    if fmt == "ascii":
        return _ply_ascii(body, elements, path)
    return _ply_binary(body, elements, "<" if fmt == "binary_little_endian" else ">", path)


def _ply_type(name: str, path: Path) -> str:
    if name not in _PLY_TYPES:
        raise GenadError(f"unreadable PLY header in {path}: unknown property type {name!r}")
    return _PLY_TYPES[name]


def _ply_ascii(body: bytes, elements: list, path: Path) -> dict[str, np.ndarray]:
    lines = body.decode("ascii", "replace").splitlines()
    start = 0
    for name, count, props in elements:
        if name != "vertex":
            start += count  # ascii: one line per element item, lists included
            continue
        rows = lines[start : start + count]
        if len(rows) < count:
            raise GenadError(f"{path}: PLY says {count} vertices but holds {len(rows)}")
        if any(p[2] is not None for p in props):
            raise GenadError(f"{path}: list properties on vertices are not supported")
        try:
            data = np.array([r.split()[: len(props)] for r in rows], dtype=np.float64).reshape(count, len(props))
        except ValueError as e:
            raise GenadError(f"{path}: bad vertex line in PLY ({e})") from e
        return {p[0]: data[:, i] for i, p in enumerate(props)}
    raise AssertionError("unreachable")


def _ply_binary(body: bytes, elements: list, endian: str, path: Path) -> dict[str, np.ndarray]:
    offset = 0
    for name, count, props in elements:
        has_list = any(p[2] is not None for p in props)
        if name == "vertex":
            if has_list:
                raise GenadError(f"{path}: list properties on vertices are not supported")
            dtype = np.dtype([(p[0], endian + p[1]) for p in props])
            need = dtype.itemsize * count
            if offset + need > len(body):
                raise GenadError(f"{path}: PLY file is truncated ({count} vertices declared)")
            data = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
            return {p[0]: data[p[0]].astype(np.float64) for p in props}
        if not has_list:
            offset += np.dtype([(p[0], endian + p[1]) for p in props]).itemsize * count
            continue
        for _ in range(count):  # rare: a list element (faces) before the vertices
            for _pname, item_t, count_t in props:
                if count_t is None:
                    offset += np.dtype(item_t).itemsize
                else:
                    n = int(np.frombuffer(body, endian + count_t, 1, offset)[0])
                    offset += np.dtype(count_t).itemsize + n * np.dtype(item_t).itemsize
    raise AssertionError("unreachable")


def write_ply(
    path: str | Path,
    points: np.ndarray,
    colors: np.ndarray | None = None,
    binary: bool = True,
    extra: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write points (and optional uint8 colors, and float `extra` columns such as a per-point
    anomaly score) as PLY, e.g. to view scores in CloudCompare or MeshLab."""
    path = Path(path)
    pts = np.asarray(points, dtype=np.float32)
    fields: list[tuple[str, str, np.ndarray]] = [("x", "f4", pts[:, 0]), ("y", "f4", pts[:, 1]), ("z", "f4", pts[:, 2])]
    if colors is not None:
        c = np.asarray(colors, dtype=np.uint8)
        fields += [("red", "u1", c[:, 0]), ("green", "u1", c[:, 1]), ("blue", "u1", c[:, 2])]
    for k, v in (extra or {}).items():
        fields.append((k, "f4", np.asarray(v, dtype=np.float32)))
    names = {"f4": "float", "u1": "uchar"}
    header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0", f"element vertex {len(pts)}"]
    header += [f"property {names[t]} {n}" for n, t, _ in fields] + ["end_header"]
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        if binary:
            rec = np.empty(len(pts), dtype=[(n, "<" + t) for n, t, _ in fields])
            for n, _, v in fields:
                rec[n] = v
            f.write(rec.tobytes())
        else:
            cols = np.column_stack([v.astype(np.float64) for _, _, v in fields])
            np.savetxt(f, cols, fmt="%.6g")
    return path


# --- PCD ---------------------------------------------------------------------------------


def read_pcd(path: str | Path) -> dict[str, np.ndarray]:
    """The fields of a PCD file (ascii, binary or binary_compressed) by name.
    A packed `rgb` float field is unpacked into red/green/blue."""
    path = Path(path)
    raw = path.read_bytes()
    header: dict[str, list[str]] = {}
    pos = 0
    while True:
        end = raw.find(b"\n", pos)
        if end < 0:
            raise GenadError(f"unreadable PCD header in {path}: no DATA line")
        line = raw[pos:end].decode("ascii", "replace").strip()
        pos = end + 1
        if not line or line.startswith("#"):
            continue
        key, *vals = line.split()
        header[key.upper()] = vals
        if key.upper() == "DATA":
            break
    try:
        names = header["FIELDS"]
        sizes = [int(s) for s in header["SIZE"]]
        types = header["TYPE"]
        counts = [int(c) for c in header.get("COUNT", ["1"] * len(names))]
        n = int(header["POINTS"][0]) if "POINTS" in header else int(header["WIDTH"][0]) * int(header["HEIGHT"][0])
        kind = header["DATA"][0].lower()
    except (KeyError, ValueError, IndexError) as e:
        raise GenadError(f"unreadable PCD header in {path}: missing or bad {e}") from e
    if not (len(names) == len(sizes) == len(types) == len(counts)):
        raise GenadError(f"unreadable PCD header in {path}: FIELDS/SIZE/TYPE/COUNT lengths differ")
    dtype = np.dtype(
        [
            (nm, f"<{ {'F': 'f', 'I': 'i', 'U': 'u'}.get(t.upper(), 'f') }{sz}", (c,) if c > 1 else ())
            for nm, sz, t, c in zip(names, sizes, types, counts)
        ]
    )
    if kind == "ascii":
        text = raw[pos:].decode("ascii", "replace").split()
        flat = np.array(text, dtype=np.float64)
        width = sum(counts)
        if flat.size < n * width:
            raise GenadError(f"{path}: PCD says {n} points but holds fewer values")
        flat = flat[: n * width].reshape(n, width)
        out, col = {}, 0
        for nm, c, t in zip(names, counts, types):
            out[nm] = flat[:, col] if c == 1 else flat[:, col : col + c]
            if nm in ("rgb", "rgba") and c == 1:  # packed colour: float bits, or an integer
                v = flat[:, col]
                out[nm] = v.astype(np.uint32) if t.upper() in ("U", "I") else v.astype(np.float32)
            col += c
    elif kind == "binary":
        if pos + dtype.itemsize * n > len(raw):
            raise GenadError(f"{path}: PCD file is truncated ({n} points declared)")
        data = np.frombuffer(raw, dtype=dtype, count=n, offset=pos)
        out = {nm: data[nm] for nm in names}
    elif kind == "binary_compressed":
        out = _pcd_compressed(raw, pos, n, names, sizes, types, counts, path)
    else:
        raise GenadError(f"{path}: PCD DATA {kind!r} is not supported: use ascii, binary or binary_compressed")
    colour_key = "rgb" if "rgb" in out else "rgba" if "rgba" in out else None
    if colour_key is not None and np.ndim(out[colour_key]) == 1:
        v = np.asarray(out[colour_key])
        packed = v.astype(np.uint32) if v.dtype.kind in "ui" else v.astype(np.float32).view(np.uint32)
        out["red"], out["green"], out["blue"] = (
            ((packed >> 16) & 255).astype(np.float64),
            ((packed >> 8) & 255).astype(np.float64),
            (packed & 255).astype(np.float64),
        )
    return out


def _pcd_compressed(
    raw: bytes, pos: int, n: int, names: list[str], sizes: list[int], types: list[str], counts: list[int], path: Path
) -> dict[str, np.ndarray]:
    """PCL's binary_compressed body: two uint32 (compressed, uncompressed size), then LZF data
    that holds each field for all points in turn (structure of arrays, not records)."""
    if pos + 8 > len(raw):
        raise GenadError(f"{path}: PCD file is truncated (no compressed-data header)")
    csize, usize = struct.unpack_from("<II", raw, pos)
    body = raw[pos + 8 : pos + 8 + csize]
    need = n * sum(sz * c for sz, c in zip(sizes, counts))
    if len(body) < csize or usize < need:
        raise GenadError(f"{path}: PCD file is truncated ({n} points declared)")
    try:
        import lzf
    except ImportError as e:
        raise GenadError(
            f"{path}: reading binary_compressed PCD needs python-neo-lzf: "
            "pip install 'genad[pointcloud]' (or save the cloud as binary)"
        ) from e
    try:
        buf = lzf.decompress(body, usize)
    except (ValueError, OSError) as e:
        raise GenadError(f"{path}: the PCD's compressed data is corrupt ({e})") from e
    if buf is None or len(buf) < need:
        raise GenadError(f"{path}: the PCD's compressed data is corrupt (it expands to fewer bytes than declared)")
    out, off = {}, 0
    for nm, sz, t, c in zip(names, sizes, types, counts):
        arr = np.frombuffer(
            buf, dtype=f"<{ {'F': 'f', 'I': 'i', 'U': 'u'}.get(t.upper(), 'f') }{sz}", count=n * c, offset=off
        )
        out[nm] = arr.reshape(n, c) if c > 1 else arr
        off += n * sz * c
    return out


def _xyz_rgb_label(cols: dict[str, np.ndarray], path: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    if not all(k in cols for k in "xyz"):
        raise GenadError(f"{path}: no x, y, z properties (found {', '.join(cols)})")
    points = np.column_stack([np.asarray(cols[k], dtype=np.float64) for k in "xyz"])
    colors = None
    if all(k in cols for k in ("red", "green", "blue")):
        c = np.column_stack([np.asarray(cols[k], dtype=np.float64) for k in ("red", "green", "blue")])
        colors = (c * 255 if c.max(initial=0) <= 1.0 else c).clip(0, 255).astype(np.uint8)
    labels = None
    for k in ("anomaly", "label", "is_anomaly"):
        if k in cols:
            labels = np.asarray(cols[k]) > 0
            break
    return points, colors, labels


# --- MVTec-3D organised TIFF -------------------------------------------------------------


def read_organised_tiff(path: str | Path) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """An organised H x W x 3 xyz TIFF (MVTec-3D AD). Returns the valid points, the flat pixel
    index of each, and (H, W). All-zero pixels are missing points and are dropped."""
    try:
        import tifffile
    except ModuleNotFoundError as e:
        raise GenadError("reading .tiff point clouds needs tifffile: pip install 'genad[pointcloud]'") from e
    try:
        a = tifffile.imread(str(path))
    except Exception as e:  # tifffile raises many types for a bad file
        raise GenadError(f"cannot read TIFF {path}: {e}") from e
    if a.ndim != 3 or a.shape[2] != 3:
        raise GenadError(f"{path}: expected an organised H x W x 3 xyz TIFF, got shape {a.shape}")
    h, w = a.shape[:2]
    flat = a.reshape(-1, 3).astype(np.float64)
    valid = np.any(flat != 0, axis=1) & np.isfinite(flat).all(axis=1)
    idx = np.flatnonzero(valid)
    if idx.size == 0:
        raise GenadError(f"{path}: every pixel is zero (no points)")
    return flat[idx], idx, (h, w)


# --- a labelled folder of clouds (for `genad eval`) ---------------------------------------

#: the files a labelled point-cloud folder holds in test/<type>/ (train/good/)
DATASET_SUFFIXES = {".ply", ".pcd", ".xyz", ".pts", ".npy"}
NORMAL_DIRS = ("good", "ok", "normal")  # as genad.io.mvtec


def cloud_files(type_dir: Path) -> list[Path]:
    """The clouds of one test/<type>/ (or train/good/) folder: MVTec 3D-AD's xyz/*.tiff where
    there is an xyz/ folder, else the point-cloud files in it (sorted)."""
    if (type_dir / "xyz").is_dir():
        return sorted(p for p in (type_dir / "xyz").iterdir() if p.suffix.lower() in (".tif", ".tiff"))
    return sorted(
        p
        for p in type_dir.iterdir()
        if p.is_file() and p.suffix.lower() in DATASET_SUFFIXES and not p.name.startswith(".")
    )


def is_pointcloud_dataset(root: Path) -> bool:
    """True if `root` holds test/<type>/ folders of point clouds (see load_pointcloud_dataset)."""
    test = root / "test"
    if not test.is_dir():
        return False
    dirs = [d for d in test.iterdir() if d.is_dir() and not d.name.startswith(".")]
    return bool(dirs) and any(cloud_files(d) for d in dirs)


def _gt_labels(type_dir: Path, cloud: Path, sample: PointCloudSample) -> np.ndarray | None:
    """MVTec 3D-AD: the point labels of xyz/<stem>.tiff from gt/<stem>.png (> 0 = anomalous),
    picked by the kept points' pixel index."""
    gt = type_dir / "gt" / f"{cloud.stem}.png"
    idx = sample.meta.get("pixel_index")
    if not gt.is_file() or idx is None:
        return None
    from genad.io.images import read_mask

    mask = read_mask(gt)
    if tuple(mask.shape) != tuple(sample.meta["grid_shape"]):
        raise GenadError(f"{gt} is {mask.shape[1]}x{mask.shape[0]} but its scan {cloud} is not: fix or remove it")
    return np.asarray(mask, dtype=bool).ravel()[idx]


def load_pointcloud_dataset(root: str | Path, split: str = "test") -> list[PointCloudSample]:
    """A labelled folder of clouds, laid out as MVTec-style images are:

        <root>/test/good/*.ply                 normal clouds (.ply, .pcd, .xyz, .pts, .npy)
        <root>/test/<defect>/*.ply             anomalous clouds; point labels from a per-point
                                               property `anomaly`, `label` or `is_anomaly` (PLY, PCD)
        <root>/train/good/*.ply                optional normal references
        MVTec 3D-AD: <root>/test/<type>/xyz/*.tiff with point labels from test/<type>/gt/<stem>.png

    truth.label is 0 in the normal folder (good, ok, normal) and 1 elsewhere; the points of a
    normal cloud are all normal; an anomalous cloud without point labels has an object label
    only. Ids are paths below `root`. `split="train"` gives the normal references ([] when
    there is no train/good)."""
    root = Path(root)
    split_dir = root / split
    if not split_dir.is_dir():
        if split == "test":
            raise GenadError(f"{root} is not a point-cloud dataset: expected {root}/test/<type>/<clouds>")
        return []
    out: list[PointCloudSample] = []
    for type_dir in sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")):
        normal = type_dir.name.lower() in NORMAL_DIRS
        if split != "test" and not normal:
            continue
        for p in cloud_files(type_dir):
            s = load_point_cloud(p)
            s.id = p.relative_to(root).as_posix()
            s.class_name = root.name
            points = s.truth.point_labels if s.truth is not None else None
            if normal:
                points = np.zeros(len(s.points), dtype=bool)
            elif points is None:
                points = _gt_labels(type_dir, p, s)
            s.truth = GroundTruth(
                label=0 if normal else 1, defect_type="good" if normal else type_dir.name, point_labels=points
            )
            out.append(s)
    if not out and split == "test":
        raise GenadError(f"no point clouds found in {root}/test/<type>/: expected .ply, .pcd, .xyz, .pts or .npy files")
    return out
