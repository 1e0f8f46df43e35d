"""The inspection service: a FastAPI app with a JSON API and a one-page web UI.

    app = create_app(Path("storage"), data_roots=[Path("/data")])
    uvicorn.run(app)

Everything a request leaves behind (pictures, the SQLite database, job folders, model files) lives under
`storage_dir`, in folders named by ids the server makes. Folders for jobs come only from
`data_roots`. Detection runs in a worker thread pool so the event loop keeps serving.

`create_app` builds the shared objects (kept on `app.state`, see genad.service.routes.deps),
the lifespan, the error handlers and the body-size limit, and includes the routers of
genad.service.routes: static (the page, /static, /healthz), detect, history, jobs and models.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

import genad
from genad.engines.lmm.provider import InputIgnored, LMMRequestError, ServerFailing
from genad.errors import GenadError
from genad.service.inspector import Inspector
from genad.service.jobs import AccessDenied, DataRoots, JobRunner, NotFound
from genad.service.models import ModelLibrary, ModelsFull, ModelUnusable
from genad.service.routes import detect, history, jobs, models, static
from genad.service.routes.deps import MB, Limits
from genad.service.routes.detect import ImageDetectors, lmm_status
from genad.service.store import NameTaken, Store
from genad.service.uploads import PayloadTooLarge, UnsupportedMedia

__all__ = ["BodyLimit", "create_app", "lmm_status"]

log = logging.getLogger("genad.service")

# A library error's type -> its HTTP status (anything else a GenadError says is a 400).
_STATUS_OF: list[tuple[type[GenadError], int]] = [
    (PayloadTooLarge, 413),
    (UnsupportedMedia, 415),
    (AccessDenied, 403),
    (NotFound, 404),
    # a stored model whose file cannot be loaded; a name in use; no room for another model
    (ModelUnusable, 409),
    (NameTaken, 409),
    (ModelsFull, 409),
    # the model server behind the service failed, or cannot read what it is sent (no vision)
    (ServerFailing, 502),
    (InputIgnored, 502),
    (LMMRequestError, 502),
]


def create_app(
    storage_dir: Path,
    *,
    data_roots: list[Path] | tuple[Path, ...] = (),
    max_upload_mb: float = 20.0,
    max_files: int = 16,
    max_pixels: int = 40_000_000,
    db_path: Path | None = None,
    detect_workers: int = 1,
    max_models: int = 100,
    model_cache: int = 3,
    max_folder_images: int = 1000,
) -> FastAPI:
    """Build the service. `db_path` defaults to storage_dir/genad.sqlite3. Stored models: at
    most `max_models` kept, `model_cache` of them loaded in memory at once, fitted on at most
    `max_folder_images` images of a data-root folder (uploads: `max_files`)."""
    storage_dir = Path(storage_dir).expanduser().resolve()
    storage_dir.mkdir(parents=True, exist_ok=True)
    store = Store(db_path or storage_dir / "genad.sqlite3")
    interrupted = store.mark_interrupted()
    if interrupted:
        log.warning("%d job(s) were running when the service last stopped: marked interrupted", interrupted)
    inspector = Inspector(store, storage_dir, max_pixels=max_pixels)
    roots = DataRoots(list(data_roots))
    library = ModelLibrary(
        store,
        storage_dir,
        roots,
        max_pixels=max_pixels,
        max_models=max_models,
        max_folder_images=max_folder_images,
        cache_size=model_cache,
    )
    runner = JobRunner(store, storage_dir, roots, library)
    pool = ThreadPoolExecutor(max_workers=max(1, detect_workers), thread_name_prefix="genad-detect")
    limits = Limits(max_upload_mb=max_upload_mb, max_files=max_files, max_pixels=max_pixels)
    image_detectors = ImageDetectors()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        image_detectors.start()  # at start-up, so the first detection is warm too
        yield
        runner.shutdown()
        pool.shutdown(wait=False, cancel_futures=True)

    app = _fastapi(
        title="genad inspection service",
        version=genad.__version__,
        description="Find and explain anomalies in images. The web page is at `/`.",
        lifespan=lifespan,
    )
    app.state.store, app.state.inspector, app.state.jobs = store, inspector, runner
    app.state.limits, app.state.detect_pool, app.state.storage_dir = limits, pool, storage_dir
    app.state.image_detectors, app.state.models = image_detectors, library
    app.add_middleware(BodyLimit, max_bytes=limits.body_bytes)
    _error_handlers(app)

    static.mount(app)
    for module in (static, detect, history, jobs, models):
        app.include_router(module.router)
    return app


def _error_handlers(app: FastAPI) -> None:
    """Every error as one-line JSON: {"detail": "..."}."""

    @app.exception_handler(GenadError)
    async def _genad_error(_: Request, e: GenadError) -> JSONResponse:
        code = next((c for t, c in _STATUS_OF if isinstance(e, t)), 400)
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


def _fastapi(**kw: Any) -> FastAPI:
    """FastAPI whose /docs and /redoc pages load Swagger UI and ReDoc from the package, not
    from a CDN: inspection stations are often offline. Plain FastAPI if it is not installed."""
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:
        return FastAPI(**kw)
    return FastAPIOffline(**kw)


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
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
