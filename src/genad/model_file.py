"""Saved models: a fitted detector in one file, loaded without running any code from it.

    det = genad.create("embedded").fit(golden)
    det.save("station.genad")                  # or: genad fit golden/ --save station.genad
    det = genad.load("station.genad")          # or: genad detect parts/ --model station.genad
    read_manifest("station.genad")             # what is inside (genad info FILE)

The file is a zip archive (the layout of NumPy's .npz) holding:

* `genad-model.json`, the manifest: format and version, the genad version, the detector's
  name and options (never a secret: an API key is not an option that is written), the weights
  it depends on (backbone name and the SHA-256 of its weights file), the preprocessing, the
  decision threshold, how many references it was fitted on and when, and its fitted state as
  JSON whose arrays point into
* `arrays/<name>.npy`, NumPy arrays read with allow_pickle=False, each with its SHA-256 in the
  manifest.

No pickle anywhere: a file from a stranger is data. What the state may hold is closed: numbers,
text, lists, mappings, arrays, tensors, a few genad value types named in `_VALUE_TYPES`, images
(as arrays) and other detectors (by registered name, with their own options and state).
Loading refuses, with one line, a file that is not a genad model, another format version, a
truncated or corrupt file (zip CRCs and the arrays' SHA-256) and weights other than those the
model was fitted with.

A detector's fitted state is every attribute whose name ends in "_" (scikit-learn's
convention; `fitted_parts` names others, e.g. look twice's `engine`), written by the one codec
below; detectors need no code of their own to be saved.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genad.atomic import atomic_write
from genad.errors import GenadError

if TYPE_CHECKING:
    from genad.detector import Detector

FORMAT = "genad-model"
FORMAT_VERSION = 1
MANIFEST = "genad-model.json"
#: the suffix `genad fit --save` suggests (any name works)
SUFFIX = ".genad"
#: the largest manifest read (a hostile file cannot make the loader read gigabytes of JSON)
MAX_MANIFEST_BYTES = 64 * 1024 * 1024


class ModelFileError(GenadError):
    """A model file that cannot be used: not one, another version, corrupt, other weights."""


# --------------------------------------------------------------------------- value types


def _value_types() -> dict[str, type]:
    """The genad dataclasses a model's state may hold, by the name written in the file (the
    loader builds only these: a file cannot name a class to import)."""
    from genad.decision import Calibration
    from genad.engines.embedded.few_shot import MemoryBank
    from genad.modalities.video.rules import Rules
    from genad.types import Knowledge, Usage

    return {
        "Calibration": Calibration,
        "MemoryBank": MemoryBank,
        "Rules": Rules,
        "Knowledge": Knowledge,
        "Usage": Usage,
    }


class _Writer:
    """Turns a state into JSON, putting arrays aside under unique names."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def array(self, a: np.ndarray, hint: str) -> str:
        name = f"{len(self.arrays):04d}_{''.join(c if c.isalnum() else '_' for c in hint)[:40]}"
        self.arrays[name] = np.ascontiguousarray(a)
        return name

    def encode(self, v: Any, hint: str = "v") -> Any:
        import torch

        from genad.detector import Detector
        from genad.types import ImageSample

        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if isinstance(v, float) and not np.isfinite(v):
                return {"$float": repr(v)}
            return v
        if isinstance(v, np.generic):
            return self.encode(v.item(), hint)
        if isinstance(v, np.ndarray):
            if v.dtype == object:
                raise GenadError(f"cannot save {hint}: an array of Python objects")
            return {"$array": self.array(v, hint)}
        if isinstance(v, torch.Tensor):
            return {"$tensor": self.array(v.detach().cpu().numpy(), hint)}
        if isinstance(v, Detector):
            return {"$detector": detector_record(v, self, hint)}
        if isinstance(v, ImageSample):
            return {
                "$image": {
                    "id": v.id,
                    "class_name": v.class_name,
                    "pixels": self.encode(v.load(), f"{hint}_pixels"),
                    "knowledge": self.encode(v.knowledge, f"{hint}_knowledge"),
                }
            }
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            name = type(v).__name__
            if _value_types().get(name) is not type(v):
                raise GenadError(f"cannot save {hint}: a {name} is not a value a model file holds")
            fields = {f.name: self.encode(getattr(v, f.name), f"{hint}_{f.name}") for f in dataclasses.fields(v)}
            return {"$value": name, "fields": fields}
        if isinstance(v, dict):
            if all(isinstance(k, str) for k in v):
                if any(k.startswith("$") for k in v):
                    return {"$map": [[k, self.encode(x, f"{hint}_{k}")] for k, x in v.items()]}
                return {k: self.encode(x, f"{hint}_{k}") for k, x in v.items()}
            return {"$map": [[self.encode(k, hint), self.encode(x, f"{hint}_{k}")] for k, x in v.items()]}
        if isinstance(v, tuple):
            return {"$tuple": [self.encode(x, f"{hint}_{i}") for i, x in enumerate(v)]}
        if isinstance(v, list):
            return [self.encode(x, f"{hint}_{i}") for i, x in enumerate(v)]
        if isinstance(v, Path):
            return str(v)
        raise GenadError(f"cannot save {hint}: a {type(v).__name__} is not a value a model file holds")


