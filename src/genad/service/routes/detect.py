"""POST /v1/detect (score uploaded images) and GET /v1/detectors (what the page offers); the
upload reading and options parsing that POST /v1/models shares."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile

from genad import registry
from genad.errors import GenadError
from genad.service.inspector import Inspector, Upload, check_option_values
from genad.service.models import ModelLibrary
from genad.service.routes.deps import MB, InspectorDep, Limits, LimitsDep, ModelsDep, PoolDep, off_loop
from genad.service.uploads import PayloadTooLarge

log = logging.getLogger("genad.service")

#: the longest `params` text accepted (a form field may otherwise be a megabyte of JSON)
MAX_PARAMS_CHARS = 16 * 1024

router = APIRouter()


class ImageDetectors:
    """Which detectors read images (kept on app.state.image_detectors). Knowing it needs their
    classes, and importing "embedded" loads torch: done once, off the loop, and early (the
    lifespan starts it) so that the first detection is warm too."""

    def __init__(self) -> None:
        self._names: Future[list[str]] | None = None

    def start(self) -> Future[list[str]]:
        if self._names is None:  # its own thread: a detection must not queue behind the imports
            warm = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genad-warmup")
            self._names = warm.submit(_image_detector_names)
            warm.shutdown(wait=False)
        return self._names

    async def within(self, seconds: float) -> list[str] | None:
        """The names, or None if they are not known within `seconds` (still importing)."""
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self.start())), seconds)
        except TimeoutError:
            return None


async def _image_detectors(request: Request) -> ImageDetectors:
    return request.app.state.image_detectors


ImageDetectorsDep = Annotated[ImageDetectors, Depends(_image_detectors)]


@router.get("/v1/detectors", tags=["service"])
async def detectors(limits: LimitsDep, image_detectors: ImageDetectorsDep, inspector: InspectorDep) -> dict[str, Any]:
    """Detector names (all, and those that read images, for /v1/detect: null while the
    service is still importing them at start-up, ask again), the default, the backbones a
    request may name (`backbone` option), the upload limits, and whether an LMM provider is
    configured (never the key)."""
    return {
        "detectors": registry.available(),
        "image_detectors": await image_detectors.within(2.0),
        "default": registry.DEFAULT_DETECTOR,
        "backbones": await asyncio.to_thread(inspector.options.backbones.offered),
        "lmm": lmm_status(),
        "limits": limits.as_json(),
    }


@router.post("/v1/detect", tags=["detect"])
async def detect(
    files: Annotated[list[UploadFile], File(description="one or more test images")],
    inspector: InspectorDep,
    models: ModelsDep,
    limits: LimitsDep,
    pool: PoolDep,
    normals: Annotated[list[UploadFile] | None, File(description="optional normal references (few-shot)")] = None,
    detector: Annotated[
        str | None, Form(description=f"detector name (default {registry.DEFAULT_DETECTOR}); not with model")
    ] = None,
    params: Annotated[str, Form(description='detector options as a JSON object, e.g. {"threshold": 0.5}')] = "{}",
    inline_png: Annotated[bool, Form(description="include the overlay PNG as base64")] = True,
    model: Annotated[
        str | None,
        Form(description="id of a stored model (POST /v1/models): score with it, no refit; no normals, no params"),
    ] = None,
) -> dict[str, Any]:
    """Score uploaded images; returns one inspection per file with score, decision,
    threshold, regions, explanation, timings, usage and the heatmap overlay. With `model`,
    the stored model scores them (fitted once, kept in memory): no references are sent."""
    normals = real_files(normals)
    model = (model or "").strip() or None
    name = detector or registry.DEFAULT_DETECTOR
    opts: dict[str, Any] = {}
    if model is not None:
        check_model_request(models, model, normals, detector, params)
    else:
        opts = parse_params(params)
        # every option against the detector's declaration, before a byte of an image is read
        await asyncio.to_thread(inspector.options.check, name, opts)
    if len(files) + len(normals) > limits.max_files:
        raise HTTPException(
            413, f"too many files ({len(files) + len(normals)}): at most {limits.max_files} per request"
        )
    uploads = [await read_upload(f, limits) for f in files]
    if model is not None:
        return await off_loop(pool, _inspect_with_model, inspector, models, model, uploads, inline_png)
    refs = [await read_upload(f, limits) for f in normals]
    return await off_loop(pool, inspector.inspect, uploads, refs, name, opts, inline_png)


def check_model_request(
    models: ModelLibrary, model: str, normals: list[UploadFile], detector: str | None, params: str
) -> None:
    """A request that names a stored model: the model exists (404), and no references,
    options or other detector come with it (400)."""
    rec = models.get(model)
    if normals:
        raise GenadError(
            f"model {rec.name!r} was fitted on its own {rec.n_references} references: leave the normal references "
            "out, or leave model out to fit on the references you send"
        )
    if parse_params(params):
        raise GenadError(
            f"model {rec.name!r} keeps the options it was created with: leave params out (create another model "
            "for other options)"
        )
    if detector and detector != rec.detector:
        raise GenadError(
            f"model {rec.name!r} is a {rec.detector!r} model, not {detector[:64]!r}: leave detector out with a model"
        )


def _inspect_with_model(
    inspector: Inspector, models: ModelLibrary, model_id: str, uploads: list[Upload], inline_png: bool
) -> dict[str, Any]:
    loaded = models.loaded(model_id)  # read from its file the first time, then kept
    return inspector.inspect(uploads, [], loaded.record.detector, {}, inline_png, model=loaded)


def lmm_status() -> dict[str, Any]:
    """Whether GENAD_LMM_* is set, for the page: the server's host and model, never the key."""
    base = os.environ.get("GENAD_LMM_BASE_URL") or ""
    model = os.environ.get("GENAD_LMM_MODEL") or None
    key_set = bool(os.environ.get("GENAD_LMM_API_KEY") or os.environ.get("OPENAI_API_KEY"))
    host = None
    if base:
        parts = urlsplit(base)
        host = parts.hostname or None  # drops user:password@ and the path, which may carry tokens
        if host and parts.port:
            host = f"{host}:{parts.port}"
    missing = [n for n, v in (("GENAD_LMM_BASE_URL", base), ("GENAD_LMM_MODEL", model)) if not v]
    if not key_set:
        missing.append("GENAD_LMM_API_KEY")
    return {"configured": not missing, "host": host, "model": model, "api_key_set": key_set, "missing": missing}


