"""Stored models: a detector fitted once on normal images (uploads, or a folder under a data
root) and kept as one model file, STORAGE/models/<id>.genad (genad.model_file: a zip of a JSON
manifest and .npy arrays, no pickle), with a row in the store. /v1/detect and batch jobs then
score with it and never refit.

Loaded models are kept in memory, a few at a time (least recently used goes first); a
detection holds the model's lock while it predicts, because detectors promise nothing about
concurrent predict() calls. A job loads its own copy from the file instead, so a long job does
not hold up the page's detections.

Whatever a request sends is checked here: the name (length, characters, unique), the detector
(a registered image detector), its options (as /v1/detect: never the server's configuration),
the references (the service's upload limits, or a folder inside the data roots) and the id.
A model file that cannot be loaded (corrupt, missing, fitted with other backbone weights) is
ModelUnusable (HTTP 409) with one line that names the model, never the server's path.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genad import registry
from genad.detector import Detector
from genad.errors import GenadError
from genad.evaluate import public_params
from genad.service.inspector import Options, Upload, label
from genad.service.jobs import AccessDenied, DataRoots, NotFound
from genad.service.store import NameTaken, Store, StoredModel, is_id, new_id
from genad.service.uploads import PayloadTooLarge, decode_image
from genad.types import ImageSample, jsonable

log = logging.getLogger("genad.service")

MAX_NAME = 64
#: a name: letters and digits of any script, then also space . _ - + ( ) ; no leading or trailing space
_NAME = re.compile(r"[^\W_][\w .+()\-]*", re.UNICODE)
#: the manifest fields an answer carries (not the fitted state, not every reference id)
_MANIFEST_KEYS = (
    "format",
    "format_version",
    "genad_version",
    "created",
    "detector",
    "fitted",
    "params",
    "backbone",
    "preprocessing",
    "threshold",
)
#: largest image file read from a data-root folder (the pixel limit applies as well)
FOLDER_FILE_BYTES = 512 * 1024 * 1024


#: the longest folder a request may name
MAX_FOLDER_CHARS = 1024


class FolderUnavailable(NotFound):
    """A folder a request names that is not under the data roots, or does not exist there:
    one answer for both (HTTP 404), so that nothing about the server's files can be learnt."""


def resolve_folder(roots: DataRoots, value: object, what: str) -> Path:
    """A request's folder (`data_dir`, `normal_dir`, a model's `folder`) inside the data
    roots. Outside them, missing, through `..` or a symlink out, a NUL byte, a name the file
    system refuses: all the same FolderUnavailable (404). Too long: 400. No data roots: 403."""
    if not roots.roots:
        roots.resolve("x", what)  # AccessDenied: restart with --data-root
    if not isinstance(value, str) or not value.strip():
        raise GenadError(f"{what} is empty: name a folder relative to one of the service's data roots")
    if len(value) > MAX_FOLDER_CHARS:
        raise GenadError(f"{what} is {len(value)} characters long: at most {MAX_FOLDER_CHARS}")
    names = ", ".join(r.name or str(r) for r in roots.roots)
    unavailable = FolderUnavailable(
        f"{what} {value[:120]!r} is not found under the service's data roots ({names}): name a folder "
        "relative to a data root"
    )
    bad_text = any(ord(c) < 32 or c == "\x7f" for c in value)
    if bad_text or ".." in Path(value).parts:  # `..` could tell a link from a folder outside
        raise unavailable
    try:
        return roots.resolve(value, what)
    except (AccessDenied, NotFound, GenadError, OSError, ValueError):
        raise unavailable from None


class ModelNotFound(NotFound):
    """No stored model with that id (HTTP 404)."""


class ModelUnusable(GenadError):
    """A stored model whose file cannot be loaded (HTTP 409): delete it and create it again."""


class ModelsFull(GenadError):
    """The service already keeps as many models as it may (HTTP 409)."""


