"""The one run loop (genad.run.run_detector) and the one run folder format (RunFolder), and
that `genad detect`, `genad eval` and a service batch job all write that format."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from foundation_helpers import make_mvtec
from genad.detector import Capabilities, Detector
from genad.errors import GenadError
from genad.evaluate import run_benchmark
from genad.run import RunCancelled, RunFolder, pending, run_detector, run_into
from genad.service.app import create_app
from genad.types import ImageSample, Result
from test_cli_detect import run_cli


class Recorder(Detector):
    """Scores 1.0 per sample, remembering each predict() call; `whole` = needs the whole batch."""

    def __init__(
        self, whole: bool = False, chunk: int | None = 2, fail_call: int | None = None, score: float = 1.0
    ) -> None:
        super().__init__()
        self.whole, self.chunk, self.fail_call, self.score = whole, chunk, fail_call, score
        self.calls: list[list[str]] = []
        self.fitted_on: list[str] = []

    def capabilities(self) -> Capabilities:
        return Capabilities(self.modalities, whole_batch=self.whole, chunk_size=self.chunk)

    def fit(self, normal_samples):  # type: ignore[no-untyped-def]
        self.fitted_on = [s.id for s in normal_samples]
        return super().fit(normal_samples)

    def predict(self, samples):  # type: ignore[no-untyped-def]
        self.calls.append([s.id for s in samples])
        if self.fail_call is not None and len(self.calls) == self.fail_call:
            raise ConnectionError("server went away")
        return [Result(s.id, score=self.score, anomaly_map=np.full((4, 4), self.score, np.float32)) for s in samples]


def _samples(n: int) -> list[ImageSample]:
    return [ImageSample(f"s{i}", array=np.zeros((4, 4, 3), np.uint8)) for i in range(n)]


def test_chunks_follow_the_capabilities():
    s = _samples(5)
    det = Recorder(chunk=2)
    assert [x.id for x, _ in run_detector(det, s)] == ["s0", "s1", "s2", "s3", "s4"]
    assert det.calls == [["s0", "s1"], ["s2", "s3"], ["s4"]]
    whole = Recorder(whole=True)
    got = [x.id for x, _ in run_detector(whole, s, todo=s[3:])]
    # compared with every sample, but only the ones to do are handed on
    assert whole.calls == [["s0", "s1", "s2", "s3", "s4"]] and got == ["s3", "s4"]
    default = Recorder(chunk=None)
    list(run_detector(default, _samples(40)))
    assert [len(c) for c in default.calls] == [32, 8]


def test_fit_only_when_there_is_work_and_progress_counts_every_result():
    s, refs = _samples(3), _samples(1)
    det = Recorder()
    seen: list[tuple[int, int]] = []
    list(run_detector(det, s, todo=[], refs=refs, on_progress=lambda d, t: seen.append((d, t))))
    assert det.fitted_on == [] and seen == [(3, 3)]
    seen.clear()
    list(run_detector(det, s, refs=refs, on_progress=lambda d, t: seen.append((d, t))))
    assert det.fitted_on == ["s0"] and seen == [(1, 3), (2, 3), (3, 3)]


def test_a_broken_chunk_fails_only_itself_and_user_errors_stop_the_run():
    det = Recorder(chunk=2, fail_call=2)
    out = {x.id: r for x, r in run_detector(det, _samples(5))}
    assert [k for k, r in out.items() if r.error] == ["s2", "s3"]
    assert "ConnectionError: server went away" in (out["s2"].error or "") and out["s4"].ok

    class Mistake(Recorder):
        def predict(self, samples):  # type: ignore[no-untyped-def]
            raise GenadError("a user mistake")

    with pytest.raises(GenadError, match="user mistake"):
        list(run_detector(Mistake(), _samples(2)))


def test_non_finite_scores_become_errors_and_stop_cancels():
    (_, r), *_ = run_detector(Recorder(score=float("inf")), _samples(1))
    assert r.score is None and "non-finite" in (r.error or "")
    flag: list[str] = []
    got = []
    with pytest.raises(RunCancelled) as e:
        for x, _ in run_detector(Recorder(chunk=1), _samples(4), stop=lambda: flag[0] if flag else None):
            got.append(x.id)
            if len(got) == 2:
                flag.append("cancelled")
    assert e.value.status == "cancelled" and got == ["s0", "s1"]


def test_run_folder_writes_reads_resumes(tmp_path: Path):
    folder = RunFolder(tmp_path / "run")
    s = _samples(4)
    done = folder.start({"detector": "x", "seed": 0})
    assert done == {}
    det = Recorder(fail_call=2, chunk=2)
    records = run_into(folder, det, s, done)
    assert [r["id"] for r in records] == ["s0", "s1", "s2", "s3"] and records[2]["error"]
    assert [x.id for x in pending(s, folder.records())] == ["s2", "s3"]
    assert folder.load_map(records[0]).shape == (4, 4) and records[2]["map"] is None
    # a torn last line (a crash mid-write) is ignored; the later line for an id wins
    with folder.results_path.open("a") as f:
        f.write('{"id": "s9", "n": 9, "sco')
    with pytest.raises(GenadError, match="already holds results"):
        RunFolder(folder.path).start({"detector": "x"})
    with pytest.raises(GenadError, match="different seed"):
        RunFolder(folder.path).start({"detector": "x", "seed": 1}, resume=True, must_match=("detector", "seed"))
    again = RunFolder(folder.path)
    done = again.start({"detector": "x", "seed": 0}, resume=True, must_match=("detector", "seed"))
    det2 = Recorder(chunk=2)
    records = run_into(again, det2, s, done)
    assert det2.calls == [["s2", "s3"]] and all(r["score"] == 1.0 for r in records)
    assert [r["id"] for r in again.ordered()] == ["s0", "s1", "s2", "s3"]
    assert again.result(records[1]).score == 1.0
    fresh = RunFolder(folder.path)
    assert fresh.start({"detector": "y"}, overwrite=True) == {} and fresh.records() == {}
    assert not list((folder.path / "maps").glob("*.npz"))


def _record_keys(path: Path) -> set[str]:
    recs = RunFolder(path).ordered()
    assert recs, path
    keys = set(recs[0])
    assert all(set(r) == keys for r in recs)
    return keys


def test_detect_eval_and_a_batch_job_write_one_format(tmp_path: Path, capsys):
    root = make_mvtec(tmp_path / "data" / "toy")
    code, _, err = run_cli(
        ["detect", root / "test", "-d", "baseline", "--normal", root / "train" / "good", "--out", tmp_path / "detect"],
        capsys,
    )
    assert code == 0, err
    run_benchmark(root, "baseline", shots=2, run_dir=tmp_path / "eval", progress=False)
    with TestClient(create_app(tmp_path / "storage", data_roots=[tmp_path / "data"])) as c:
        r = c.post(
            "/v1/jobs",
            json={"kind": "batch", "data_dir": "toy/test", "detector": "baseline", "normal_dir": "toy/train/good"},
        )
        job_id = r.json()["id"]
        t0 = time.monotonic()
        while c.get(f"/v1/jobs/{job_id}").json()["status"] in ("queued", "running") and time.monotonic() - t0 < 60:
            time.sleep(0.1)
        assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "done"
    core = {
        "id",
        "n",
        "label",
        "defect_type",
        "score",
        "decision",
        "threshold",
        "regions",
        "ranges",
        "explanation",
        "timings",
        "usage",
        "error",
        "map",
    }
    detect_keys = _record_keys(tmp_path / "detect")
    eval_keys = _record_keys(tmp_path / "eval")
    job_keys = _record_keys(tmp_path / "storage" / "jobs" / job_id / "run")
    assert core <= eval_keys and eval_keys == job_keys and detect_keys == eval_keys | {"overlay"}
    for path in (tmp_path / "detect", tmp_path / "eval", tmp_path / "storage" / "jobs" / job_id / "run"):
        cfg = json.loads((path / "config.json").read_text())
        assert cfg["params"] and all(RunFolder(path).load_map(rec) is not None for rec in RunFolder(path).ordered())