class _Reader:
    """Builds a state back from its JSON and the file's arrays."""

    def __init__(self, arrays: Callable[[str], np.ndarray]) -> None:
        self.arrays = arrays

    def decode(self, v: Any) -> Any:
        import torch

        from genad.types import ImageSample

        if isinstance(v, list):
            return [self.decode(x) for x in v]
        if not isinstance(v, dict):
            return v
        if "$array" in v:
            return self.arrays(str(v["$array"]))
        if "$tensor" in v:
            return torch.from_numpy(np.array(self.arrays(str(v["$tensor"]))))
        if "$float" in v:
            return float(str(v["$float"]))
        if "$tuple" in v:
            return tuple(self.decode(x) for x in _list(v["$tuple"]))
        if "$map" in v:
            return {_key(self.decode(k)): self.decode(x) for k, x in _list(v["$map"])}
        if "$detector" in v:
            return detector_from_record(_dict(v["$detector"]), self)
        if "$image" in v:
            d = _dict(v["$image"])
            pixels = self.decode(d.get("pixels"))
            if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
                raise ModelFileError("a reference image in the model file is not a uint8 image")
            return ImageSample(
                id=str(d.get("id")),
                array=pixels,
                class_name=d.get("class_name") if isinstance(d.get("class_name"), str) else None,
                knowledge=self.decode(d.get("knowledge")),
            )
        if "$value" in v:
            cls = _value_types().get(str(v["$value"]))
            if cls is None:
                raise ModelFileError(f"the model file names an unknown value type {str(v['$value'])[:40]!r}")
            fields = {k: self.decode(x) for k, x in _dict(v.get("fields")).items()}
            known = {f.name for f in dataclasses.fields(cls)}
            try:
                return cls(**{k: x for k, x in fields.items() if k in known})
            except (TypeError, ValueError, GenadError) as e:
                raise ModelFileError(f"the model file holds a bad {cls.__name__}: {e}") from e
        return {k: self.decode(x) for k, x in v.items()}


def _list(v: Any) -> list[Any]:
    if not isinstance(v, list):
        raise ModelFileError("the model file's state is malformed (a list was expected)")
    return v


