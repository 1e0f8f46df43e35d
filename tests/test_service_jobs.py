"""Evaluation and batch jobs of the service: allow-listed folders, progress, restarts."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from genad import registry
from genad.detector import Detector
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
        assert job["progress"] == {"done": 6, "total": 6, "fraction": 1.0}
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
        for bad in (str(outside / "tiles"), "../outside/tiles", "link/tiles", "/etc"):
            r = c.post("/v1/jobs", json={"kind": "evaluate", "data_dir": bad, "detector": "baseline"})
            assert r.status_code == 403, (bad, r.text)
            assert "outside the allowed data roots" in r.json()["detail"]
        r = c.post("/v1/jobs", json={"kind": "evaluate", "data_dir": "nothing-here", "detector": "baseline"})
        assert r.status_code == 404
        r = c.post("/v1/jobs", json={"kind": "batch", "data_dir": "tiles", "normal_dir": "../outside"})
        assert r.status_code == 403 and "normal_dir" in r.json()["detail"]
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
