"""Background jobs: an evaluation (genad.evaluate.run_benchmark) or a batch detection over a
folder, run one at a time in a worker thread. Both go through genad.run's loop into a run
folder under storage/jobs/<id>/run (results as they come, resumable); the store keeps each
job's status, progress and summary.

Progress: the job's total is known from its first phase on, before a long fit; `phase(job_id)`
says what a running job is doing now (fitting on references, extracting features, comparing
a zero-shot batch...), with counts. Cancel, and a shutdown of the service, stop a running
job at its next check: between results, and inside a long fit() or predict() at each step the
detector reports (the embedded engine: each image, each block of a zero-shot comparison), so
within seconds. A stopped job keeps its results and resumes with only the rest. The worker
is a daemon thread and a shutdown waits for it at most SHUTDOWN_WAIT seconds: a job stuck in
something that cannot be interrupted (a slow LMM request) never holds the server's exit.

A job may name a stored model (genad.service.models) instead of a detector: it then reads its
own copy of the model from the file and scores with it, never refitting.

Folders come only from the allow-list of data roots given at start-up: a request names a folder
relative to a root (or an absolute path inside one); anything that resolves outside, through
`..` or a symlink, is refused before the file system is asked whether it exists.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genad import registry
from genad.errors import GenadError
from genad.run import Phase, RunCancelled, RunFolder, pending, run_into
from genad.service.inspector import check_params
from genad.service.store import FINAL_STATES, Job, Store, new_id
from genad.types import jsonable

if TYPE_CHECKING:
    from genad.detector import Detector
    from genad.service.models import ModelLibrary

JOB_KINDS = ("evaluate", "batch")
#: the longest folder name a request may give
MAX_PATH_CHARS = 4096
#: seconds a shutdown waits for the running job to stop at its next check
SHUTDOWN_WAIT = 10.0
#: seconds between progress writes to the store (one per result would make SQLite the bottleneck)
PROGRESS_EVERY = 0.25

log = logging.getLogger("genad.service.jobs")


class AccessDenied(GenadError):
    """A folder outside the allowed data roots (HTTP 403)."""


class NotFound(GenadError):
    """No such job, inspection or folder (HTTP 404)."""


@dataclass
class JobRequest:
    """What POST /v1/jobs accepts (the JSON body)."""

    kind: str
    data_dir: str
    detector: str | None = registry.DEFAULT_DETECTOR  # None with a model: the model's
    params: dict[str, Any] = field(default_factory=dict)
    shots: int = 0
    seed: int = 0
    limit: int | None = None
    normal_dir: str | None = None  # batch only: folder of normal references for few-shot
    model: str | None = None  # a stored model's id: score with it (no detector, params, refs)


class DataRoots:
    """The allow-list of folders that jobs may read."""

    def __init__(self, roots: Sequence[Path]) -> None:
        self.roots = [Path(r).expanduser().resolve() for r in roots]

    def resolve(self, value: str, what: str = "data_dir") -> Path:
        if not self.roots:
            raise AccessDenied(
                f"this service has no data roots, so it reads no folders: restart it with "
                f"--data-root DIR to allow {what} under DIR"
            )
        if not value or "\x00" in value or len(value) > MAX_PATH_CHARS:
            raise GenadError(f"{what} is empty or not a valid path")
        p = Path(value)  # taken literally: a request's `~` is not the server's home folder
        candidates = [p] if p.is_absolute() else [root / p for root in self.roots]
        inside: list[Path] = []
        for c in candidates:
            try:
                r = c.resolve()  # follows symlinks and `..` before the containment check
            except (OSError, RuntimeError) as e:  # a symlink loop, a name the file system refuses
                raise GenadError(f"{what} {value[:200]!r} is not a valid path ({type(e).__name__})") from e
            if any(r == root or r.is_relative_to(root) for root in self.roots):
                inside.append(r)
        if not inside:
            raise AccessDenied(
                f"{what} {value[:200]!r} is outside the allowed data roots: give a folder under "
                f"{', '.join(r.name or str(r) for r in self.roots)} (the service's --data-root)"
            )
        for r in inside:
            try:
                if r.exists():
                    return r
            except OSError:  # a name too long for the file system: it does not exist
                continue
        raise NotFound(f"{what} {value[:200]!r} does not exist under the allowed data roots")


class JobRunner:
    """Runs jobs one at a time (they are CPU-heavy) and records their progress."""

    def __init__(self, store: Store, storage_dir: Path, roots: DataRoots, models: ModelLibrary | None = None) -> None:
        self.store = store
        self.models = models
        self.jobs_dir = Path(storage_dir) / "jobs"
        self.roots = roots
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._closed = False
        self._stop: dict[str, str] = {}  # job id -> status to end with ("cancelled"/"interrupted")
        self._phases: dict[str, Phase] = {}  # job id -> what the running job is doing now
        self._lock = threading.Lock()

    # -- requests ----------------------------------------------------------------------------
    def validate(self, req: JobRequest) -> tuple[Path, Path | None]:
        if req.kind not in JOB_KINDS:
            raise GenadError(f"unknown job kind {req.kind!r}: use one of {', '.join(JOB_KINDS)}")
        check_params(req.params)
        if req.shots < 0 or (req.limit is not None and req.limit < 1):
            raise GenadError("shots must be >= 0 and limit >= 1")
        data_dir = self.roots.resolve(req.data_dir, "data_dir")
        normal_dir = None
        if req.normal_dir:
            if req.kind != "batch":
                raise GenadError("normal_dir is for batch jobs; evaluation jobs take `shots`")
            normal_dir = self.roots.resolve(req.normal_dir, "normal_dir")
        if req.detector is not None and not 0 < len(req.detector) <= 64:
            raise GenadError("detector must be a detector's name (GET /v1/detectors lists them)")
        if req.model is not None:
            self._check_model(req)
        else:
            # last: the name check imports the detector's module (torch for "embedded")
            registry.get(req.detector or registry.DEFAULT_DETECTOR)  # unknown -> GenadError listing the names
        return data_dir, normal_dir

    def _check_model(self, req: JobRequest) -> None:
        """A job that names a stored model: it exists (404), its file reads (409), and no
        detector, options or references of the request's own come with it (400)."""
        if self.models is None:
            raise GenadError("this service keeps no stored models")
        rec = self.models.get(req.model or "")
        if req.detector is not None and req.detector != rec.detector:
            raise GenadError(f"model {rec.name!r} is a {rec.detector!r} model: leave detector out with a model")
        if req.params:
            raise GenadError(f"model {rec.name!r} keeps the options it was created with: leave params out")
        if req.normal_dir or req.shots:
            raise GenadError(
                f"model {rec.name!r} was fitted on its own references: leave normal_dir and shots out with a model"
            )
        error = self.models.file_error(rec)
        if error is not None:
            from genad.service.models import ModelUnusable

            raise ModelUnusable(error)
        req.detector = rec.detector

    def submit(self, req: JobRequest) -> Job:
        data_dir, normal_dir = self.validate(req)
        job = Job(id=new_id(), kind=req.kind, status="queued", created=time.time(), request=req.__dict__.copy())
        self.store.add_job(job)
        self._enqueue(job.id, req, data_dir, normal_dir, False)
        return job

    def resume(self, job_id: str) -> Job:
        """Start an interrupted, failed or cancelled evaluation again, keeping finished samples."""
        job = self.get(job_id)
        if job.status not in ("interrupted", "failed", "cancelled"):
            raise GenadError(
                f"job {job_id} is {job.status}; only an interrupted, failed or cancelled job can be resumed"
            )
        req = JobRequest(**job.request)
        data_dir, normal_dir = self.validate(req)
        self.store.update_job(job_id, status="queued", error=None, finished=None)
        self._enqueue(job_id, req, data_dir, normal_dir, True)
        return self.get(job_id)

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.status in FINAL_STATES:
            return job
        with self._lock:
            self._stop[job_id] = "cancelled"
        if job.status == "queued":  # not started: it will see the flag when it starts
            self.store.update_job(job_id, status="cancelled", finished=time.time())
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        job = self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job

    def phase(self, job_id: str) -> dict[str, Any] | None:
        """What a running job is doing now, or None: {"phase": "fitting" | "scoring", "step":
        e.g. "features" | "comparing" | None, "done", "total" (of that step), "text":
        "fitting: features 120/476"}."""
        with self._lock:
            p = self._phases.get(job_id)
        if p is None:
            return None
        return {"phase": p.name, "step": p.step, "done": p.done, "total": p.total, "text": str(p)}

    def shutdown(self, wait: float = SHUTDOWN_WAIT) -> None:
        """Stop the running job at its next check (within seconds) and the queued ones before
        they start; all stay resumable. Waits at most `wait` seconds for the worker."""
        with self._lock:
            self._closed = True
            for job in self.store.list_jobs(limit=1000):
                if job.status in ("queued", "running"):
                    self._stop.setdefault(job.id, "interrupted")
            worker = self._worker
        self._queue.put(None)
        if worker is not None:
            worker.join(wait)
            if worker.is_alive():
                log.warning("a job did not stop within %.0f s of the shutdown: left to end with the process", wait)
        self.store.mark_interrupted()

    def _enqueue(self, *work: Any) -> None:
        with self._lock:
            if self._closed:
                raise GenadError("the service is shutting down: submit the job again after it restarts")
            self._queue.put(work)
            if self._worker is None:
                # a daemon thread: a job that cannot stop in time never holds the process's exit
                self._worker = threading.Thread(target=self._work, name="genad-job", daemon=True)
                self._worker.start()

    def _work(self) -> None:
        while True:
            work = self._queue.get()
            if work is None:
                return
            self._run(*work)

    def run_folder(self, job_id: str) -> RunFolder:
        return RunFolder(self.jobs_dir / job_id / "run")

    def results(self, job_id: str, limit: int, offset: int) -> list[dict[str, Any]]:
        """A job's per-input results in input order, as its run folder holds them."""
        self.get(job_id)
        out = []
        for rec in self.run_folder(job_id).ordered()[offset : offset + limit]:
            d = {k: v for k, v in rec.items() if k not in ("id", "map")}
            out.append({"sample_id": rec["id"], **d})
        return out

    # -- work --------------------------------------------------------------------------------
    def _stop_status(self, job_id: str) -> str | None:
        with self._lock:
            return self._stop.get(job_id)

    def _check(self, job_id: str) -> None:
        status = self._stop_status(job_id)
        if status:
            raise RunCancelled(status)

    def _run(self, job_id: str, req: JobRequest, data_dir: Path, normal_dir: Path | None, resume: bool) -> None:
        try:
            self._check(job_id)
            self.store.update_job(job_id, status="running", started=time.time(), error=None)
            if req.kind == "evaluate":
                summary = self._evaluate(job_id, req, data_dir, resume)
            else:
                summary = self._batch(job_id, req, data_dir, normal_dir, resume)
            self.store.update_job(job_id, status="done", finished=time.time(), summary=summary)
        except RunCancelled as stop:
            self.store.update_job(job_id, status=stop.status, finished=time.time(), error=f"job {stop.status}")
        except GenadError as e:
            self.store.update_job(job_id, status="failed", finished=time.time(), error=str(e))
        except Exception as e:  # a bug or a bad file: record it, keep the worker alive
            self.store.update_job(job_id, status="failed", finished=time.time(), error=f"{type(e).__name__}: {e}")
        finally:
            with self._lock:
                self._stop.pop(job_id, None)
                self._phases.pop(job_id, None)

    def _progress(self, job_id: str):
        last = [0.0]

        def on_progress(done: int, total: int) -> None:
            now = time.monotonic()
            if done >= total or now - last[0] >= PROGRESS_EVERY:
                last[0] = now
                self.store.update_job(job_id, done=int(done), total=int(total))

        return on_progress

    def _on_phase(self, job_id: str):
        """Keeps the running job's phase for `phase()`, and writes the job's size to the store
        from the first phase on (before a long fit), so that its progress is never blank."""
        known = [False]

        def on_phase(p: Phase) -> None:
            with self._lock:
                self._phases[job_id] = p
            if not known[0] and p.samples is not None:
                known[0] = True
                self.store.update_job(job_id, done=int(p.scored or 0), total=int(p.samples))

        return on_phase

    def _model(self, req: JobRequest) -> Detector | None:
        """The job's own copy of its stored model, or None when it names a detector."""
        if req.model is None:
            return None
        if self.models is None:
            raise GenadError("this service keeps no stored models")
        return self.models.fresh(req.model)

    def _model_summary(self, req: JobRequest) -> dict[str, Any]:
        if req.model is None or self.models is None:
            return {}
        rec = self.models.store.get_model(req.model)
        return {"model": {"id": req.model, "name": None if rec is None else rec.name}}

    def _evaluate(self, job_id: str, req: JobRequest, data_dir: Path, resume: bool) -> dict[str, Any]:
        from genad.evaluate import run_benchmark

        job_dir = self.jobs_dir / job_id
        job_dir.mkdir(parents=True, exist_ok=True)
        model = self._model(req)
        run = run_benchmark(
            data_dir,
            detector=model if model is not None else (req.detector or registry.DEFAULT_DETECTOR),
            detector_params=None if model is not None else dict(req.params),
            shots=req.shots,
            seed=req.seed,
            limit=req.limit,
            run_dir=job_dir / "run",
            resume=resume,
            progress=False,
            on_progress=self._progress(job_id),
            on_phase=self._on_phase(job_id),
            stop=lambda: self._stop_status(job_id),
        )
        summary: dict[str, Any] = jsonable(dict(run.summary))
        summary.pop("run_dir", None)  # a server path: the job id already names the run
        summary.update(self._model_summary(req))
        try:  # the HTML report is a convenience: a failure there must not fail the job
            from genad.report.eval_report import write_eval_report

            write_eval_report(job_dir / "report", run)
            summary["report_url"] = f"/v1/jobs/{job_id}/report/index.html"
        except Exception as e:
            summary["report_error"] = f"{type(e).__name__}: {e}"
        return summary

    def _batch(
        self, job_id: str, req: JobRequest, data_dir: Path, normal_dir: Path | None, resume: bool
    ) -> dict[str, Any]:
        from genad.evaluate import public_params
        from genad.io import load_inputs

        t0 = time.perf_counter()
        samples = load_inputs([data_dir])
        if req.limit:
            samples = samples[: req.limit]
        if not samples:
            raise GenadError(f"no readable inputs in data_dir {req.data_dir!r}")
        self.store.update_job(job_id, total=len(samples))  # known at once, before the detector loads
        model = self._model(req)
        det = model if model is not None else registry.create(req.detector or registry.DEFAULT_DETECTOR, **req.params)
        refs = load_inputs([normal_dir]) if normal_dir is not None else []
        if not refs and not det.zero_shot and not det.fitted_:
            raise GenadError(f"detector {det.name!r} needs normal references: give normal_dir")
        folder = self.run_folder(job_id)
        config = {
            "data_dir": str(data_dir),
            "normal_dir": None if normal_dir is None else str(normal_dir),
            "detector": det.name,
            "params": public_params(det.params),
            "limit": req.limit,
            "model": req.model,
        }
        done = folder.start(
            config,
            resume=resume,
            overwrite=not resume,
            must_match=("data_dir", "normal_dir", "detector", "params", "limit", "model"),
        )
        on_progress = self._progress(job_id)
        on_progress(len(samples) - len(pending(samples, done)), len(samples))
        records = run_into(
            folder,
            det,
            samples,
            done,
            refs=refs,
            on_progress=on_progress,
            on_phase=self._on_phase(job_id),
            stop=lambda: self._stop_status(job_id),
        )
        scored = sorted(((float(r["score"]), r["id"]) for r in records if r.get("score") is not None), reverse=True)
        return {
            "n_samples": len(samples),
            "n_anomalous": sum(1 for r in records if r.get("decision")),
            "n_errors": sum(1 for r in records if r.get("error")),
            "seconds": round(time.perf_counter() - t0, 3),
            "top": [{"sample_id": sid, "score": v} for v, sid in scored[:10]],
            "results_url": f"/v1/jobs/{job_id}/results",
            **self._model_summary(req),
        }