def check_name(name: str) -> str:
    """A model name (in Unicode NFC form), checked: 1-64 characters, letters and digits (any script) and
    ` . _ - + ( )`, starting with a letter or digit, no trailing space. GenadError otherwise."""
    if not isinstance(name, str) or not name:
        raise GenadError("name is empty: give the model a name such as 'line3-golden'")
    name = unicodedata.normalize("NFC", name[: 4 * MAX_NAME])
    if len(name) > MAX_NAME:
        raise GenadError(f"name is longer than {MAX_NAME} characters: give a shorter one")
    if not _NAME.fullmatch(name) or name != name.strip():
        raise GenadError(
            "name may hold letters, digits, spaces and . _ - + ( ), start with a letter or digit "
            f"and not end with a space; got {name!r}"
        )
    return name


@dataclass
class LoadedModel:
    """A stored model in memory: its row, the detector read from its file, the lock its
    predictions take."""

    record: StoredModel
    detector: Detector
    lock: threading.Lock


class ModelLibrary:
    """Creates, lists, loads (LRU of `cache_size`) and deletes stored models."""

    def __init__(
        self,
        store: Store,
        storage_dir: Path,
        roots: DataRoots,
        *,
        max_pixels: int,
        max_models: int = 100,
        max_folder_images: int = 1000,
        cache_size: int = 3,
        options: Options | None = None,
    ) -> None:
        self.store = store
        self.options = options or Options()
        self.dir = Path(storage_dir) / "models"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.roots = roots
        self.max_pixels = max_pixels
        self.max_models = max_models
        self.max_folder_images = max_folder_images
        self.cache_size = max(1, cache_size)
        self._cache: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        #: how many times a model was fitted and read from its file (for tests and the log)
        self.fits = 0
        self.loads = 0

    # -- records -------------------------------------------------------------------------------
    def path(self, model_id: str) -> Path:
        # only checked server ids reach here: no request text becomes a path
        assert is_id(model_id)
        return self.dir / f"{model_id}.genad"

    def get(self, model_id: str) -> StoredModel:
        found = self.store.get_model(model_id) if isinstance(model_id, str) and is_id(model_id) else None
        if found is None:
            shown = model_id[:40] if isinstance(model_id, str) else model_id
            raise ModelNotFound(f"no model {shown!r}: GET /v1/models lists the stored ones")
        return found

    def in_memory(self) -> list[str]:
        with self._lock:
            return list(self._cache)

    def file_error(self, rec: StoredModel) -> str | None:
        """None if the model file reads back whole (its manifest, and every array against its
        SHA-256), else the one-line reason. Builds no detector: cheap next to loading it."""
        try:
            _verify(self.path(rec.id))
        except GenadError as e:
            return self._unusable(rec, e).args[0]
        return None

    # -- create --------------------------------------------------------------------------------
    def check_request(self, name: str, detector: str, params: dict[str, Any], folder: str | None) -> dict[str, Any]:
        """What POST /v1/models checks before it reads a file: the name (free, and room for
        another model), the detector and every option (returned as the detector takes them),
        the folder."""
        check_name(name)
        if self.store.count_models() >= self.max_models:
            raise ModelsFull(
                f"the service already keeps {self.max_models} models: delete one (DELETE /v1/models/ID) first"
            )
        if self.store.model_named(check_name(name)) is not None:
            raise NameTaken(f"a model named {check_name(name)!r} already exists: pick another name, or delete that one")
        run = self.options.check(detector, params)
        if folder is not None:
            resolve_folder(self.roots, folder, "folder")
        return run

    def create(
        self,
        name: str,
        detector: str,
        params: dict[str, Any],
        uploads: list[Upload],
        folder: str | None,
    ) -> dict[str, Any]:
        """Fit `detector` with `params` on the uploaded references or the images of `folder`
        (under a data root; not both) and keep it. Returns the new model's row and how long
        the steps took."""
        t0 = time.perf_counter()
        name = check_name(name)
        run_params = self.check_request(name, detector, params, None)
        if uploads and folder:
            raise GenadError("give normal references as uploads (normals) or as a folder, not both")
        if not uploads and not folder:
            raise GenadError(
                "a model needs normal references: upload defect-free images as `normals`, or name a "
                "`folder` of them under the service's data root"
            )
        if folder:
            refs, source = self._folder_refs(folder)
        else:
            refs = [
                ImageSample(id=f"normal-{k}", array=decode_image(u.data, label("normal", k, u), self.max_pixels))
                for k, u in enumerate(uploads)
            ]
            source = {"kind": "upload", "files": len(uploads)}
        t_read = time.perf_counter()

        det = registry.create(detector, **run_params)  # a bad combination of options -> GenadError
        try:
            det.fit(refs)
        except GenadError:
            raise
        except Exception as e:  # a detector that trips over these images: a clean answer, and the log
            log.exception("fitting %s failed", detector)
            raise GenadError(f"fitting {detector!r} on these references failed ({type(e).__name__}: {e})") from e
        with self._lock:
            self.fits += 1
        t_fit = time.perf_counter()

        model_id = new_id()
        path = self.path(model_id)
        try:
            det.save(path, service_model={"id": model_id, "name": name})
            manifest = self._read_manifest(path)
            rec = StoredModel(
                id=model_id,
                name=name,
                created=time.time(),
                detector=det.name,
                # as the request named things (onnx:NAME), never a server path
                params=self.options.backbones.public(jsonable(public_params(det.params))),
                n_references=len(refs),
                size_bytes=path.stat().st_size,
                source=source,
                manifest=self.options.backbones.public(manifest),
            )
            self.store.add_model(rec)  # NameTaken if a request with the same name won the race
        except BaseException:
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".part").unlink(missing_ok=True)
            raise
        t_end = time.perf_counter()
        log.info("model %s (%s, %s) fitted on %d references", model_id, name, det.name, len(refs))
        return {
            "record": rec,
            "timings": {
                "read": round(t_read - t0, 4),
                "fit": round(t_fit - t_read, 4),
                "save": round(t_end - t_fit, 4),
                "total": round(t_end - t0, 4),
            },
        }

    def _folder_refs(self, folder: str) -> tuple[list[ImageSample], dict[str, Any]]:
        from genad.io.folder import list_files
        from genad.io.images import IMAGE_SUFFIXES

        where = resolve_folder(self.roots, folder, "folder")  # 404 outside the roots or missing
        if not where.is_dir():
            raise GenadError(f"folder {folder[:200]!r} is a file, not a folder of normal images")
        try:
            inside = [
                p
                for p in list_files(where, IMAGE_SUFFIXES, recursive=True)
                # a symlinked file that points out of the data roots is not read
                if any(p.resolve().is_relative_to(root) for root in self.roots.roots)
            ]
        except (OSError, RuntimeError) as e:
            raise GenadError(f"cannot list folder {folder[:200]!r} ({type(e).__name__})") from e
        if not inside:
            raise GenadError(f"folder {folder[:200]!r} holds no images (PNG, JPEG, BMP, TIFF, WebP)")
        if len(inside) > self.max_folder_images:
            raise PayloadTooLarge(
                f"folder {folder[:200]!r} holds {len(inside)} images: a model is fitted on at most "
                f"{self.max_folder_images}; name a smaller folder"
            )
        refs = []
        for p in inside:
            shown = p.relative_to(where).as_posix()
            try:
                if p.stat().st_size > FOLDER_FILE_BYTES:
                    raise PayloadTooLarge(
                        f"{shown!r} in folder {folder[:200]!r} is over {FOLDER_FILE_BYTES // 2**20} MiB"
                    )
                data = p.read_bytes()
            except OSError as e:
                raise GenadError(f"cannot read {shown!r} in folder {folder[:200]!r} ({type(e).__name__})") from e
            refs.append(ImageSample(id=shown, array=decode_image(data, repr(shown), self.max_pixels)))
        return refs, {"kind": "folder", "folder": folder, "files": len(refs)}

    def _read_manifest(self, path: Path) -> dict[str, Any]:
        from genad.model_file import describe, read_manifest

        m = read_manifest(path)
        out = {k: m.get(k) for k in _MANIFEST_KEYS}
        refs = m.get("references") or {}
        out["references"] = {"count": refs.get("count"), "fitted_at": refs.get("fitted_at")}
        out["summary"] = dict(describe(m))
        return out

    # -- use -----------------------------------------------------------------------------------
    def loaded(self, model_id: str) -> LoadedModel:
        """The model in memory, read from its file on first use (ModelNotFound, ModelUnusable)."""
        rec = self.get(model_id)
        with self._lock:
            hit = self._cache.get(model_id)
            if hit is not None:
                self._cache.move_to_end(model_id)
                return hit
            loading = self._loading.setdefault(model_id, threading.Lock())
        with loading:  # one read per model, even when requests for it arrive together
            with self._lock:
                hit = self._cache.get(model_id)
                if hit is not None:
                    return hit
            try:
                det = self._load(rec)
            except BaseException:
                with self._lock:
                    self._loading.pop(model_id, None)
                raise
            with self._lock:
                self._loading.pop(model_id, None)
                if self.store.get_model(model_id) is None:  # deleted meanwhile: serve this request only
                    return LoadedModel(rec, det, threading.Lock())
                hit = self._cache.setdefault(model_id, LoadedModel(rec, det, threading.Lock()))
                self._cache.move_to_end(model_id)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
                return hit

    def fresh(self, model_id: str) -> Detector:
        """A copy of the model of its own, read from the file (for jobs)."""
        return self._load(self.get(model_id))

    def _load(self, rec: StoredModel) -> Detector:
        from genad.model_file import load_detector

        try:
            det = load_detector(self.path(rec.id))
        except GenadError as e:
            raise self._unusable(rec, e) from e
        except Exception as e:  # whatever a damaged file makes the loader trip over
            log.exception("loading model %s failed", rec.id)
            raise self._unusable(rec, e) from e
        if "image" not in det.modalities:
            raise ModelUnusable(f"model {rec.name!r} holds detector {det.name!r}, which does not read images")
        with self._lock:
            self.loads += 1
        return det

    def _unusable(self, rec: StoredModel, e: BaseException) -> ModelUnusable:
        if not self.path(rec.id).exists():
            return ModelUnusable(
                f"stored model {rec.name!r} ({rec.id}) cannot be loaded: its file "
                f"(STORAGE/models/{rec.id}.genad) is missing. Delete it and create it again"
            )
        text = str(e).replace(str(self.path(rec.id)), "its file").replace(str(self.dir), "STORAGE/models")
        text = re.sub(r":? \(?write one with `genad fit[^`]*`\)?", "", text)  # a hint for the command line
        text = " ".join(text.split())[:400]  # one line
        if not isinstance(e, GenadError):
            text = f"{type(e).__name__}: {text}"
        return ModelUnusable(
            f"stored model {rec.name!r} ({rec.id}) cannot be loaded: {text}. Delete it and create it again"
        )

    # -- delete --------------------------------------------------------------------------------
    def delete(self, model_id: str) -> StoredModel:
        rec = self.get(model_id)
        self.store.delete_model(model_id)
        with self._lock:
            self._cache.pop(model_id, None)
        self.path(model_id).unlink(missing_ok=True)
        return rec


