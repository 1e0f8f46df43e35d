"""The /v1/jobs routes: start an evaluation or a batch detection on a folder under a data root,
follow it, read its results and report, cancel or resume it."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from genad import registry
from genad.service.inspector import Backbones, check_option_values
from genad.service.jobs import DataRoots, JobRequest, JobRunner
from genad.service.models import resolve_folder
from genad.service.routes.deps import MAX_OFFSET, InspectorDep, JobsDep, PoolDep, StorageDirDep, StoreDep, off_loop
from genad.service.store import Job, Store, is_id

router = APIRouter()


#: bounds of a job request's numbers (a request beyond them is refused with 422, before any work)
MAX_SHOTS = 10_000
MAX_SEED = 2**32 - 1
MAX_LIMIT = 10**9


class JobIn(BaseModel):
    """Body of POST /v1/jobs."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["evaluate", "batch"] = Field(
        description="evaluate: MVTec-style folder with labels; batch: score every input"
    )
    data_dir: str = Field(
        description="a folder under one of the service's --data-root folders (relative to it, or absolute)"
    )
    detector: str = registry.DEFAULT_DETECTOR
    params: dict[str, Any] = Field(default_factory=dict, description="detector options")
    shots: int = Field(
        0, ge=0, le=MAX_SHOTS, description="evaluate: normal references drawn from train/good (0 = zero-shot)"
    )
    seed: int = Field(0, ge=0, le=MAX_SEED)
    limit: int | None = Field(None, ge=1, le=MAX_LIMIT, description="score at most this many inputs")
    normal_dir: str | None = Field(None, description="batch: folder of normal references (few-shot)")
    model: str | None = Field(
        None,
        description="id of a stored model (POST /v1/models) to score with, no refit: "
        "no detector, params, normal_dir or shots with it",
    )


@router.post("/v1/jobs", tags=["jobs"], status_code=202)
async def start_job(body: JobIn, jobs: JobsDep, pool: PoolDep, inspector: InspectorDep) -> dict[str, Any]:
    """Start an evaluation (MVTec-style folder: metrics) or a batch detection job on a
    folder under an allowed data root. Poll GET /v1/jobs/{id}."""
    req = body.model_dump()
    check_option_values(body.params)
    if body.model is not None and "detector" not in body.model_fields_set:
        req["detector"] = None  # the model's own (JobRunner.validate fills it in)
    if body.model is None:
        # the detector and every option through its declaration, and the folders, before the job
        # is queued: a bad value is this request's 400, not a failed job later
        req["params"] = await asyncio.to_thread(inspector.options.check, body.detector, body.params, images=False)
    await asyncio.to_thread(_check_folders, jobs, body)
    job = await off_loop(pool, jobs.submit, JobRequest(**req))
    return job_json(job, inspector.options.backbones, jobs.roots, jobs.phase(job.id))


def _check_folders(jobs: JobRunner, body: JobIn) -> None:
    resolve_folder(jobs.roots, body.data_dir, "data_dir")
    if body.normal_dir:
        resolve_folder(jobs.roots, body.normal_dir, "normal_dir")


@router.get("/v1/jobs", tags=["jobs"])
async def list_jobs(
    store: StoreDep, inspector: InspectorDep, jobs: JobsDep, limit: Annotated[int, Query(ge=1, le=500)] = 20
) -> dict[str, Any]:
    return {
        "jobs": [job_json(j, inspector.options.backbones, jobs.roots, jobs.phase(j.id)) for j in store.list_jobs(limit)]
    }


@router.get("/v1/jobs/{job_id}", tags=["jobs"])
async def get_job(job_id: str, store: StoreDep, inspector: InspectorDep, jobs: JobsDep) -> dict[str, Any]:
    """Status (queued, running, done, failed, interrupted, cancelled), progress, summary."""
    return job_json(_job(store, job_id), inspector.options.backbones, jobs.roots, jobs.phase(job_id))


@router.get("/v1/jobs/{job_id}/results", tags=["jobs"])
async def job_results(
    job_id: str,
    store: StoreDep,
    jobs: JobsDep,
    limit: Annotated[int, Query(ge=1, le=5000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    """Per-input results of a batch job, in input order."""
    _job(store, job_id)
    return {"results": await asyncio.to_thread(jobs.results, job_id, limit, offset)}


@router.post("/v1/jobs/{job_id}/cancel", tags=["jobs"])
async def cancel_job(job_id: str, store: StoreDep, jobs: JobsDep, inspector: InspectorDep) -> dict[str, Any]:
    _job(store, job_id)
    return job_json(jobs.cancel(job_id), inspector.options.backbones, jobs.roots)


@router.post("/v1/jobs/{job_id}/resume", tags=["jobs"])
async def resume_job(
    job_id: str, store: StoreDep, jobs: JobsDep, pool: PoolDep, inspector: InspectorDep
) -> dict[str, Any]:
    """Run an interrupted, failed or cancelled job again; an evaluation keeps the samples
    it had finished."""
    _job(store, job_id)
    return job_json(await off_loop(pool, jobs.resume, job_id), inspector.options.backbones, jobs.roots)


@router.get("/v1/jobs/{job_id}/report/{path:path}", tags=["jobs"], include_in_schema=False)
async def job_report(job_id: str, path: str, store: StoreDep, storage_dir: StorageDirDep) -> FileResponse:
    _job(store, job_id)
    root = (storage_dir / "jobs" / job_id / "report").resolve()
    try:
        if len(path) > 512 or "\x00" in path:
            raise ValueError(path)
        target = (root / path).resolve()
        found = target.is_relative_to(root) and target.is_file()
    except (OSError, ValueError, RuntimeError):  # a name the file system refuses, a link loop
        found = False
    if not found:
        raise HTTPException(404, "no such report file")
    return FileResponse(target)


def _job(store: Store, job_id: str) -> Job:
    found = store.get_job(job_id) if is_id(job_id) else None
    if found is None:
        raise HTTPException(404, f"no job {job_id[:40]!r}: GET /v1/jobs lists them")
    return found


def job_json(
    job: Job,
    backbones: Backbones | None = None,
    roots: DataRoots | None = None,
    phase: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The public form of a job (also what GET /v1/jobs lists); `backbones` shows the server's
    ONNX files by their names (onnx:NAME), `roots` folders relative to their data root: never
    the server's paths. `phase`: what a running job is doing now (JobRunner.phase: fitting or
    scoring, its step and counts), shown under progress."""
    frac = None
    if job.total:
        frac = round(min(1.0, job.done / job.total), 4)
    elif job.status == "done":
        frac = 1.0
    out = {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "created": job.created,
        "started": job.started,
        "finished": job.finished,
        "progress": {"done": job.done, "total": job.total, "fraction": frac, "phase": phase},
        "request": job.request,
        "summary": job.summary,
        "error": None if job.error is None else _readable(job.error, roots),
        "url": f"/v1/jobs/{job.id}",
    }
    return out if backbones is None else backbones.public(out)


def _readable(error: str, roots: DataRoots | None) -> str:
    """A job's error in the API's terms: folders relative to their data root, no command-line flags."""
    for root in roots.roots if roots is not None else ():
        error = error.replace(str(root) + "/", "").replace(str(root), root.name or "the data root")
    return error.replace(
        "give normal references (--normal DIR) for few-shot, or call fit() first",
        "give the job normal references (normal_dir for a batch, shots for an evaluation) or a stored model",
    ).replace("check the folder, or pass --modality", "check the folder")
