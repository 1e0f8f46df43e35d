"""The inspection service: a FastAPI app with a JSON API and a one-page web UI.

    app = create_app(Path("storage"), data_roots=[Path("/data")])
    uvicorn.run(app)

Everything a request leaves behind (pictures, the SQLite database, job folders) lives under
`storage_dir`, in folders named by ids the server makes. Folders for jobs come only from
`data_roots`. Detection runs in a worker thread pool so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

import genad
from genad import registry
from genad.errors import GenadError
from genad.service.inspector import ASSETS, Inspector, Upload, inspection_json
from genad.service.jobs import AccessDenied, DataRoots, JobRequest, JobRunner, NotFound
from genad.service.store import Inspection, Job, Store, is_id
from genad.service.uploads import PayloadTooLarge, UnsupportedMedia

log = logging.getLogger("genad.service")
STATIC = Path(__file__).parent / "static"
MB = 1024 * 1024


class JobIn(BaseModel):
    """Body of POST /v1/jobs."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["evaluate", "batch"] = Field(description="evaluate: MVTec-style folder with labels; batch: score every input")
    data_dir: str = Field(description="a folder under one of the service's --data-root folders (relative to it, or absolute)")
    detector: str = registry.DEFAULT_DETECTOR
    params: dict[str, Any] = Field(default_factory=dict, description="detector options")
    shots: int = Field(0, ge=0, description="evaluate: normal references drawn from train/good (0 = zero-shot)")
    seed: int = 0
    limit: int | None = Field(None, ge=1, description="score at most this many inputs")
    normal_dir: str | None = Field(None, description="batch: folder of normal references (few-shot)")


