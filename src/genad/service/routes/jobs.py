"""The /v1/jobs routes: start an evaluation or a batch detection on a folder under a data root,
follow it, read its results and report, cancel or resume it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from genad import registry
from genad.service.jobs import JobRequest
from genad.service.routes.deps import JobsDep, PoolDep, StorageDirDep, StoreDep, off_loop
from genad.service.store import Job, Store, is_id

router = APIRouter()


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
    shots: int = Field(0, ge=0, description="evaluate: normal references drawn from train/good (0 = zero-shot)")
    seed: int = 0
    limit: int | None = Field(None, ge=1, description="score at most this many inputs")
    normal_dir: str | None = Field(None, description="batch: folder of normal references (few-shot)")
    model: str | None = Field(
        None,
        description="id of a stored model (POST /v1/models) to score with, no refit: "
        "no detector, params, normal_dir or shots with it",
    )


@router.post("/v1/jobs", tags=["jobs"], status_code=202)
async def start_job(body: JobIn, jobs: JobsDep, pool: PoolDep) -> dict[str, Any]:
    """Start an evaluation (MVTec-style folder: metrics) or a batch detection job on a
    folder under an allowed data root. Poll GET /v1/jobs/{id}."""
    req = body.model_dump()
    if body.model is not None and "detector" not in body.model_fields_set:
        req["detector"] = None  # the model's own (JobRunner.validate fills it in)
    job = await off_loop(pool, jobs.submit, JobRequest(**req))
    return job_json(job)


@router.get("/v1/jobs", tags=["jobs"])
async def list_jobs(store: StoreDep, limit: Annotated[int, Query(ge=1, le=500)] = 20) -> dict[str, Any]:
    return {"jobs": [job_json(j) for j in store.list_jobs(limit)]}


@router.get("/v1/jobs/{job_id}", tags=["jobs"])
async def get_job(job_id: str, store: StoreDep) -> dict[str, Any]:
    """Status (queued, running, done, failed, interrupted, cancelled), progress, summary."""
    return job_json(_job(store, job_id))


@router.get("/v1/jobs/{job_id}/results", tags=["jobs"])
async def job_results(
    job_id: str,
    store: StoreDep,
    jobs: JobsDep,
    limit: Annotated[int, Query(ge=1, le=5000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """Per-input results of a batch job, in input order."""
    _job(store, job_id)
    return {"results": jobs.results(job_id, limit, offset)}


@router.post("/v1/jobs/{job_id}/cancel", tags=["jobs"])
async def cancel_job(job_id: str, store: StoreDep, jobs: JobsDep) -> dict[str, Any]:
    _job(store, job_id)
    return job_json(jobs.cancel(job_id))


@router.post("/v1/jobs/{job_id}/resume", tags=["jobs"])
async def resume_job(job_id: str, store: StoreDep, jobs: JobsDep, pool: PoolDep) -> dict[str, Any]:
    """Run an interrupted, failed or cancelled job again; an evaluation keeps the samples
    it had finished."""
    _job(store, job_id)
    return job_json(await off_loop(pool, jobs.resume, job_id))


@router.get("/v1/jobs/{job_id}/report/{path:path}", tags=["jobs"], include_in_schema=False)
async def job_report(job_id: str, path: str, store: StoreDep, storage_dir: StorageDirDep) -> FileResponse:
    _job(store, job_id)
    root = (storage_dir / "jobs" / job_id / "report").resolve()
    target = (root / path).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise HTTPException(404, "no such report file")
    return FileResponse(target)


def _job(store: Store, job_id: str) -> Job:
    found = store.get_job(job_id) if is_id(job_id) else None
    if found is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return found


def job_json(job: Job) -> dict[str, Any]:
    """The public form of a job (also what GET /v1/jobs lists)."""
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