def _dict(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ModelFileError("the model file's state is malformed (a mapping was expected)")
    return v


def _key(k: Any) -> Any:
    if isinstance(k, list):  # a tuple key comes back as a list: keys must be hashable
        return tuple(k)
    return k


# --------------------------------------------------------------------------- detectors


def saved_params(det: Detector) -> dict[str, Any]:
    """The options a model file records: every declared public option (never a secret, a
    client or a ready config)."""
    params = det.get_params()
    declared = type(det).declared
    if not declared:
        from genad.secrets import is_secret

        return {k: v for k, v in params.items() if not is_secret(k) and k not in ("client", "config")}
    return {k: v for k, v in params.items() if k in declared and declared[k].public}


def fitted_state(det: Detector) -> dict[str, Any]:
    """The detector's fitted attributes: those ending in "_" and those named in fitted_parts."""
    names = [k for k in vars(det) if k.endswith("_") and not k.startswith("_")]
    names += [k for k in getattr(det, "fitted_parts", ()) if k not in names]
    return {k: getattr(det, k) for k in names}


def detector_record(det: Detector, w: _Writer, hint: str = "model") -> dict[str, Any]:
    return {
        "name": det.name,
        "params": w.encode(saved_params(det), f"{hint}_params"),
        "state": w.encode(fitted_state(det), f"{hint}_state"),
        "weights": det.weights(),
    }


def detector_from_record(rec: dict[str, Any], r: _Reader) -> Detector:
    from genad import registry

    name = rec.get("name")
    if not isinstance(name, str):
        raise ModelFileError("the model file names no detector")
    check_weights(name, rec.get("weights"))
    params = r.decode(rec.get("params") or {})
    try:
        det = registry.create(name, **_dict(params))
    except GenadError as e:
        raise ModelFileError(f"the model's detector {name!r} cannot be made here: {e}") from e
    for k, v in _dict(r.decode(rec.get("state") or {})).items():
        setattr(det, k, v)
    det.params = det._public()
    return det


def check_weights(name: str, saved: Any) -> None:
    """Refuse a model whose backbone weights differ from the ones installed here."""
    from genad import registry

    if not isinstance(saved, dict) or not saved:
        return
    try:
        det_cls = registry.get(name)
    except GenadError as e:
        raise ModelFileError(f"the model's detector {name!r} is not available here: {e}") from e
    for backbone, digest in saved.items():
        here = det_cls.weights_digest(str(backbone))
        if here is None:
            raise ModelFileError(
                f"the model was fitted with backbone {backbone!r}, which is not available here: install it or refit"
            )
        if here != digest:
            raise ModelFileError(
                f"the model was fitted with other weights of backbone {backbone!r} (sha256 {str(digest)[:12]}..., "
                f"installed {here[:12]}...): its memory of normal patches does not match them; refit (genad fit)"
            )


# --------------------------------------------------------------------------- the file


def save_detector(det: Detector, path: str | Path, *, info: dict[str, Any] | None = None) -> Path:
    """Write `det` (fitted or not) to `path` as one model file; returns the path. `info`:
    more manifest fields (e.g. how its threshold was calibrated)."""
    write = _archive(det, info)
    path = Path(path)
    try:
        atomic_write(path, write)  # a reader never sees half a file
    except OSError as e:
        raise GenadError(f"cannot write the model file {path}: {e}") from e
    return path


def model_bytes(det: Detector, *, info: dict[str, Any] | None = None) -> bytes:
    """The model file of `det` as bytes (what save_detector writes), e.g. to send it to other
    processes or machines; `load_bytes` reads it back."""
    buf = io.BytesIO()
    _archive(det, info)(buf)
    return buf.getvalue()


def _archive(det: Detector, info: dict[str, Any] | None) -> Callable[[Any], None]:
    """The model file of `det`, as a function that writes it to a binary file object."""
    import genad

    w = _Writer()
    record = detector_record(det, w)
    fit = getattr(det, "fit_info_", None) or {}
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "genad_version": genad.__version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "detector": det.name,
        "fitted": bool(getattr(det, "fitted_", False)),
        "params": record["params"],
        "backbone": [{"name": k, "sha256": v} for k, v in all_weights(det).items()],
        "preprocessing": w.encode(det.preprocessing(), "preprocessing"),
        "threshold": _threshold_info(det, w),
        "references": {"count": fit.get("count", 0), "fitted_at": fit.get("at"), "ids": fit.get("ids", [])},
        "model": record,
        "arrays": {},
        **(info or {}),
    }
    blobs: dict[str, bytes] = {}
    for name, a in w.arrays.items():
        buf = io.BytesIO()
        np.lib.format.write_array(buf, a, allow_pickle=False)
        blobs[name] = buf.getvalue()
        manifest["arrays"][name] = {
            "shape": list(a.shape),
            "dtype": str(a.dtype),
            "sha256": hashlib.sha256(blobs[name]).hexdigest(),
        }

    def write(f: Any) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as z:
            z.writestr(MANIFEST, json.dumps(manifest, indent=1, allow_nan=False))
            for name, data in blobs.items():
                z.writestr(f"arrays/{name}.npy", data)

    return write


def all_weights(det: Detector) -> dict[str, str]:
    """The weights `det` and the detectors inside it depend on: {backbone: sha256}."""
    from genad.detector import Detector

    out = dict(det.weights())
    for v in [*fitted_state(det).values(), *(getattr(det, k, None) for k in type(det).declared)]:
        for inner in v if isinstance(v, (list, tuple)) else [v]:
            if isinstance(inner, Detector) and inner is not det:
                out.update(all_weights(inner))
    return out


def _threshold_info(det: Detector, w: _Writer) -> dict[str, Any]:
    cal = getattr(det, "calibration_", None)
    return {
        "normalised": getattr(det, "threshold", None),
        "raw": getattr(det, "raw_threshold", None),
        "calibration": None if cal is None else w.encode(cal, "calibration"),
    }


