"""The /v1/models routes: fit a detector once on normal images and keep it (a model file under
the storage folder), list, show and delete stored models. /v1/detect and batch jobs name one
with `model` (genad.service.models)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, Query, UploadFile

from genad import registry
from genad.service.models import model_json
from genad.service.routes.deps import MAX_OFFSET, LimitsDep, ModelsDep, PoolDep, off_loop
from genad.service.routes.detect import parse_params, read_upload, real_files

router = APIRouter()


@router.post("/v1/models", tags=["models"], status_code=201)
async def create_model(
    models: ModelsDep,
    limits: LimitsDep,
    pool: PoolDep,
    name: Annotated[str, Form(description="1-64 characters: letters, digits, space . _ - + ( ); unique")],
    detector: Annotated[str, Form(description="an image detector (GET /v1/detectors)")] = registry.DEFAULT_DETECTOR,
    params: Annotated[str, Form(description='detector options as a JSON object, e.g. {"threshold": 0.5}')] = "{}",
    normals: Annotated[
        list[UploadFile] | None, File(description="defect-free reference images (or give folder)")
    ] = None,
    folder: Annotated[
        str | None, Form(description="or: a folder of reference images under one of the service's --data-root")
    ] = None,
) -> dict[str, Any]:
    """Fit `detector` once on normal references (uploaded `normals`, or the images of a
    `folder` under a data root) and keep it as a model file. Detect with it by passing
    `model=ID` to POST /v1/detect (or a batch job): it is never refitted."""
    files = real_files(normals)
    opts = parse_params(params)
    where = (folder or "").strip() or None
    # the name, the detector, every option and the folder, before a file is read
    await asyncio.to_thread(models.check_request, name, detector, opts, where)
    if len(files) > limits.max_files:
        raise HTTPException(413, f"too many files ({len(files)}): at most {limits.max_files} per request")
    uploads = [await read_upload(f, limits) for f in files]
    made = await off_loop(pool, models.create, name, detector, opts, uploads, where)
    return {**model_json(made["record"], loaded=False), "timings": made["timings"]}


@router.get("/v1/models", tags=["models"])
async def list_models(
    models: ModelsDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    """Stored models, newest first; `loaded`: the ids kept in memory now (at most `cache_size`)."""
    in_memory = set(models.in_memory())
    return {
        "total": models.store.count_models(),
        "models": [model_json(m, m.id in in_memory) for m in models.store.list_models(limit, offset)],
        "loaded": sorted(in_memory),
        "cache_size": models.cache_size,
        "max_models": models.max_models,
    }


@router.get("/v1/models/{model_id}", tags=["models"])
async def get_model(model_id: str, models: ModelsDep) -> dict[str, Any]:
    """One stored model; `file_error` says why its file cannot be read (null when it can)."""
    rec = models.get(model_id)
    error = await asyncio.to_thread(models.file_error, rec)  # not behind a long detection
    return {**model_json(rec, rec.id in models.in_memory()), "file_error": error}


@router.delete("/v1/models/{model_id}", tags=["models"])
async def delete_model(model_id: str, models: ModelsDep) -> dict[str, Any]:
    """Remove a stored model and its file. Inspections it made keep its id and name."""
    return {"deleted": models.delete(model_id).id}
