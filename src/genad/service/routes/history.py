"""The /v1/inspections routes: the history of detections, their pictures, deleting one."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse

from genad.service.inspector import ASSETS, inspection_json
from genad.service.routes.deps import MAX_OFFSET, InspectorDep, StoreDep
from genad.service.store import Inspection, Store, is_id

router = APIRouter()


@router.get("/v1/inspections", tags=["history"])
async def inspections(
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    """Recent inspections, newest first."""
    return {
        "total": store.count_inspections(),
        "inspections": [inspection_json(i) for i in store.list_inspections(limit, offset)],
    }


@router.get("/v1/inspections/{inspection_id}", tags=["history"])
async def inspection(inspection_id: str, store: StoreDep) -> dict[str, Any]:
    return inspection_json(_inspection(store, inspection_id))


@router.get("/v1/inspections/{inspection_id}/{asset}", tags=["history"], response_class=FileResponse)
async def inspection_asset(
    inspection_id: str,
    asset: Literal["image.png", "heatmap.png", "overlay.png", "thumb.jpg"],
    store: StoreDep,
    inspector: InspectorDep,
) -> FileResponse:
    """The uploaded image (lossless PNG), its heatmap layer, the blended overlay with
    numbered region boxes, or a small thumbnail for lists."""
    _inspection(store, inspection_id)
    path = inspector.asset_path(inspection_id, asset)
    if not path.is_file():
        raise HTTPException(404, f"inspection {inspection_id} has no {asset} (the detector gave no map)")
    media = "image/jpeg" if asset.endswith(".jpg") else "image/png"
    # ids are never reused, so the pictures never change: let browsers keep them
    return FileResponse(path, media_type=media, headers={"Cache-Control": "max-age=86400, immutable"})


@router.delete("/v1/inspections/{inspection_id}", tags=["history"])
async def delete_inspection(inspection_id: str, store: StoreDep, inspector: InspectorDep) -> dict[str, Any]:
    _inspection(store, inspection_id)
    store.delete_inspection(inspection_id)
    for asset in ASSETS:
        inspector.asset_path(inspection_id, asset).unlink(missing_ok=True)
    folder = inspector.asset_path(inspection_id, "image.png").parent
    try:
        folder.rmdir()
    except OSError:  # gone already (two deletes at once), or not empty: nothing to answer about
        pass
    return {"deleted": inspection_id}


def _inspection(store: Store, inspection_id: str) -> Inspection:
    found = store.get_inspection(inspection_id) if is_id(inspection_id) else None
    if found is None:
        raise HTTPException(404, f"no inspection {inspection_id[:40]!r}: GET /v1/inspections lists them")
    return found