def _open(path: Path) -> zipfile.ZipFile:
    if not path.exists():
        raise ModelFileError(f"no such model file: {path}")
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a model file (write one with `genad fit ... --save FILE`)")
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ModelFileError(
            f"{path} is not a genad model file, or it is truncated or corrupt ({e}): write one with `genad fit --save`"
        ) from e
    except OSError as e:
        raise ModelFileError(f"cannot read model file {path}: {e}") from e


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a model file, checked (format, version); ModelFileError otherwise."""
    path = Path(path)
    with _open(path) as z:
        return _manifest(z, path)


def _manifest(z: zipfile.ZipFile, path: Path) -> dict[str, Any]:
    try:
        info = z.getinfo(MANIFEST)
    except KeyError:
        raise ModelFileError(f"{path} is not a genad model file (it has no {MANIFEST})") from None
    if info.file_size > MAX_MANIFEST_BYTES:
        raise ModelFileError(f"{path}: its manifest is larger than {MAX_MANIFEST_BYTES // 2**20} MiB")
    try:
        data = json.loads(z.read(MANIFEST).decode("utf-8"))
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, EOFError) as e:
        raise ModelFileError(f"{path} is truncated or corrupt: its manifest cannot be read ({e})") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a genad model file (write one with `genad fit ... --save FILE`)")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{path} is model format {version!r} (written by genad {data.get('genad_version')!r}); this genad "
            f"({_version()}) reads format {FORMAT_VERSION}: refit it with this genad, or use the genad that wrote it"
        )
    if not isinstance(data.get("model"), dict) or not isinstance(data.get("arrays"), dict):
        raise ModelFileError(f"{path} is truncated or corrupt: its manifest lacks the model")
    return data


def _version() -> str:
    import genad

    return genad.__version__


def load_detector(path: str | Path) -> Detector:
    """The detector saved in `path`, ready to predict. Runs no code from the file."""
    path = Path(path)
    with _open(path) as z:
        return _load(z, path)


def load_bytes(data: bytes, name: str = "the model") -> Detector:
    """The detector of a model file given as bytes (model_bytes), checked as load_detector
    checks a file; `name` says in messages where the bytes came from."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise ModelFileError(f"{name} is not a genad model file, or it is truncated or corrupt ({e})") from e
    with z:
        return _load(z, Path(name))


def _load(z: zipfile.ZipFile, path: Path) -> Detector:
    """The detector of an open model file (`path`: its name in messages)."""
    manifest = _manifest(z, path)
    listed: dict[str, Any] = manifest["arrays"]
    cache: dict[str, np.ndarray] = {}

    def array(name: str) -> np.ndarray:
        if name in cache:
            return cache[name]
        meta = listed.get(name)
        if not isinstance(meta, dict):
            raise ModelFileError(f"{path} is corrupt: the array {name[:40]!r} is not listed")
        try:
            raw = z.read(f"arrays/{name}.npy")
        except KeyError:
            raise ModelFileError(f"{path} is truncated or corrupt: the array {name[:40]!r} is missing") from None
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise ModelFileError(f"{path} is truncated or corrupt ({e})") from e
        if hashlib.sha256(raw).hexdigest() != meta.get("sha256"):
            raise ModelFileError(f"{path} is corrupt: the array {name[:40]!r} does not match its checksum")
        try:
            a = np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ModelFileError(f"{path} is corrupt: the array {name[:40]!r} cannot be read ({e})") from e
        cache[name] = a
        return a

    try:
        return detector_from_record(manifest["model"], _Reader(array))
    except RecursionError as e:
        raise ModelFileError(f"{path} is corrupt: its state is nested too deep") from e


def describe(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """What a model file holds, as (label, text) lines for people (genad info)."""
    refs = manifest.get("references") or {}
    thr = manifest.get("threshold") or {}
    cal = thr.get("calibration") or {}
    cal_fields = cal.get("fields", {}) if isinstance(cal, dict) else {}
    arrays = manifest.get("arrays") or {}
    size = sum(int(np.prod(a.get("shape") or [0])) for a in arrays.values() if isinstance(a, dict))
    params = manifest.get("params") or {}
    lines = [
        (
            "format",
            f"{manifest.get('format')} {manifest.get('format_version')} (genad {manifest.get('genad_version')})",
        ),
        ("created", str(manifest.get("created"))),
        ("detector", str(manifest.get("detector")) + ("" if manifest.get("fitted") else " (not fitted: zero-shot)")),
        ("options", ", ".join(f"{k}={json.dumps(v)}" for k, v in params.items()) if isinstance(params, dict) else ""),
        (
            "backbone",
            "; ".join(f"{b.get('name')} sha256 {str(b.get('sha256'))[:16]}..." for b in manifest.get("backbone") or [])
            or "none",
        ),
        ("preprocessing", json.dumps(manifest.get("preprocessing") or {})),
        (
            "threshold",
            f"normalised {thr.get('normalised')}"
            + (f", raw {thr.get('raw')}" if thr.get("raw") is not None else "")
            + (
                f"; calibrated boundary {cal_fields.get('threshold')} ({cal_fields.get('method') or 'auto'})"
                if cal_fields
                else ""
            ),
        ),
        ("references", f"{refs.get('count', 0)} fitted at {refs.get('fitted_at')}"),
        ("arrays", f"{len(arrays)} ({size:,} values)"),
    ]
    if manifest.get("calibrated"):
        lines.append(("calibrated", json.dumps(manifest["calibrated"])))
    return lines
