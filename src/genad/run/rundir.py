"""The run folder: what a run of a detector leaves on disk, written as results come.

    run_dir/
      config.json      what was run (detector, public parameters, data, references...)
      results.jsonl    one JSON line per scored sample, appended as soon as it is scored
      maps/<n>.npz     the anomaly map of sample n, when it has one (compressed; an image's
                       map as float16, a per-point or per-frame (1-D) map at full precision)
      summary.json     the figures (evaluation runs)
      curves.json      ROC / PR / PRO curves behind those figures (evaluation runs)

A results line is the sample's id, its position `n` in the run, its label and defect type
when known, the Result's JSON form (`Result.to_dict`, without `sample_id`), `map` (the map's
path relative to the folder, or null) and any fields the writer adds (e.g. `overlay`). A
later line for the same id wins, so a sample retried on resume simply appears again; a torn
last line (a crash mid-write) is ignored, and the next writer starts on a fresh line. Ctrl-C
and SIGTERM on the command line wait for the line being written (genad.run.signals). Everything that reads results (resume, reports, the
service) reads them through this class.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from genad.atomic import atomic_write, atomic_write_text
from genad.errors import GenadError
from genad.run.signals import deferred_interrupts
from genad.types import Result, Sample, jsonable

RESULTS_FILE = "results.jsonl"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
CURVES_FILE = "curves.json"
MAPS_DIR = "maps"


def write_map(path: Path, amap: np.ndarray) -> None:
    """An anomaly map as npz, atomically (a crash never leaves half a map): an image's (2-D)
    map as float16; a 1-D map (per point of a series or cloud, per frame of a video) as
    float32, or float64 when it is that, so that the figures computed from the stored scores
    (genad.evaluate_modalities) are those of the detector's own."""
    raw = np.asarray(amap)
    if raw.ndim == 1:
        one_d = np.nan_to_num(raw.astype(np.float64 if raw.dtype == np.float64 else np.float32))
        atomic_write(path, lambda f: np.savez_compressed(f, map=one_d))
        return
    a = np.asarray(amap, dtype=np.float32)
    info = np.finfo(np.float16)
    # float16 halves the disk cost; clip so that a huge score does not become inf.
    lo, hi = float(info.min), float(info.max)
    a = np.clip(np.nan_to_num(a, nan=0.0, posinf=hi, neginf=lo), lo, hi)
    atomic_write(path, lambda f: np.savez_compressed(f, map=a.astype(np.float16)))


def read_map(path: Path) -> np.ndarray:
    """A stored map: float32, or float64 where it was stored so (see write_map)."""
    with np.load(path) as z:
        m = z["map"]
        return m if m.dtype == np.float64 else m.astype(np.float32)


def pending(samples: Sequence[Sample], done: dict[str, dict[str, Any]]) -> list[Sample]:
    """The samples a resumed run still has to score: those without a record, or whose record
    failed (no score)."""
    return [s for s in samples if s.id not in done or done[s.id].get("error") or done[s.id].get("score") is None]


