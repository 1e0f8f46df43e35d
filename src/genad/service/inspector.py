"""One inspection request, off the event loop: decode the uploads, run the detector, draw the
heatmap and overlay, keep everything under the storage folder by server-made ids.

Detector instances are cached per (name, params) for zero-shot requests (building one loads a
backbone); a request with normal references gets its own fresh instance, because fit() changes
the detector and two users' references must never mix. A request with a stored model
(genad.service.models) uses that model's detector, fitted once, and records which model it was.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from genad import registry
from genad.detector import Detector
from genad.errors import GenadError
from genad.service.store import Inspection, Store, new_id
from genad.service.uploads import decode_image
from genad.types import ImageSample, Result

if TYPE_CHECKING:
    from genad.service.models import LoadedModel

ASSETS = ("image.png", "heatmap.png", "overlay.png", "thumb.jpg")
THUMB_SIDE = 160  # the history list shows these instead of full-size uploads


# Options that are the server's configuration, not a request's: where the LMM server is and
# its key (a request could otherwise send the key to a host of its choosing), files and folders
# on the server, and cost or load limits. Set them where the service is started (GENAD_LMM_*).
SERVER_ONLY_PARAMS = {
    "base_url",
    "api_key",
    "model",
    "config",
    "config_file",
    "client",
    "lmm_config",  # the declared names behind config= and client=
    "lmm_client",
    "extra_headers",
    "cache_dir",
    "prompts",
    "prompts_dir",
    "price_table",
    "prices",
    "budget",
    "budget_usd",
    "requests_per_minute",
    "rpm",
    "max_concurrency",
    "concurrency",
    "max_retries",
    "timeout",
    "retry_base_delay",
    "json_mode",
    "threads",
    "max_tokens",  # the cost of every answer
    "max_failures",
    "check_input",
    "describer",  # video-rules' second connection (it would carry the key to its base_url)
}
_SERVER_ONLY_SUFFIXES = ("_file", "_dir", "_path", "_url", "_key")


def check_params(params: dict[str, Any], where: str = "params") -> None:
    """Refuse detector options that only whoever starts the service may set (nested too)."""
    for key, value in params.items():
        k = str(key).lower()
        if k in SERVER_ONLY_PARAMS or k.endswith(_SERVER_ONLY_SUFFIXES):
            raise GenadError(
                f"{where}: option {key!r} is part of the server's configuration and cannot be set "
                "by a request: set it where the service is started (GENAD_LMM_* or its config file)"
            )
        if isinstance(value, dict):
            check_params(value, f"{where}.{key}")


@dataclass
class Upload:
    """A file as received: bytes plus the client's name, which is display text only."""

    data: bytes
    name: str | None