def _verify(path: Path) -> None:
    """ModelFileError unless `path` is a model file whose arrays all match their checksums."""
    import hashlib
    import zipfile

    from genad.model_file import ModelFileError, read_manifest

    arrays = read_manifest(path)["arrays"]
    try:
        with zipfile.ZipFile(path) as z:
            for name, meta in arrays.items():
                h = hashlib.sha256()
                with z.open(f"arrays/{name}.npy") as f:  # in pieces: arrays may be large
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                if not isinstance(meta, dict) or h.hexdigest() != meta.get("sha256"):
                    raise ModelFileError(f"{path} is corrupt: the array {str(name)[:40]!r} does not match its checksum")
    except KeyError as e:
        raise ModelFileError(f"{path} is truncated or corrupt: an array is missing") from e
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise ModelFileError(f"{path} is truncated or corrupt ({e})") from e


def model_json(rec: StoredModel, loaded: bool | None = None) -> dict[str, Any]:
    """The public form of a stored model (also what GET /v1/models lists)."""
    out: dict[str, Any] = {
        "id": rec.id,
        "name": rec.name,
        "detector": rec.detector,
        "params": rec.params,
        "n_references": rec.n_references,
        "created": rec.created,
        "size_bytes": rec.size_bytes,
        "source": rec.source,
        "manifest": {k: v for k, v in rec.manifest.items() if k != "summary"},
        "summary": rec.manifest.get("summary", {}),
        "url": f"/v1/models/{rec.id}",
    }
    if loaded is not None:
        out["loaded"] = loaded
    return out
