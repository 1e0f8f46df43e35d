"""The web page: `/` (index.html), its files under `/static`, and `/healthz`. Public even when
the service has a token (genad.service.auth): none of them holds data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from genad.service.routes.deps import StoreDep

STATIC = Path(__file__).parent.parent / "static"

router = APIRouter()


def mount(app: FastAPI) -> None:
    """Serve the page's files under /static (a mount: routers cannot carry one)."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/healthz", tags=["service"])
async def healthz(store: StoreDep, request: Request) -> dict[str, Any]:
    """Public even when the service has a token: then it says only that the service is up."""
    if getattr(request.app.state, "auth", False):
        return {"status": "ok"}
    return {"status": "ok", "inspections": store.count_inspections()}