def _image_detector_names() -> list[str]:
    names = []
    for name in registry.available():
        try:
            if "image" in registry.get(name).modalities:
                names.append(name)
        except (GenadError, ImportError) as e:  # an optional dependency missing: leave it out
            log.info("detector %s unavailable: %s", name, e)
    return names


def real_files(files: list[UploadFile] | None) -> list[UploadFile]:
    """The files actually sent: a browser sends an empty part for a file input left empty."""
    return [f for f in (files or []) if f.filename or f.size]


async def read_upload(f: UploadFile, limits: Limits) -> Upload:
    """One uploaded file's bytes, within the per-file limit (PayloadTooLarge otherwise)."""
    limit, limit_mb = limits.per_file, limits.max_upload_mb
    if f.size is not None and f.size > limit:
        raise PayloadTooLarge(f"{_name(f)} is {f.size / MB:.1f} MB, over the {limit_mb:g} MB limit per file")
    data = await f.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"{_name(f)} is over the {limit_mb:g} MB limit per file")
    return Upload(data=data, name=f.filename)


def _name(f: UploadFile) -> str:
    from genad.service.uploads import display_name

    return repr(display_name(f.filename) or "a file")


def parse_params(text: str | None) -> dict[str, Any]:
    """The `params` form field: a JSON object of detector options (GenadError otherwise)."""
    if text is not None and len(text) > MAX_PARAMS_CHARS:
        raise GenadError(f"params is {len(text)} characters long: at most {MAX_PARAMS_CHARS}")
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as e:
        raise GenadError(f'params is not valid JSON ({e.msg}): give an object such as {{"threshold": 0.5}}') from e
    except RecursionError as e:
        raise GenadError('params is nested too deep: give a flat object such as {"threshold": 0.5}') from e
    if not isinstance(value, dict):
        raise GenadError('params must be a JSON object such as {"threshold": 0.5}')
    check_option_values(value)
    return value