class Inspector:
    def __init__(self, store: Store, storage_dir: Path, max_pixels: int, cache_size: int = 4) -> None:
        self.store = store
        self.dir = Path(storage_dir) / "inspections"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_pixels = max_pixels
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[Detector, threading.Lock]] = OrderedDict()
        self._cache_lock = threading.Lock()

    def asset_path(self, inspection_id: str, asset: str) -> Path:
        # Callers pass a checked 32-hex id and a name from ASSETS: no request text reaches here.
        assert asset in ASSETS
        return self.dir / inspection_id / asset

    # -- detectors ---------------------------------------------------------------------------
    def _cached(self, name: str, params: dict[str, Any]) -> tuple[Detector, threading.Lock]:
        key = json.dumps([name, params], sort_keys=True)
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        det = registry.create(name, **params)  # outside the lock: may load a model
        with self._cache_lock:
            hit = self._cache.setdefault(key, (det, threading.Lock()))
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return hit

    @staticmethod
    def check_detector(name: str) -> None:
        """`name` is a registered detector that reads images (GenadError otherwise)."""
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise GenadError("detector must be a detector's name (GET /v1/detectors lists them)")
        cls = registry.get(name)  # unknown -> GenadError listing the available names
        if "image" not in cls.modalities:
            raise GenadError(
                f"detector {name!r} reads {', '.join(cls.modalities)}, not images: pick an image "
                "detector, or use a batch job or `genad detect` for other data"
            )

    # -- the request -------------------------------------------------------------------------
    def inspect(
        self,
        files: list[Upload],
        normals: list[Upload],
        detector: str,
        params: dict[str, Any],
        inline_png: bool = True,
        model: LoadedModel | None = None,
    ) -> dict[str, Any]:
        """Score `files`: with `model` (no references, no options: the model's own), else with
        `detector` and `params`, fitted on `normals` when there are any."""
        t0 = time.perf_counter()
        if model is not None:
            if normals or params:
                raise GenadError("a stored model takes no normal references and no options: it has its own")
            detector, params = model.record.detector, model.record.params
        else:
            check_params(params)
            self.check_detector(detector)
        ids = [new_id() for _ in files]
        arrays = [decode_image(u.data, label("file", i, u), self.max_pixels) for i, u in enumerate(files)]
        refs = [decode_image(u.data, label("normal", i, u), self.max_pixels) for i, u in enumerate(normals)]
        t_decode = time.perf_counter()

        samples = [ImageSample(id=i, array=a) for i, a in zip(ids, arrays)]
        n_normals = len(refs)
        if model is not None:
            n_normals = model.record.n_references
            with model.lock:  # a loaded model is shared by every request that names it
                results = model.detector.predict(samples)
        elif refs:
            det = registry.create(detector, **params)
            det.fit([ImageSample(id=f"normal-{k}", array=a) for k, a in enumerate(refs)])
            results = det.predict(samples)
        else:
            det, lock = self._cached(detector, params)
            with lock:  # detectors promise nothing about concurrent predict() calls
                results = det.predict(samples)
        if len(results) != len(samples):
            raise RuntimeError(f"detector {detector!r} returned {len(results)} results for {len(samples)} inputs")
        t_detect = time.perf_counter()

        used = None if model is None else {"id": model.record.id, "name": model.record.name}
        out = []
        for iid, upload, arr, res in zip(ids, files, arrays, results):
            out.append(self._keep(iid, upload, arr, res, detector, params, n_normals, inline_png, used))
        t_end = time.perf_counter()
        return {
            "detector": detector,
            "params": params,
            "n_normals": n_normals,
            "model": used,
            "inspections": out,
            "timings": {
                "decode": round(t_decode - t0, 4),
                "detect": round(t_detect - t_decode, 4),
                "render_and_store": round(t_end - t_detect, 4),
                "total": round(t_end - t0, 4),
            },
        }

    def _keep(
        self,
        iid: str,
        upload: Upload,
        image: np.ndarray,
        res: Result,
        detector: str,
        params: dict[str, Any],
        n_normals: int,
        inline_png: bool,
        model: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        from genad.ops import resize_map
        from genad.report.overlay import heatmap_rgb, overlay, threshold_scale

        folder = self.dir / iid
        folder.mkdir(parents=True, exist_ok=False)
        _save_png(image, folder / "image.png")
        thumb = Image.fromarray(image)
        thumb.thumbnail((THUMB_SIDE, THUMB_SIDE))
        thumb.save(folder / "thumb.jpg", format="JPEG", quality=85)
        has_map = res.anomaly_map is not None and np.asarray(res.anomaly_map).ndim == 2
        overlay_png: bytes | None = None
        if has_map:
            amap = resize_map(np.asarray(res.anomaly_map, dtype=np.float32), image.shape[:2])
            # The threshold mid-scale (green); red = well above it; a normal image stays blue-cyan.
            vmin, vmax = threshold_scale(amap, res.threshold, at=0.5, saturate=True)
            _save_png(heatmap_rgb(amap, vmin=vmin, vmax=vmax), folder / "heatmap.png")
            over = overlay(image, amap, alpha=0.5, vmin=vmin, vmax=vmax, regions=res.regions or None)
            overlay_png = _save_png(over, folder / "overlay.png")
        result = res.to_dict()
        result["sample_id"] = iid
        ins = Inspection(
            id=iid,
            created=time.time(),
            filename=_display(upload),
            detector=detector,
            params=params,
            n_normals=n_normals,
            width=int(image.shape[1]),
            height=int(image.shape[0]),
            result=result,
            has_heatmap=has_map,
            model_id=None if model is None else model["id"],
            model_name=None if model is None else model["name"],
        )
        self.store.add_inspection(ins)
        d = inspection_json(ins)
        if inline_png:
            d["overlay_png_base64"] = None if overlay_png is None else base64.b64encode(overlay_png).decode()
        return d


def inspection_json(ins: Inspection) -> dict[str, Any]:
    """The public form of an inspection (also what the history lists)."""
    base = f"/v1/inspections/{ins.id}"
    return {
        "id": ins.id,
        "created": ins.created,
        "filename": ins.filename,
        "detector": ins.detector,
        "params": ins.params,
        "n_normals": ins.n_normals,
        "model": None if ins.model_id is None else {"id": ins.model_id, "name": ins.model_name},
        "width": ins.width,
        "height": ins.height,
        "score": ins.result.get("score"),
        "decision": ins.result.get("decision"),
        "threshold": ins.result.get("threshold"),
        "error": ins.result.get("error"),
        "result": ins.result,
        "image_url": f"{base}/image.png",
        "thumb_url": f"{base}/thumb.jpg",
        "heatmap_url": f"{base}/heatmap.png" if ins.has_heatmap else None,
        "overlay_url": f"{base}/overlay.png" if ins.has_heatmap else None,
    }


def _save_png(arr: np.ndarray, path: Path) -> bytes:
    buf = io.BytesIO()
    # compress_level 1: several times faster than the default, files ~20% larger
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=1)
    data = buf.getvalue()
    path.write_bytes(data)
    return data


def _display(upload: Upload) -> str | None:
    from genad.service.uploads import display_name

    return display_name(upload.name)


def label(kind: str, i: int, u: Upload) -> str:
    name = _display(u)
    return f"{kind} {i + 1}" + (f" ({name})" if name else "")
