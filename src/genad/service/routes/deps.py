"""What the routers share: the objects `create_app` keeps on `app.state`, as FastAPI
dependencies (`store: StoreDep` in a route's signature), and the way off the event loop.

    app.state.store         Store (SQLite)
    app.state.inspector     Inspector (one /v1/detect request)
    app.state.jobs          JobRunner
    app.state.models        ModelLibrary (stored models, and the few loaded in memory)
    app.state.limits        Limits (upload size, file count, pixels)
    app.state.detect_pool   the thread pool detections (and job starts) run in
    app.state.storage_dir   the storage folder, resolved
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request

from genad.service.inspector import Inspector
from genad.service.jobs import JobRunner
from genad.service.models import ModelLibrary
from genad.service.store import Store

MB = 1024 * 1024
#: the largest `offset` a list accepts (SQLite's integers stop at 2**63; no list is this long)
MAX_OFFSET = 1_000_000_000


@dataclass(frozen=True)
class Limits:
    """What one request may send."""

    max_upload_mb: float
    max_files: int
    max_pixels: int

    @property
    def per_file(self) -> int:
        """Bytes allowed per file."""
        return int(self.max_upload_mb * MB)

    @property
    def body_bytes(self) -> int:
        """Bytes allowed per request body: files x per-file cap, plus room for the form fields
        and multipart headers."""
        return self.per_file * self.max_files + 64 * 1024

    def as_json(self) -> dict[str, Any]:
        return {"max_upload_mb": self.max_upload_mb, "max_files": self.max_files, "max_pixels": self.max_pixels}


# async: a plain function would be run in a worker thread on every request
async def _store(request: Request) -> Store:
    return request.app.state.store


async def _inspector(request: Request) -> Inspector:
    return request.app.state.inspector


async def _jobs(request: Request) -> JobRunner:
    return request.app.state.jobs


async def _models(request: Request) -> ModelLibrary:
    return request.app.state.models


async def _limits(request: Request) -> Limits:
    return request.app.state.limits


async def _pool(request: Request) -> Executor:
    return request.app.state.detect_pool


async def _storage_dir(request: Request) -> Path:
    return request.app.state.storage_dir


StoreDep = Annotated[Store, Depends(_store)]
InspectorDep = Annotated[Inspector, Depends(_inspector)]
JobsDep = Annotated[JobRunner, Depends(_jobs)]
ModelsDep = Annotated[ModelLibrary, Depends(_models)]
LimitsDep = Annotated[Limits, Depends(_limits)]
PoolDep = Annotated[Executor, Depends(_pool)]
StorageDirDep = Annotated[Path, Depends(_storage_dir)]


async def off_loop(pool: Executor, fn: Callable[..., Any], *args: Any) -> Any:
    """Run fn(*args) in `pool`, so the event loop keeps serving meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
