"""Evaluation and batch jobs of the service: allow-listed folders, progress, restarts."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from genad import registry
from genad.detector import Capabilities, Detector
from genad.engines.progress import step
from genad.service.app import create_app
from genad.service.store import Job, Store
from genad.types import Result
from service_helpers import make_mvtec, texture

METRIC_KEYS = {"image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "aupro", "n_images"}


def wait(c: TestClient, job_id: str, timeout: float = 60.0) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        job = c.get(f"/v1/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s")


@pytest.fixture()
def roots(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    make_mvtec(data / "tiles")
    outside = tmp_path / "outside"
    make_mvtec(outside / "tiles")
    return data, outside


def test_evaluation_job_runs_and_survives_restart(tmp_path: Path, roots: tuple[Path, Path]) -> None:
    data, _ = roots
    storage = tmp_path / "storage"
    with TestClient(create_app(storage, data_roots=[data])) as c:
        r = c.post("/v1/jobs", json={"kind": "evaluate", "data_dir": "tiles", "detector": "baseline", "shots": 2})
        assert r.status_code == 202, r.text
        job = wait(c, r.json()["id"])
        assert job["status"] == "done", job
        assert job["progress"] == {"done": 6, "total": 6, "fraction": 1.0, "phase": None}
        s = job["summary"]
        assert METRIC_KEYS <= set(s)
        assert s["n_images"] == 6
        assert s["image_auroc"] == pytest.approx(1.0)  # a dark square on a flat texture
        assert "run_dir" not in s  # no server paths in answers
        report = c.get(s["report_url"])
        assert report.status_code == 200 and "<html" in report.text.lower()
        assert c.get(f"/v1/jobs/{job['id']}/report/..%2F..%2Fgenad.sqlite3").status_code == 404
        listed = c.get("/v1/jobs").json()["jobs"]
        assert [j["id"] for j in listed] == [job["id"]]
    with TestClient(create_app(storage, data_roots=[data])) as c2:
        again = c2.get(f"/v1/jobs/{job['id']}").json()
        assert again["status"] == "done" and again["summary"] == job["summary"]


def test_a_job_running_at_shutdown_is_marked_interrupted_and_can_resume(
    tmp_path: Path, roots: tuple[Path, Path]
) -> None:
    data, _ = roots
    storage = tmp_path / "storage"
    # what a crashed process leaves: a row that says "running"
    store = Store(storage / "genad.sqlite3")
    req = {
        "kind": "evaluate",
        "data_dir": "tiles",
        "detector": "baseline",
        "params": {},
        "shots": 2,
        "seed": 0,
        "limit": None,
        "normal_dir": None,
    }
    store.add_job(Job(id="a" * 32, kind="evaluate", status="queued", created=time.time(), request=req))
    store.update_job("a" * 32, status="running", started=time.time(), done=3, total=6)
    store.close()
    with TestClient(create_app(storage, data_roots=[data])) as c:
        job = c.get("/v1/jobs/" + "a" * 32).json()
        assert job["status"] == "interrupted"
        assert job["error"].endswith(f"POST /v1/jobs/{'a' * 32}/resume")
        assert c.post("/v1/jobs/" + "a" * 32 + "/resume").status_code == 200
        job = wait(c, "a" * 32)
        assert job["status"] == "done" and job["error"] is None
        assert job["summary"]["image_auroc"] == pytest.approx(1.0)
        r = c.post("/v1/jobs/" + "a" * 32 + "/resume")
        assert r.status_code == 400 and "done" in r.json()["detail"]


def test_batch_job_scores_every_file(tmp_path: Path, roots: tuple[Path, Path]) -> None:
    data, _ = roots
    batch = data / "line3"
    batch.mkdir()
    for i in range(5):
        Image.fromarray(texture(400 + i, defect=(i == 3))).save(batch / f"part{i}.png")
    with TestClient(create_app(tmp_path / "storage", data_roots=[data])) as c:
        r = c.post(
            "/v1/jobs",
            json={"kind": "batch", "data_dir": str(batch), "detector": "baseline", "normal_dir": "tiles/train/good"},
        )
        assert r.status_code == 202, r.text
        job = wait(c, r.json()["id"])
        assert job["status"] == "done", job
        assert job["summary"]["n_samples"] == 5 and job["summary"]["n_errors"] == 0
        assert "part3" in job["summary"]["top"][0]["sample_id"]
        results = c.get(f"/v1/jobs/{job['id']}/results").json()["results"]
        assert len(results) == 5 and all(x["score"] is not None for x in results)
        assert c.get(f"/v1/jobs/{job['id']}/results", params={"limit": 2, "offset": 4}).json()["results"] == results[4:]


def test_folders_outside_the_allow_list_are_refused(tmp_path: Path, roots: tuple[Path, Path]) -> None:
    data, outside = roots
    os.symlink(outside, data / "link")
    with TestClient(create_app(tmp_path / "storage", data_roots=[data])) as c:
        # outside the roots (whether it exists or not) and missing inside them: one answer
        for bad in (str(outside / "tiles"), "../outside/tiles", "link/tiles", "/etc", "nothing-here"):
            r = c.post("/v1/jobs", json={"kind": "evaluate", "data_dir": bad, "detector": "baseline"})
            assert r.status_code == 404, (bad, r.text)
            assert "not found under the service's data roots" in r.json()["detail"]
        r = c.post("/v1/jobs", json={"kind": "batch", "data_dir": "tiles", "normal_dir": "../outside"})
        assert r.status_code == 404 and "normal_dir" in r.json()["detail"]
        r = c.post("/v1/jobs", json={"kind": "evaluate", "data_dir": "tiles", "detector": "no-such"})
        assert r.status_code == 400 and "baseline" in r.json()["detail"]
        r = c.post("/v1/jobs", json={"kind": "evaluate", "data_dir": "tiles", "rm": "-rf"})
        assert r.status_code == 422 and "rm" in r.json()["detail"]
        assert c.get("/v1/jobs").json()["jobs"] == []
    with TestClient(create_app(tmp_path / "storage2")) as c:
        r = c.post("/v1/jobs", json={"kind": "evaluate", "data_dir": str(data / "tiles")})
        assert r.status_code == 403 and "--data-root" in r.json()["detail"]


def test_a_failing_job_records_its_error(tmp_path: Path, roots: tuple[Path, Path]) -> None:
    data, _ = roots
    (data / "empty").mkdir()
    with TestClient(create_app(tmp_path / "storage", data_roots=[data])) as c:
        r = c.post("/v1/jobs", json={"kind": "evaluate", "data_dir": "empty", "detector": "baseline"})
        job = wait(c, r.json()["id"])
        assert job["status"] == "failed" and job["error"]
        assert c.get("/v1/jobs/" + "f" * 32).status_code == 404


class _SlowOneByOne(Detector):
    """0.3 s per image, one image per predict(): a job long enough to stop half-way."""

    zero_shot = True
    chunk_size = 1

    def predict(self, samples):  # type: ignore[no-untyped-def]
        time.sleep(0.3)
        return [Result(s.id, score=1.0, decision=False) for s in samples]


@pytest.fixture()
def slow_detector() -> Iterator[str]:
    registry.register("test-slow-jobs-h")(_SlowOneByOne)
    yield "test-slow-jobs-h"
    registry._REGISTERED.pop("test-slow-jobs-h", None)


def _until(c: TestClient, job_id: str, pred) -> dict:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:
        job = c.get(f"/v1/jobs/{job_id}").json()
        if pred(job):
            return job
        time.sleep(0.05)
    raise AssertionError(job)


def test_cancel_and_graceful_shutdown_stop_a_running_job(
    tmp_path: Path, roots: tuple[Path, Path], slow_detector: str
) -> None:
    data, _ = roots
    body = {"kind": "batch", "data_dir": "tiles/train/good", "detector": slow_detector}  # 4 images
    storage = tmp_path / "storage"
    with TestClient(create_app(storage, data_roots=[data])) as c:
        job_id = c.post("/v1/jobs", json=body).json()["id"]
        _until(c, job_id, lambda j: j["status"] == "running" and j["progress"]["done"] >= 1)
        assert c.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
        job = _until(c, job_id, lambda j: j["status"] not in ("queued", "running"))
        assert job["status"] == "cancelled" and job["progress"]["done"] < 4

        job_id = c.post("/v1/jobs", json=body).json()["id"]
        _until(c, job_id, lambda j: j["status"] == "running" and j["progress"]["done"] >= 1)
    # leaving the block shuts the app down while the job runs
    with TestClient(create_app(storage, data_roots=[data])) as c2:
        job = c2.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "interrupted" and job["progress"]["done"] < 4
        c2.post(f"/v1/jobs/{job_id}/resume")
        job = _until(c2, job_id, lambda j: j["status"] not in ("queued", "running"))
        assert job["status"] == "done" and job["summary"]["n_samples"] == 4


# -- progress, cancel and shutdown inside a long fit() or predict() ---------------------------------
class _LongCalls(Detector):
    """A zero-shot whole batch (one predict() for every image, as the embedded engine's) that takes
    0.3 s an image, and a fit of 0.3 s a reference; both report each image as a step, as the
    embedded engine does, and count how far they got."""

    zero_shot = True
    reached: ClassVar[list[str]] = []

    def capabilities(self) -> Capabilities:
        return Capabilities(self.modalities, whole_batch=not self.fitted_)

    def fit(self, normal_samples):  # type: ignore[no-untyped-def]
        for i, _ in enumerate(normal_samples, 1):
            time.sleep(0.3)
            step("features", i, len(normal_samples))
            self.reached.append(f"fit {i}")
        return super().fit(normal_samples)

    def predict(self, samples):  # type: ignore[no-untyped-def]
        for i, _ in enumerate(samples, 1):
            time.sleep(0.3)
            step("features", i, len(samples))
            self.reached.append(f"predict {i}")
        return [Result(s.id, score=1.0, decision=False) for s in samples]


@pytest.fixture()
def long_calls(roots: tuple[Path, Path]) -> Iterator[str]:
    data, _ = roots
    many = data / "many"
    many.mkdir()
    for i in range(12):
        Image.fromarray(texture(600 + i)).save(many / f"{i:02d}.png")
    _LongCalls.reached = []
    registry.register("test-long-calls-h")(_LongCalls)
    yield "test-long-calls-h"
    registry._REGISTERED.pop("test-long-calls-h", None)


def test_a_whole_batch_job_reports_its_steps_and_cancels_within_a_second(
    tmp_path: Path, roots: tuple[Path, Path], long_calls: str
) -> None:
    data, _ = roots
    app = create_app(tmp_path / "storage", data_roots=[data])
    with TestClient(app) as c:
        job_id = c.post("/v1/jobs", json={"kind": "batch", "data_dir": "many", "detector": long_calls}).json()["id"]
        job = _until(c, job_id, lambda j: j["status"] == "running" and j["progress"]["total"] == 12)
        assert job["progress"]["done"] == 0  # the total is known before any result
        t0 = time.monotonic()
        while (phase := app.state.jobs.phase(job_id)) is None or (phase["done"] or 0) < 2:
            assert time.monotonic() - t0 < 30, phase
            time.sleep(0.05)
        assert phase["phase"] == "scoring" and phase["step"] == "features" and phase["total"] == 12
        assert phase["text"].startswith("scoring: features ")
        t_cancel = time.monotonic()
        c.post(f"/v1/jobs/{job_id}/cancel")
        job = _until(c, job_id, lambda j: j["status"] not in ("queued", "running"))
        latency = time.monotonic() - t_cancel
        assert job["status"] == "cancelled" and latency < 5.0, latency  # within seconds, even on a busy machine
        # stopped inside the one predict() call, long before its 12 images were done
        assert len([r for r in _LongCalls.reached if r.startswith("predict")]) < 8
        assert app.state.jobs.phase(job_id) is None
        c.post(f"/v1/jobs/{job_id}/resume")
        job = _until(c, job_id, lambda j: j["status"] not in ("queued", "running"))
        assert job["status"] == "done" and job["summary"]["n_samples"] == 12 and job["summary"]["n_errors"] == 0


def test_a_long_fit_shows_progress_and_stops_at_once(tmp_path: Path, roots: tuple[Path, Path], long_calls: str) -> None:
    data, _ = roots
    app = create_app(tmp_path / "storage", data_roots=[data])
    body = {"kind": "batch", "data_dir": "tiles/test", "detector": long_calls, "normal_dir": "many"}
    with TestClient(app) as c:
        job_id = c.post("/v1/jobs", json=body).json()["id"]
        t0 = time.monotonic()
        while (phase := app.state.jobs.phase(job_id)) is None or phase["step"] != "features":
            assert time.monotonic() - t0 < 30, phase
            time.sleep(0.05)
        assert phase["phase"] == "fitting" and phase["total"] == 12
        job = c.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "running" and job["progress"]["total"] == 6 and job["progress"]["done"] == 0
        t_cancel = time.monotonic()
        c.post(f"/v1/jobs/{job_id}/cancel")
        job = _until(c, job_id, lambda j: j["status"] not in ("queued", "running"))
        assert (
            job["status"] == "cancelled" and time.monotonic() - t_cancel < 5.0
        )  # within seconds, even on a busy machine
        assert len([r for r in _LongCalls.reached if r.startswith("fit")]) < 8
        # once fitted, it streams: resume scores what is left, each result as it comes
        c.post(f"/v1/jobs/{job_id}/resume")
        job = _until(c, job_id, lambda j: j["status"] not in ("queued", "running"))
        assert job["status"] == "done" and job["progress"] == {"done": 6, "total": 6, "fraction": 1.0, "phase": None}


def test_shutdown_stops_a_long_predict_within_seconds(
    tmp_path: Path, roots: tuple[Path, Path], long_calls: str
) -> None:
    data, _ = roots
    storage = tmp_path / "storage"
    app = create_app(storage, data_roots=[data])
    with TestClient(app) as c:
        job_id = c.post("/v1/jobs", json={"kind": "batch", "data_dir": "many", "detector": long_calls}).json()["id"]
        t0 = time.monotonic()
        while (phase := app.state.jobs.phase(job_id)) is None or phase["step"] is None:
            assert time.monotonic() - t0 < 30, phase
            time.sleep(0.05)
        t_exit = time.monotonic()
    assert time.monotonic() - t_exit < 5.0  # the app's shutdown did not wait for the whole batch
    with TestClient(create_app(storage, data_roots=[data])) as c2:
        job = c2.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "interrupted" and job["progress"]["total"] == 12