def create_app(
    storage_dir: Path,
    *,
    data_roots: list[Path] | tuple[Path, ...] = (),
    max_upload_mb: float = 20.0,
    max_files: int = 16,
    max_pixels: int = 40_000_000,
    db_path: Path | None = None,
    detect_workers: int = 1,
) -> FastAPI:
    """Build the service. `db_path` defaults to storage_dir/genad.sqlite3."""
    storage_dir = Path(storage_dir).expanduser().resolve()
    storage_dir.mkdir(parents=True, exist_ok=True)
    store = Store(db_path or storage_dir / "genad.sqlite3")
    interrupted = store.mark_interrupted()
    if interrupted:
        log.warning("%d job(s) were running when the service last stopped: marked interrupted", interrupted)
    inspector = Inspector(store, storage_dir, max_pixels=max_pixels)
    jobs = JobRunner(store, storage_dir, DataRoots(list(data_roots)))
    pool = ThreadPoolExecutor(max_workers=max(1, detect_workers), thread_name_prefix="genad-detect")
    per_file = int(max_upload_mb * MB)

    image_names: list[Future[list[str]]] = []

    def image_detectors() -> Future[list[str]]:
        # Which detectors read images needs their classes, and importing "embedded" loads torch:
        # do it once, off the loop, and early (at start-up) so the first detection is warm too.
        if not image_names:  # its own thread: a detection must not queue behind the imports
            warm = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genad-warmup")
            image_names.append(warm.submit(_image_detector_names))
            warm.shutdown(wait=False)
        return image_names[0]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        image_detectors()
        yield
        jobs.shutdown()
        pool.shutdown(wait=False, cancel_futures=True)

    app = _fastapi(
        title="genad inspection service",
        version=genad.__version__,
        description="Find and explain anomalies in images. The web page is at `/`.",
        lifespan=lifespan,
    )
    app.state.store, app.state.inspector, app.state.jobs = store, inspector, jobs
    # files x per-file cap, plus room for the form fields and multipart headers
    app.add_middleware(BodyLimit, max_bytes=per_file * max_files + 64 * 1024)

    # -- errors as one-line JSON -------------------------------------------------------------
    status_of: list[tuple[type[GenadError], int]] = [
        (PayloadTooLarge, 413), (UnsupportedMedia, 415), (AccessDenied, 403), (NotFound, 404),
    ]

    @app.exception_handler(GenadError)
    async def _genad_error(_: Request, e: GenadError) -> JSONResponse:
        code = next((c for t, c in status_of if isinstance(e, t)), 400)
        return JSONResponse({"detail": str(e)}, status_code=code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        parts = []
        for err in e.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(Exception)
    async def _crash(_: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse({"detail": f"internal error ({type(e).__name__}); see the service log"}, status_code=500)

    async def off_loop(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    # -- page and health ---------------------------------------------------------------------
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "inspections": store.count_inspections()}

    @app.get("/v1/detectors", tags=["service"])
    async def detectors() -> dict[str, Any]:
        """Detector names (all, and those that read images, for /v1/detect: null while the
        service is still importing them at start-up, ask again), the default, the upload
        limits, and whether an LMM provider is configured (never the key)."""
        return {
            "detectors": registry.available(),
            "image_detectors": await _within(image_detectors(), 2.0),
            "default": registry.DEFAULT_DETECTOR,
            "lmm": lmm_status(),
            "limits": {"max_upload_mb": max_upload_mb, "max_files": max_files, "max_pixels": max_pixels},
        }

    # -- detection ---------------------------------------------------------------------------
    @app.post("/v1/detect", tags=["detect"])
    async def detect(
        files: Annotated[list[UploadFile], File(description="one or more test images")],
        normals: Annotated[list[UploadFile] | None, File(description="optional normal references (few-shot)")] = None,
        detector: Annotated[str, Form()] = registry.DEFAULT_DETECTOR,
        params: Annotated[str, Form(description='detector options as a JSON object, e.g. {"threshold": 0.5}')] = "{}",
        inline_png: Annotated[bool, Form(description="include the overlay PNG as base64")] = True,
    ) -> dict[str, Any]:
        """Score uploaded images; returns one inspection per file with score, decision,
        threshold, regions, explanation, timings, usage and the heatmap overlay."""
        normals = [n for n in (normals or []) if n.filename or n.size]
        if len(files) + len(normals) > max_files:
            raise HTTPException(413, f"too many files ({len(files) + len(normals)}): at most {max_files} per request")
        uploads = [await _read(f, per_file, max_upload_mb) for f in files]
        refs = [await _read(f, per_file, max_upload_mb) for f in normals]
        opts = _parse_params(params)
        return await off_loop(inspector.inspect, uploads, refs, detector, opts, inline_png)

    # -- history -----------------------------------------------------------------------------
    @app.get("/v1/inspections", tags=["history"])
    async def inspections(
        limit: Annotated[int, Query(ge=1, le=500)] = 20,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        """Recent inspections, newest first."""
        return {
            "total": store.count_inspections(),
            "inspections": [inspection_json(i) for i in store.list_inspections(limit, offset)],
        }

    @app.get("/v1/inspections/{inspection_id}", tags=["history"])
    async def inspection(inspection_id: str) -> dict[str, Any]:
        return inspection_json(_inspection(inspection_id))

    @app.get("/v1/inspections/{inspection_id}/{asset}", tags=["history"], response_class=FileResponse)
    async def inspection_asset(
        inspection_id: str, asset: Literal["image.png", "heatmap.png", "overlay.png", "thumb.jpg"]
    ) -> FileResponse:
        """The uploaded image (lossless PNG), its heatmap layer, the blended overlay with
        numbered region boxes, or a small thumbnail for lists."""
        _inspection(inspection_id)
        path = inspector.asset_path(inspection_id, asset)
        if not path.is_file():
            raise HTTPException(404, f"inspection {inspection_id} has no {asset} (the detector gave no map)")
        media = "image/jpeg" if asset.endswith(".jpg") else "image/png"
        # ids are never reused, so the pictures never change: let browsers keep them
        return FileResponse(path, media_type=media, headers={"Cache-Control": "max-age=86400, immutable"})

    @app.delete("/v1/inspections/{inspection_id}", tags=["history"])
    async def delete_inspection(inspection_id: str) -> dict[str, Any]:
        _inspection(inspection_id)
        store.delete_inspection(inspection_id)
        for asset in ASSETS:
            inspector.asset_path(inspection_id, asset).unlink(missing_ok=True)
        folder = inspector.asset_path(inspection_id, "image.png").parent
        if folder.is_dir():
            folder.rmdir()
        return {"deleted": inspection_id}

    def _inspection(inspection_id: str) -> Inspection:
        found = store.get_inspection(inspection_id) if is_id(inspection_id) else None
        if found is None:
            raise HTTPException(404, f"no inspection {inspection_id!r}")
        return found

    # -- jobs --------------------------------------------------------------------------------
    @app.post("/v1/jobs", tags=["jobs"], status_code=202)
    async def start_job(body: JobIn) -> dict[str, Any]:
        """Start an evaluation (MVTec-style folder: metrics) or a batch detection job on a
        folder under an allowed data root. Poll GET /v1/jobs/{id}."""
        job = await off_loop(jobs.submit, JobRequest(**body.model_dump()))
        return job_json(job)

    @app.get("/v1/jobs", tags=["jobs"])
    async def list_jobs(limit: Annotated[int, Query(ge=1, le=500)] = 20) -> dict[str, Any]:
        return {"jobs": [job_json(j) for j in store.list_jobs(limit)]}

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    async def get_job(job_id: str) -> dict[str, Any]:
        """Status (queued, running, done, failed, interrupted, cancelled), progress, summary."""
        return job_json(_job(job_id))

    @app.get("/v1/jobs/{job_id}/results", tags=["jobs"])
    async def job_results(
        job_id: str,
        limit: Annotated[int, Query(ge=1, le=5000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        """Per-input results of a batch job, in input order."""
        _job(job_id)
        return {"results": jobs.results(job_id, limit, offset)}

    @app.post("/v1/jobs/{job_id}/cancel", tags=["jobs"])
    async def cancel_job(job_id: str) -> dict[str, Any]:
        _job(job_id)
        return job_json(jobs.cancel(job_id))

    @app.post("/v1/jobs/{job_id}/resume", tags=["jobs"])
    async def resume_job(job_id: str) -> dict[str, Any]:
        """Run an interrupted, failed or cancelled job again; an evaluation keeps the samples
        it had finished."""
        _job(job_id)
        return job_json(await off_loop(jobs.resume, job_id))

    @app.get("/v1/jobs/{job_id}/report/{path:path}", tags=["jobs"], include_in_schema=False)
    async def job_report(job_id: str, path: str) -> FileResponse:
        _job(job_id)
        root = (storage_dir / "jobs" / job_id / "report").resolve()
        target = (root / path).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            raise HTTPException(404, "no such report file")
        return FileResponse(target)

    def _job(job_id: str) -> Job:
        found = store.get_job(job_id) if is_id(job_id) else None
        if found is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return found

    return app


async def _within(fut: Future[list[str]], seconds: float) -> list[str] | None:
    try:
        return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), seconds)
    except TimeoutError:
        return None


def _fastapi(**kw: Any) -> FastAPI:
    """FastAPI whose /docs and /redoc pages load Swagger UI and ReDoc from the package, not
    from a CDN: inspection stations are often offline. Plain FastAPI if it is not installed."""
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:
        return FastAPI(**kw)
    return FastAPIOffline(**kw)


def _image_detector_names() -> list[str]:
    names = []
    for name in registry.available():
        try:
            if "image" in registry.get(name).modalities:
                names.append(name)
        except (GenadError, ImportError) as e:  # an optional dependency missing: leave it out
            log.info("detector %s unavailable: %s", name, e)
    return names


def job_json(job: Job) -> dict[str, Any]:
    frac = None
    if job.total:
        frac = round(min(1.0, job.done / job.total), 4)
    elif job.status == "done":
        frac = 1.0
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "created": job.created,
        "started": job.started,
        "finished": job.finished,
        "progress": {"done": job.done, "total": job.total, "fraction": frac},
        "request": job.request,
        "summary": job.summary,
        "error": job.error,
        "url": f"/v1/jobs/{job.id}",
    }


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
        raise GenadError(f"params is not valid JSON ({e.msg}): give an object such as {{\"threshold\": 0.5}}") from e
    if not isinstance(value, dict):
        raise GenadError("params must be a JSON object such as {\"threshold\": 0.5}")
    return value


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413 before they are spooled to disk: checks
    Content-Length, and counts bytes for chunked uploads that do not send one."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = f"{self.max_bytes / MB:.1f} MB" if self.max_bytes >= MB else f"{self.max_bytes // 1024} kB"
        for k, v in scope.get("headers", []):
            if k == b"content-length" and v.isdigit() and int(v) > self.max_bytes:
                await _send_413(send, f"request body is over {limit}: send fewer or smaller files")
                return
        seen = 0
        too_big = False

        async def counted() -> dict:
            nonlocal seen, too_big
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    too_big = True
                    return {"type": "http.disconnect"}  # stops the parser without reading more
            return msg

        started = False

        async def guarded_send(msg: dict) -> None:
            nonlocal started
            if too_big:
                if not started:
                    started = True
                    await _send_413(send, f"request body is over {limit}: send fewer or smaller files")
                return
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counted, guarded_send)
        except Exception:
            if not too_big:
                raise
            if not started:
                await _send_413(send, f"request body is over {limit}: send fewer or smaller files")


async def _send_413(send: Callable, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
