"""The one run loop (genad.run.run_detector) and the one run folder format (RunFolder), and
that `genad detect`, `genad eval` and a service batch job all write that format."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from foundation_helpers import make_mvtec
from genad.detector import Capabilities, Detector
from genad.engines.progress import step
from genad.errors import GenadError
from genad.evaluate import run_benchmark
from genad.run import (
    Phase,
    RunCancelled,
    RunFolder,
    deferred_interrupts,
    pending,
    run_detector,
    run_into,
    stop_on_signals,
)
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


# -- phases, steps inside long calls, stops --------------------------------------------------------
class Stepping(Recorder):
    """Reports a step per reference in fit() and per sample in predict(), as the embedded engine."""

    def fit(self, normal_samples):  # type: ignore[no-untyped-def]
        for i, _ in enumerate(normal_samples, 1):
            step("features", i, len(normal_samples))
        return super().fit(normal_samples)

    def predict(self, samples):  # type: ignore[no-untyped-def]
        out = []
        for i, s in enumerate(samples, 1):
            step("features", i, len(samples))
            out.append(Result(s.id, score=1.0))
        self.calls.append([s.id for s in samples])
        return out


def test_phases_report_the_fit_and_the_steps_inside_long_calls():
    seen: list[Phase] = []
    det = Stepping(whole=True)
    list(run_detector(det, _samples(3), refs=_samples(2), on_phase=seen.append))
    assert [str(p) for p in seen] == [
        "fitting 0/2",
        "fitting: features 1/2",
        "fitting: features 2/2",
        "scoring 0/3",
        "scoring: features 1/3",
        "scoring: features 2/3",
        "scoring: features 3/3",
    ]
    assert all(p.scored == 0 and p.samples == 3 for p in seen)  # the run's size, before any result
    step("features", 1, 1)  # outside a run: nothing to report to, nothing raised


def test_stop_reaches_inside_a_long_predict_and_fit():
    flag: list[str] = []

    class StopsAt(Stepping):
        def predict(self, samples):  # type: ignore[no-untyped-def]
            for i, _ in enumerate(samples, 1):
                if i == 2:
                    flag.append("cancelled")
                step("features", i, len(samples))
                self.calls.append([f"{i}"])
            return [Result(s.id, score=1.0) for s in samples]

    det = StopsAt(whole=True)
    with pytest.raises(RunCancelled) as e:
        list(run_detector(det, _samples(5), stop=lambda: flag[0] if flag else None))
    assert e.value.status == "cancelled" and det.calls == [["1"]]  # stopped inside the one call
    flag.clear()

    class StopsInFit(Stepping):
        def fit(self, normal_samples):  # type: ignore[no-untyped-def]
            flag.append("interrupted")
            return super().fit(normal_samples)

    det2 = StopsInFit()
    with pytest.raises(RunCancelled, match="interrupted"):
        list(run_detector(det2, _samples(2), refs=_samples(3), stop=lambda: flag[0] if flag else None))
    assert det2.fitted_on == [] and det2.calls == []


def test_a_stop_is_never_mistaken_for_a_failed_sample():
    from genad.detector import predict_each

    def one(s, r):  # type: ignore[no-untyped-def]
        raise RunCancelled("cancelled")

    # BaseException, as KeyboardInterrupt: no `except Exception` turns it into an error result
    with pytest.raises(RunCancelled):
        predict_each(_samples(2), one)
    assert not issubclass(RunCancelled, Exception)


def test_a_torn_line_is_ended_before_the_next_record(tmp_path: Path):
    folder = RunFolder(tmp_path / "run")
    s = _samples(3)
    done = folder.start({"detector": "x"})
    run_into(folder, Recorder(chunk=1), s[:2], done)
    with folder.results_path.open("a") as f:
        f.write('{"id": "s2", "n": 2, "sco')  # killed mid-write
    again = RunFolder(folder.path)
    done = again.start({"detector": "x"}, resume=True)
    assert set(done) == {"s0", "s1"}
    run_into(again, Recorder(chunk=1), s, done)
    assert set(RunFolder(folder.path).records()) == {"s0", "s1", "s2"}


def test_a_signal_waits_for_the_line_being_written():
    got: list[str] = []
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals():
        with pytest.raises(KeyboardInterrupt):
            with deferred_interrupts():
                os.kill(os.getpid(), signal.SIGTERM)  # SIGTERM too: a KeyboardInterrupt, not death
                time.sleep(0.05)
                got.append("written")  # the write goes on to its end
        assert got == ["written"]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) == before