class RunFolder:
    """One run's folder (see the module doc)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._fh: IO[str] | None = None

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS_FILE

    # -- starting -----------------------------------------------------------------------------
    def start(
        self,
        config: dict[str, Any],
        *,
        resume: bool = False,
        must_match: Sequence[str] = (),
        overwrite: bool = False,
        option: str = "--run-dir",
    ) -> dict[str, dict[str, Any]]:
        """Create the folder and write config.json; returns the records already done (by id)
        when resuming, else {}. A folder that holds results is refused unless `resume` (its
        config must then agree on the keys `must_match`) or `overwrite` (start afresh).
        `option`: how the messages name the folder (the command's flag)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / MAPS_DIR).mkdir(exist_ok=True)
        except OSError as e:
            raise GenadError(f"cannot create the run folder {self.path}: {e}") from e
        self.check_start(config, resume=resume, must_match=must_match, overwrite=overwrite, option=option)
        cfg_path = self.path / CONFIG_FILE
        if overwrite and not resume:
            self.results_path.unlink(missing_ok=True)
            for p in (self.path / MAPS_DIR).glob("*.npz"):
                p.unlink()
            for name in (SUMMARY_FILE, CURVES_FILE):
                (self.path / name).unlink(missing_ok=True)
        cfg_path.write_text(json.dumps(jsonable(config), indent=2), encoding="utf-8")
        return self.records() if resume else {}

    def check_start(
        self,
        config: dict[str, Any],
        *,
        resume: bool = False,
        must_match: Sequence[str] = (),
        overwrite: bool = False,
        option: str = "--run-dir",
    ) -> None:
        """Raise GenadError, creating nothing, for what `start` refuses: results there without
        `resume` or `overwrite`; a resume with a config that differs on `must_match`."""
        if self.has_results() and not resume and not overwrite:
            raise GenadError(
                f"{self.path} already holds results: pass --resume to continue that run, or choose a new {option}"
            )
        cfg_path = self.path / CONFIG_FILE
        if resume and cfg_path.exists():
            old = json.loads(cfg_path.read_text(encoding="utf-8"))
            diff = [k for k in must_match if old.get(k) != config.get(k)]
            if diff:
                raise GenadError(
                    f"cannot resume {self.path}: it was run with different {', '.join(diff)} "
                    f"(was {', '.join(f'{k}={old.get(k)!r}' for k in diff)}); use the same options or a new {option}"
                )

    def has_results(self) -> bool:
        """True when results.jsonl holds anything (a run was started here)."""
        try:
            return self.results_path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def config(self) -> dict[str, Any]:
        path = self.path / CONFIG_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    # -- writing ------------------------------------------------------------------------------
    def __enter__(self) -> RunFolder:
        torn = False
        try:
            with self.results_path.open("rb") as f:
                if f.seek(0, 2) > 0:
                    f.seek(-1, 2)
                    torn = f.read(1) != b"\n"
        except FileNotFoundError:
            pass
        self._fh = self.results_path.open("a", encoding="utf-8")
        if torn:  # a crash mid-write: end that line, so that the next record is not glued to it
            self._fh.write("\n")
            self._fh.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def append(self, sample: Sample, result: Result, n: int, **fields: Any) -> dict[str, Any]:
        """Write one result (its map to maps/<n>.npz) and return its record. Inside `with`."""
        if self._fh is None:
            raise RuntimeError("RunFolder.append needs `with folder:` around it")
        with deferred_interrupts():  # Ctrl-C waits until the map and the line are written
            rec = self.record(sample, result, n, **fields)
            self._fh.write(json.dumps(rec) + "\n")
            self._fh.flush()
        return rec

    def record(self, sample: Sample, result: Result, n: int, **fields: Any) -> dict[str, Any]:
        d = result.to_dict()
        d.pop("sample_id", None)
        if d["score"] is not None and not math.isfinite(float(d["score"])):
            d["score"], d["error"] = None, d["error"] or f"non-finite score {result.score}"
        map_rel = None
        if result.anomaly_map is not None and d["error"] is None:
            map_rel = f"{MAPS_DIR}/{n}.npz"
            write_map(self.path / map_rel, result.anomaly_map)
        truth = sample.truth
        return {
            "id": sample.id,
            "n": int(n),
            "label": sample.label,
            "defect_type": truth.defect_type if truth else None,
            **d,
            "map": map_rel,
            **jsonable(fields),
        }

    def write_summary(self, summary: dict[str, Any]) -> None:
        # whole or not at all: a summary.json that is there is a finished run's (resume skips it)
        atomic_write_text(self.path / SUMMARY_FILE, json.dumps(jsonable(summary), indent=2), fsync=False)

    def write_curves(self, curves: dict[str, Any]) -> None:
        atomic_write_text(self.path / CURVES_FILE, json.dumps(jsonable(curves)), fsync=False)

    # -- reading ------------------------------------------------------------------------------
    def iter_records(self) -> Iterator[dict[str, Any]]:
        """Every results line in file order (torn or blank lines skipped)."""
        if not self.results_path.exists():
            return
        with self.results_path.open(encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and "id" in rec:
                    yield rec

    def records(self) -> dict[str, dict[str, Any]]:
        """The latest record of each sample, by id."""
        return {rec["id"]: rec for rec in self.iter_records()}

    def ordered(self) -> list[dict[str, Any]]:
        """The latest record of each sample, in run order (`n`)."""
        return sorted(self.records().values(), key=lambda r: (r.get("n") is None, r.get("n") or 0))

    def map_path(self, rec: dict[str, Any]) -> Path | None:
        rel = rec.get("map")
        if not rel:
            return None
        path = (self.path / rel).resolve()
        root = self.path.resolve()
        return path if path.is_relative_to(root) and path.is_file() else None

    def load_map(self, rec: dict[str, Any]) -> np.ndarray | None:
        """The record's anomaly map as float32, or None when it has none (or it is unreadable)."""
        path = self.map_path(rec)
        if path is None:
            return None
        try:
            return read_map(path)
        except (OSError, ValueError, KeyError):
            return None

    @staticmethod
    def result(rec: dict[str, Any]) -> Result:
        """The Result a record holds (without its map: `load_map`)."""
        return Result.from_dict({**rec, "sample_id": rec["id"]})

    def summary(self) -> dict[str, Any] | None:
        path = self.path / SUMMARY_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    def curves(self) -> dict[str, Any] | None:
        path = self.path / CURVES_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
