"""POST /v1/detect (score uploaded images) and GET /v1/detectors (what the page offers)."""

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
from genad.service.inspector import Upload
from genad.service.routes.deps import MB, InspectorDep, LimitsDep, PoolDep, off_loop
from genad.service.uploads import PayloadTooLarge

log = logging.getLogger("genad.service")

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
async def detectors(limits: LimitsDep, image_detectors: ImageDetectorsDep) -> dict[str, Any]:
    """Detector names (all, and those that read images, for /v1/detect: null while the
    service is still importing them at start-up, ask again), the default, the upload
    limits, and whether an LMM provider is configured (never the key)."""
    return {
        "detectors": registry.available(),
        "image_detectors": await image_detectors.within(2.0),
        "default": registry.DEFAULT_DETECTOR,
        "lmm": lmm_status(),
        "limits": limits.as_json(),
    }


@router.post("/v1/detect", tags=["detect"])
async def detect(
    files: Annotated[list[UploadFile], File(description="one or more test images")],
    inspector: InspectorDep,
    limits: LimitsDep,
    pool: PoolDep,
    normals: Annotated[list[UploadFile] | None, File(description="optional normal references (few-shot)")] = None,
    detector: Annotated[str, Form()] = registry.DEFAULT_DETECTOR,
    params: Annotated[str, Form(description='detector options as a JSON object, e.g. {"threshold": 0.5}')] = "{}",
    inline_png: Annotated[bool, Form(description="include the overlay PNG as base64")] = True,
) -> dict[str, Any]:
    """Score uploaded images; returns one inspection per file with score, decision,
    threshold, regions, explanation, timings, usage and the heatmap overlay."""
    normals = [n for n in (normals or []) if n.filename or n.size]
    if len(files) + len(normals) > limits.max_files:
        raise HTTPException(
            413, f"too many files ({len(files) + len(normals)}): at most {limits.max_files} per request"
        )
    uploads = [await _read(f, limits.per_file, limits.max_upload_mb) for f in files]
    refs = [await _read(f, limits.per_file, limits.max_upload_mb) for f in normals]
    opts = _parse_params(params)
    return await off_loop(pool, inspector.inspect, uploads, refs, detector, opts, inline_png)


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


async def _read(f: UploadFile, limit: int, limit_mb: float) -> Upload:
    if f.size is not None and f.size > limit:
        raise PayloadTooLarge(f"{_name(f)} is {f.size / MB:.1f} MB, over the {limit_mb:g} MB limit per file")
    data = await f.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"{_name(f)} is over the {limit_mb:g} MB limit per file")
    return Upload(data=data, name=f.filename)


def _name(f: UploadFile) -> str:
    from genad.service.uploads import display_name

    return repr(display_name(f.filename) or "a file")


def _parse_params(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as e:
        raise GenadError(f'params is not valid JSON ({e.msg}): give an object such as {{"threshold": 0.5}}') from e
    if not isinstance(value, dict):
        raise GenadError('params must be a JSON object such as {"threshold": 0.5}')
    return value
