"""The inspection service: a FastAPI app with a JSON API and a one-page web UI.

    app = create_app(Path("storage"), data_roots=[Path("/data")])
    uvicorn.run(app)

Everything a request leaves behind (pictures, the SQLite database, job folders, model files) lives under
`storage_dir`, in folders named by ids the server makes. Folders for jobs come only from
`data_roots`; ONNX backbones only from `models_dir`. Detection runs in a worker thread pool so
the event loop keeps serving.

`create_app` first locks the storage folder (genad.service.lock: one service per storage, taken
before the database or any job is touched), then builds the shared objects (kept on
`app.state`, see genad.service.routes.deps), the lifespan (which lets the lock go at the end),
the error handlers, the bearer-token check (genad.service.auth, when `token` is given) and the
body-size limit, and includes the routers of genad.service.routes: static (the page, /static,
/healthz), detect, history, jobs and models.

No input from a request is answered 500: the routes check what they are sent and answer 4xx
with one line; an error nobody foresaw is still answered as JSON (500) without closing the
connection, and logged.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

import genad
from genad.engines.lmm.provider import InputIgnored, LMMRequestError, ServerFailing
from genad.errors import GenadError
from genad.service.auth import BearerAuth
from genad.service.inspector import Backbones, Inspector, Options
from genad.service.jobs import AccessDenied, DataRoots, JobRunner, NotFound
from genad.service.lock import StorageBusy, StorageLock
from genad.service.models import ModelLibrary, ModelsFull, ModelUnusable
from genad.service.routes import detect, history, jobs, models, static
from genad.service.routes.deps import MB, Limits
from genad.service.routes.detect import ImageDetectors, lmm_status
from genad.service.store import NameTaken, Store
from genad.service.uploads import PayloadTooLarge, UnsupportedMedia

__all__ = ["BodyLimit", "StorageBusy", "create_app", "lmm_status"]

log = logging.getLogger("genad.service")

#: the largest body of a request that is not a multipart upload (a job's JSON, a form of fields)
MAX_JSON_BODY = 64 * 1024

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
    token: str | None = None,
    models_dir: Path | None = None,
    lock: StorageLock | None = None,
) -> FastAPI:
    """Build the service. `db_path` defaults to storage_dir/genad.sqlite3. Stored models: at
    most `max_models` kept, `model_cache` of them loaded in memory at once, fitted on at most
    `max_folder_images` images of a data-root folder (uploads: `max_files`). `token`: every
    /v1 route needs `Authorization: Bearer <token>` (None: no login). `models_dir`: the .onnx
    files a request may name as backbone onnx:NAME. `lock`: the storage folder's lock when
    the caller took it already (else taken here; StorageBusy if another service holds it)."""
    storage_dir = Path(storage_dir).expanduser().resolve()
    storage_dir.mkdir(parents=True, exist_ok=True)
    # before the database is opened and any job touched: a second service on this storage
    # stops here and leaves the first one's running jobs alone
    storage_lock = lock if lock is not None else StorageLock.acquire(storage_dir)
    try:
        store = Store(db_path or storage_dir / "genad.sqlite3")
    except BaseException:
        if lock is None:
            storage_lock.release()
        raise
    interrupted = store.mark_interrupted()
    if interrupted:
        log.warning("%d job(s) were running when the service last stopped: marked interrupted", interrupted)
    options = Options(Backbones(models_dir))
    inspector = Inspector(store, storage_dir, max_pixels=max_pixels, options=options)
    roots = DataRoots(list(data_roots))
    library = ModelLibrary(
        store,
        storage_dir,
        roots,
        max_pixels=max_pixels,
        max_models=max_models,
        max_folder_images=max_folder_images,
        cache_size=model_cache,
        options=options,
    )
    runner = JobRunner(store, storage_dir, roots, library)
    pool = ThreadPoolExecutor(max_workers=max(1, detect_workers), thread_name_prefix="genad-detect")
    limits = Limits(max_upload_mb=max_upload_mb, max_files=max_files, max_pixels=max_pixels)
    image_detectors = ImageDetectors()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        image_detectors.start()  # at start-up, so the first detection is warm too
        try:
            yield
        finally:
            runner.shutdown()
            pool.shutdown(wait=False, cancel_futures=True)
            storage_lock.release()  # after the last job was marked: the next service may start

    app = _fastapi(
        title="genad inspection service",
        version=genad.__version__,
        description="Find and explain anomalies in images. The web page is at `/`."
        + (" Every /v1 route needs `Authorization: Bearer <token>`." if token else ""),
        lifespan=lifespan,
        default_response_class=FiniteJSONResponse,
    )
    app.state.store, app.state.inspector, app.state.jobs = store, inspector, runner
    app.state.limits, app.state.detect_pool, app.state.storage_dir = limits, pool, storage_dir
    app.state.image_detectors, app.state.models = image_detectors, library
    app.state.storage_lock, app.state.auth = storage_lock, token is not None
    # outermost last: the token is checked before the body is read at all
    app.add_middleware(BodyLimit, max_bytes=limits.body_bytes, max_other_bytes=MAX_JSON_BODY)
    if token is not None:
        app.add_middleware(BearerAuth, token=token)
    app.add_middleware(KeepConnection)
    _error_handlers(app, options.backbones)

    static.mount(app)
    app.include_router(static.router)
    # declares the bearer scheme in the OpenAPI docs (their Authorize button); BearerAuth checks it
    bearer = [Depends(HTTPBearer(auto_error=False))] if token is not None else []
    for module in (detect, history, jobs, models):
        app.include_router(module.router, dependencies=bearer)
    return app


def _error_handlers(app: FastAPI, backbones: Backbones) -> None:
    """Every error as one-line JSON: {"detail": "..."}."""

    @app.exception_handler(GenadError)
    async def _genad_error(_: Request, e: GenadError) -> JSONResponse:
        code = next((c for t, c in _STATUS_OF if isinstance(e, t)), 400)
        return JSONResponse({"detail": one_line(backbones.public(str(e)))}, status_code=code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        parts = []
        for err in e.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
            if err.get("type") == "json_invalid":
                parts.append(
                    "the body is not valid JSON (or nested too deep): send an object such as "
                    '{"kind": "batch", "data_dir": "line3"}'
                )
                continue
            if err.get("type") == "extra_forbidden":  # the only body model is a job's
                fields = ", ".join(jobs.JobIn.model_fields)
                parts.append(f"unknown field {where[:64]!r}: a job takes {fields}")
                continue
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return JSONResponse({"detail": one_line("; ".join(parts) or "invalid request")}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> Response:
        if e.status_code < 200 or e.status_code in (204, 304):  # no body allowed
            return Response(status_code=e.status_code, headers=e.headers)
        detail = str(e.detail)
        if detail == "There was an error parsing the body":
            detail = "the body could not be read: send JSON (an object, not nested deeply) or a multipart form"
        return JSONResponse({"detail": one_line(detail)}, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def _crash(_: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse({"detail": f"internal error ({type(e).__name__}); see the service log"}, status_code=500)


def one_line(text: str, limit: int = 1000) -> str:
    """A message as one line of at most `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class FiniteJSONResponse(JSONResponse):
    """JSON whose non-finite numbers (a detector's NaN score) are written as null: plain
    JSONResponse would fail on them (allow_nan=False) and the answer would be a 500."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except ValueError:
            return super().render(_finite(content))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _fastapi(**kw: Any) -> FastAPI:
    """FastAPI whose /docs and /redoc pages load Swagger UI and ReDoc from the package, not
    from a CDN: inspection stations are often offline. Plain FastAPI if it is not installed."""
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:
        return FastAPI(**kw)
    return FastAPIOffline(**kw)


class KeepConnection:
    """The last safety net (the outermost of the service's middleware): an exception no
    handler took becomes a JSON 500 here, and is not raised on. Starlette's own last handler re-raises it after answering, and uvicorn then
    closes the connection (the client's next request on it is reset)."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(msg: dict) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, receive, tracked)
        except Exception as e:
            if started:
                raise  # half an answer is out: only closing the connection can tell the client
            log.exception("unhandled error")
            body = json.dumps({"detail": f"internal error ({type(e).__name__}); see the service log"}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse request bodies over `max_bytes` (multipart uploads) or `max_other_bytes` (any
    other body: JSON, a form of fields) with 413 before they are spooled to disk or parsed:
    checks Content-Length, and counts bytes for chunked uploads that do not send one."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int, max_other_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_other_bytes = max_bytes if max_other_bytes is None else min(max_bytes, max_other_bytes)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        multipart = headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data")
        max_bytes = self.max_bytes if multipart else self.max_other_bytes
        limit = f"{max_bytes / MB:.1f} MB" if max_bytes >= MB else f"{max_bytes // 1024} kB"
        advice = "send fewer or smaller files" if multipart else "send a smaller body"
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > max_bytes:
            await _send_413(send, f"request body is over {limit}: {advice}")
            return
        seen = 0
        too_big = False

        async def counted() -> dict:
            nonlocal seen, too_big
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > max_bytes:
                    too_big = True
                    return {"type": "http.disconnect"}  # stops the parser without reading more
            return msg

        started = False

        async def guarded_send(msg: dict) -> None:
            nonlocal started
            if too_big:
                if not started:
                    started = True
                    await _send_413(send, f"request body is over {limit}: {advice}")
                return
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counted, guarded_send)
        except Exception:
            if not too_big:
                raise
            if not started:
                await _send_413(send, f"request body is over {limit}: {advice}")


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
