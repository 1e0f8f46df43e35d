"""Reading time series: CSV/TSV, NumPy, plain text, the UCR anomaly archive and NAB.

Every loader returns a TimeSeriesSample with `values` float64 (T,) or (T, D); missing cells
become NaN (the detectors interpolate them and say so). Ground truth, when the data carries it,
is `GroundTruth(label=1 if any range else 0, ranges=[(start, end), ...])` with [start, end)
0-based indices.

Conventions:
- CSV: the first row is a header when any cell in it is not a number. The time column is
  `time_col` (name or 0-based index) or else the first column named like a time (timestamp,
  time, date, datetime, ts) or holding dates; value columns are `value_cols` or every other
  numeric column. A 0/1 column named is_anomaly / anomaly / label is read as ground truth.
- UCR (`ID_UCR_Anomaly_NAME_trainEnd_anomStart_anomEnd.txt`): the first trainEnd points are
  a normal training prefix (train_end); the anomaly covers points anomStart..anomEnd, both
  included, so truth.ranges = [(anomStart, anomEnd + 1)].
- NAB: labels/combined_windows.json maps "group/name.csv" to [start, end] timestamp windows,
  both ends included; they become index ranges over the series' own timestamps.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np

from genad.errors import GenadError
from genad.ops import runs_to_ranges
from genad.types import GroundTruth, TimeSeriesSample

SERIES_SUFFIXES = {".csv", ".tsv", ".npy", ".txt"}
_TIME_NAMES = {"timestamp", "time", "date", "datetime", "ts", "time_stamp", "index"}
_LABEL_NAMES = {"is_anomaly", "anomaly", "label", "labels", "is_anomalous"}
_UCR_RE = re.compile(r"^(\d+)_UCR_Anomaly_(.+)_(\d+)_(\d+)_(\d+)$")


def is_series_file(path: Path) -> bool:
    return path.suffix.lower() in SERIES_SUFFIXES and not path.name.startswith(".")


def parse_ucr_name(name: str) -> dict | None:
    """`135_UCR_Anomaly_InternalBleeding16_1200_4187_4199.txt` ->
    {"id": 135, "name": "InternalBleeding16", "train_end": 1200, "range": (4187, 4200)};
    None when the name does not follow the UCR pattern. The anomaly end is inclusive in the
    name, exclusive in the returned range."""
    m = _UCR_RE.match(Path(name).stem)
    if m is None:
        return None
    ident, series, train_end, a, b = m.groups()
    start, end = int(a), int(b)
    if end < start:
        start, end = end, start
    return {"id": int(ident), "name": series, "train_end": int(train_end), "range": (start, end + 1)}


def _truth(ranges: list[tuple[int, int]]) -> GroundTruth:
    return GroundTruth(label=int(bool(ranges)), ranges=list(ranges))


def _to_float(cell: str) -> float:
    cell = cell.strip()
    if cell == "" or cell.lower() in {"nan", "na", "null", "none", "?"}:
        return float("nan")
    return float(cell)


def _is_number(cell: str) -> bool:
    try:
        _to_float(cell)
        return True
    except ValueError:
        return False


def parse_times(cells: list[str]) -> np.ndarray | None:
    """Timestamps as datetime64[ms] (ISO dates) or float (numbers); None if neither parses."""
    try:
        return np.array([c.strip().replace("T", " ") for c in cells], dtype="datetime64[ms]")
    except ValueError:
        pass
    try:
        return np.array([_to_float(c) for c in cells], dtype=np.float64)
    except ValueError:
        return None


def _col_index(spec: str | int, header: list[str] | None, n_cols: int, path: Path) -> int:
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit() and (header is None or spec not in header)):
        i = int(spec)
        if not 0 <= i < n_cols:
            raise GenadError(f"{path}: column {i} does not exist (the file has {n_cols} columns)")
        return i
    if header is None or spec not in header:
        have = ", ".join(header) if header else "no header row"
        raise GenadError(f"{path}: no column named {spec!r} (columns: {have})")
    return header.index(spec)


def _read_table(
    path: Path, delimiter: str, time_col: str | int | None, value_cols: list[str | int] | None
) -> TimeSeriesSample:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f, delimiter=delimiter) if r and any(c.strip() for c in r)]
    if not rows:
        raise GenadError(f"{path} is empty: a series needs at least one value")
    n_cols = max(len(r) for r in rows)
    rows = [r + [""] * (n_cols - len(r)) for r in rows]
    header: list[str] | None = None
    # A header row holds a cell that is neither a number nor a date.
    if any(not _is_number(c) and not _is_date(c) for c in rows[0]):
        header = [c.strip() for c in rows[0]]
        rows = rows[1:]
    if not rows:
        raise GenadError(f"{path} has a header but no rows: a series needs at least one value")
    cols = list(zip(*rows))
    names = header or [f"col{i}" for i in range(n_cols)]

    # The time column: asked for, else named like one, else a first column of dates.
    t_idx: int | None = None
    if time_col is not None:
        t_idx = _col_index(time_col, header, n_cols, path)
    else:
        for i, nm in enumerate(names):
            if nm.lower() in _TIME_NAMES:
                t_idx = i
                break
        if t_idx is None and not all(_is_number(c) for c in cols[0]) and _is_date(cols[0][0]):
            t_idx = 0
    timestamps = None
    if t_idx is not None:
        timestamps = parse_times(list(cols[t_idx]))
        if timestamps is None and time_col is None:
            pass  # a guessed time column in another date format: go on by position
        elif timestamps is None:
            raise GenadError(
                f"{path}: cannot read column {names[t_idx]!r} as times: use ISO dates like "
                "2024-01-31 12:00:00 or numbers"
            )

    label_idx = next((i for i, nm in enumerate(names) if header and nm.lower() in _LABEL_NAMES), None)
    if value_cols:
        v_idx = [_col_index(c, header, n_cols, path) for c in value_cols]
    else:
        v_idx = [i for i in range(n_cols) if i not in (t_idx, label_idx) and all(_is_number(c) for c in cols[i])]
    if not v_idx:
        raise GenadError(f"{path}: no numeric value column found (pass value_cols= / --value-col)")
    try:
        values = np.array([[_to_float(c) for c in cols[i]] for i in v_idx], dtype=np.float64).T
    except ValueError as e:
        raise GenadError(f"{path}: a value column holds text ({e}); choose numeric columns") from e

    truth = None
    if label_idx is not None and label_idx not in v_idx:
        lab = np.array([_to_float(c) for c in cols[label_idx]])
        truth = _truth(runs_to_ranges(np.nan_to_num(lab) > 0))
    return TimeSeriesSample(
        id=path.name,
        path=path,
        values=values[:, 0] if values.shape[1] == 1 else values,
        timestamps=timestamps,
        columns=[names[i] for i in v_idx],
        truth=truth,
    )


def _is_date(cell: str) -> bool:
    try:
        np.datetime64(cell.strip().replace("T", " "))
        return not _is_number(cell)
    except ValueError:
        return False


def load_series_file(
    path: str | Path, time_col: str | int | None = None, value_cols: list[str | int] | None = None
) -> TimeSeriesSample:
    """Read one series file (.csv, .tsv, .npy, .txt). See the module docstring for the rules.
    Raises GenadError for a missing, empty or unreadable file."""
    path = Path(path)
    if not path.exists():
        raise GenadError(f"no such file: {path}")
    if path.is_dir():
        raise GenadError(f"{path} is a folder: pass a series file (.csv, .tsv, .npy, .txt)")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise GenadError(f"cannot read {path} as a NumPy array: {e}") from e
        if arr.ndim not in (1, 2) or not np.issubdtype(arr.dtype, np.number):
            raise GenadError(f"{path}: expected a numeric array of shape (T,) or (T, D), got {arr.dtype} {arr.shape}")
        sample = TimeSeriesSample(id=path.name, path=path, values=arr.astype(np.float64))
    elif suffix in (".csv", ".tsv") or (suffix == ".txt" and _looks_delimited(path)):
        delim = "\t" if suffix == ".tsv" else ","
        sample = _read_table(path, delim, time_col, value_cols)
    elif suffix == ".txt":
        sample = _read_plain(path)
    else:
        raise GenadError(f"{path}: not a series file (use .csv, .tsv, .npy or .txt)")
    if sample.values.shape[0] == 0:
        raise GenadError(f"{path} is empty: a series needs at least one value")
    if sample.values.ndim == 2 and sample.values.shape[1] == 1:
        sample.values = sample.values[:, 0]

    ucr = parse_ucr_name(path.name)
    if ucr is not None:
        n = sample.values.shape[0]
        start, end = ucr["range"]
        if end > n or ucr["train_end"] >= n:
            raise GenadError(f"{path}: the anomaly range or train end in the name lies past the series' {n} points")
        sample.train_end = ucr["train_end"]
        sample.truth = _truth([(start, end)])
        sample.class_name = ucr["name"]
    return sample


def _looks_delimited(path: Path) -> bool:
    with open(path, encoding="utf-8-sig") as f:
        for line in f:
            if line.strip():
                return "," in line
    return False


def _read_plain(path: Path) -> TimeSeriesSample:
    """One value per line, or whitespace-separated columns (multivariate)."""
    try:
        arr = np.loadtxt(path, dtype=np.float64, ndmin=1)
    except ValueError as e:
        raise GenadError(f"cannot read {path} as numbers, one value (or row) per line: {e}") from e
    return TimeSeriesSample(id=path.name, path=path, values=arr)


def load_ucr(root: str | Path) -> list[TimeSeriesSample]:
    """Every `*_UCR_Anomaly_*.txt` under root, sorted by archive id."""
    root = Path(root)
    if not root.is_dir():
        raise GenadError(f"no such folder: {root}")
    files = [p for p in root.rglob("*.txt") if parse_ucr_name(p.name) is not None]
    if not files:
        raise GenadError(f"{root}: no UCR files (named ID_UCR_Anomaly_NAME_trainEnd_anomStart_anomEnd.txt)")
    files.sort(key=lambda p: parse_ucr_name(p.name)["id"])  # type: ignore[index]
    out = []
    for p in files:
        s = load_series_file(p)
        s.id = p.stem
        out.append(s)
    return out


def load_nab(root: str | Path, limit: int | None = None) -> list[TimeSeriesSample]:
    """NAB: root/data/<group>/<name>.csv and root/labels/combined_windows.json.

    Each window [t0, t1] (both included) becomes the index range of the points whose
    timestamps fall inside it. Series without windows are kept, with label 0."""
    root = Path(root)
    windows_file = root / "labels" / "combined_windows.json"
    data_dir = root / "data"
    if not windows_file.exists() or not data_dir.is_dir():
        raise GenadError(f"{root} is not a NAB folder (needs data/<group>/*.csv and labels/combined_windows.json)")
    windows: dict[str, list[list[str]]] = json.loads(windows_file.read_text())
    names = sorted(windows)
    if limit is not None:
        names = names[:limit]
    out = []
    for key in names:
        path = data_dir / key
        if not path.exists():
            raise GenadError(f"NAB label file names {key}, which is missing under {data_dir}")
        s = load_series_file(path, time_col="timestamp", value_cols=["value"])
        s.id = key
        s.class_name = key.split("/")[0]
        s.truth = _truth(windows_to_ranges(s.timestamps, windows[key]))
        out.append(s)
    return out


def windows_to_ranges(timestamps: np.ndarray | None, windows: list[list[str]]) -> list[tuple[int, int]]:
    """[[t0, t1], ...] timestamp windows (both ends included) -> [start, end) index ranges."""
    if not windows:
        return []
    if timestamps is None:
        raise GenadError("the series has no timestamps, so timestamp windows cannot be placed on it")
    ts = np.asarray(timestamps)
    ranges = []
    for t0, t1 in windows:
        a = np.datetime64(t0.replace("T", " "), "ms")
        b = np.datetime64(t1.replace("T", " "), "ms")
        start = int(np.searchsorted(ts, a, side="left"))
        end = int(np.searchsorted(ts, b, side="right"))
        if end > start:
            ranges.append((start, end))
    return ranges


LABELLED_SUFFIXES = {".csv", ".tsv"}


def load_labelled_series(path: str | Path) -> list[TimeSeriesSample]:
    """A series file with a 0/1 label column (is_anomaly, anomaly, label), or a folder of such
    .csv / .tsv files (every file must carry labels); ids are paths below the folder."""
    path = Path(path)
    if path.is_file():
        files, root = [path], path.parent
    else:
        root = path
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in LABELLED_SUFFIXES)
        files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    if not files:
        raise GenadError(f"{path}: no .csv or .tsv series files")
    out = []
    for p in files:
        s = load_series_file(p)
        if s.truth is None:
            raise GenadError(
                f"{p} has no label column: evaluating needs a 0/1 column named "
                f"{', '.join(sorted(_LABEL_NAMES))} (1 = anomalous point)"
            )
        s.id = p.name if path.is_file() else p.relative_to(root).as_posix()
        out.append(s)
    return out
