"""`--ray ADDRESS` against a real local Ray head (`ray start --head --block`, a child process
ended by its pid): `genad eval` on one category (chunks as tasks, the fit here, results written
here; resume) and on a root (a task per category) gives the figures of a local run; `genad
detect --model --ray` writes the same rows with a bounded number of chunks out; LMM runs share
one budget, one rate limit and one cache across workers (the fake OpenAI server counts the
calls); without Ray, or without a head, one line says what to do.

The head stays on loopback and offline: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (Ray then takes
127.0.0.1 as this machine's address instead of its network address) and usage statistics off,
for the head and for this process; its node's address is checked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genad.run.ray_backend import LOOPBACK_ENV, _free_port

# before Ray is imported: it reads them once (for this process, the driver, as for the head)
os.environ.update(LOOPBACK_ENV)
try:
    import ray
except ImportError:  # Ray is part of genad[all]: the tests of a cluster fail, saying so
    ray = None

from fake_openai import FakeOpenAI, reply
from foundation_helpers import make_mvtec, run_cli
from lmm_helpers import KEY, grep_tree

# what differs between two runs of the same thing
VOLATILE = {"seconds", "fit_seconds", "predict_seconds", "images_per_second", "peak_rss_mb", "run_dir", "data_dir"}


@pytest.fixture(scope="module")
def head():
    """A Ray head with 2 CPUs on 127.0.0.1, started once for the module; this process joins it."""
    if ray is None:
        pytest.fail("Ray is not installed, and it is part of genad[all]: pip install 'genad[ray]'")
    from genad.run.ray_backend import local_head

    cache = Path(tempfile.mkdtemp(prefix="genad-ray-cache-"))
    try:
        with local_head(2, {"GENAD_CACHE_DIR": str(cache)}) as address:
            yield address
    finally:
        shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(autouse=True)
def _own_feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENAD_CACHE_DIR", str(tmp_path / "genad-cache"))


def _stable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in VOLATILE}


def _close(a, b, path: str = "") -> None:
    """`a` equals `b` with floats equal to 1e-6 (relative): a Ray worker computes a backbone's
    convolutions on 1 thread, this process on 2, and float sums differ in the last bits."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9), path
    else:
        assert a == b, path


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines() if line.strip()]


def _eval(args, capsys) -> dict:
    """`genad eval ARGS --run-dir DIR ...`: its summary (also written as DIR.json)."""
    out = Path(str(args[args.index("--run-dir") + 1]) + ".json")
    code, _, err = run_cli(["eval", *args, "-q", "--json", out], capsys)
    assert code == 0, err
    return json.loads(out.read_text())


# -- the cluster -------------------------------------------------------------------------------
def test_the_head_is_on_loopback(head):
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 1
    assert nodes[0]["NodeManagerAddress"] == "127.0.0.1"
    assert ray.cluster_resources()["CPU"] == 2


# -- genad eval --------------------------------------------------------------------------------
def test_one_category_in_chunks_equals_a_local_run_and_resumes(head, tmp_path, capsys, monkeypatch):
    from genad.engines.baseline import BaselineDetector

    monkeypatch.setattr(BaselineDetector, "chunk_size", 3)  # 17 images: 6 chunks, 4 out at a time
    data = make_mvtec(tmp_path / "widget", n_train=4, n_good=7, defects={"scratch": 5, "stain": 5}, seed=3)
    base = [data, "-d", "baseline", "--shots", "2"]
    local = _eval([*base, "--run-dir", tmp_path / "local"], capsys)
    remote = _eval([*base, "--run-dir", tmp_path / "ray", "--ray", head], capsys)
    assert _stable(remote) == _stable(local)
    assert remote["n_images"] == 17 and remote["n_failed"] == 0 and remote["image_auroc"] is not None
    recs = _records(tmp_path / "ray")
    assert sorted(r["id"] for r in recs) == sorted(r["id"] for r in _records(tmp_path / "local"))
    assert sorted(r["n"] for r in recs) == list(range(17))
    assert len(list((tmp_path / "ray" / "maps").glob("*.npz"))) == 17
    assert json.loads((tmp_path / "ray" / "curves.json").read_text()) == json.loads(
        (tmp_path / "local" / "curves.json").read_text()
    )

    # an interrupted run (only 5 results kept) continues on the cluster: the same figures
    (tmp_path / "ray" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs[:5]))
    (tmp_path / "ray" / "summary.json").unlink()
    resumed = _eval([*base, "--run-dir", tmp_path / "ray", "--resume", "--ray", head], capsys)
    assert resumed["n_resumed"] == 5
    assert {k: v for k, v in _stable(resumed).items() if k != "n_resumed"} == {
        k: v for k, v in _stable(local).items() if k != "n_resumed"
    }
    assert len(_records(tmp_path / "ray")) == 17


def test_embedded_few_shot_through_a_model_file_equals_a_local_run(head, tmp_path, capsys, monkeypatch):
    from genad.engines.embedded.detector import EmbeddedDetector

    monkeypatch.setattr(EmbeddedDetector, "chunk_size", 4)  # 10 images: 3 chunks
    data = make_mvtec(tmp_path / "part", n_train=3, n_good=4, defects={"scratch": 3, "stain": 3}, seed=5)
    base = [data, "-d", "embedded", "--shots", "2"]
    local = _eval([*base, "--run-dir", tmp_path / "local"], capsys)
    remote = _eval([*base, "--run-dir", tmp_path / "ray", "--ray", head], capsys)
    _close(_stable(remote), _stable(local))  # the threshold, scores and figures to float precision


def test_whole_batch_zero_shot_is_one_task_with_the_local_figures(head, tmp_path, capsys):
    data = make_mvtec(tmp_path / "zs", n_train=0, with_train=False, n_good=5, defects={"dent": 4}, seed=7)
    base = [data, "-d", "baseline"]
    local = _eval([*base, "--run-dir", tmp_path / "local"], capsys)
    remote = _eval([*base, "--run-dir", tmp_path / "ray", "--ray", head], capsys)
    assert _stable(remote) == _stable(local) and remote["n_scored"] == 9


def test_a_root_runs_a_task_per_category_with_the_local_figures(head, tmp_path, capsys):
    root = tmp_path / "root"
    make_mvtec(root / "a", n_train=3, n_good=4, defects={"scratch": 3}, seed=1)
    make_mvtec(root / "b", n_train=3, n_good=4, defects={"stain": 2}, seed=2, with_masks=False)
    broken = make_mvtec(root / "c", n_train=3, n_good=3, defects={"dent": 2}, seed=4)
    for p in (broken / "test").rglob("*.png"):
        p.write_bytes(b"not an image")  # every image of c fails: c is reported failed, a and b finish
    base = [root, "-d", "baseline", "--shots", "2", "-q"]
    jl, jr = tmp_path / "local.json", tmp_path / "ray.json"
    code_l, _, err_l = run_cli(["eval", *base, "--run-dir", tmp_path / "local", "--json", jl], capsys)
    code_r, out, err_r = run_cli(["eval", *base, "--run-dir", tmp_path / "ray", "--json", jr, "--ray", head], capsys)
    assert code_l == code_r == 1, (err_l, err_r)  # c failed in both
    local, remote = json.loads(jl.read_text()), json.loads(jr.read_text())
    assert list(remote["categories"]) == ["a", "b", "c"]  # category order, whatever finished first
    assert remote["status"] == local["status"] == {"a": "done", "b": "done", "c": "failed"}
    assert remote["failed"]["c"].startswith("all 5 images failed")
    for name in ("a", "b"):
        assert _stable(remote["categories"][name]) == _stable(local["categories"][name])
        assert (tmp_path / "ray" / name / "summary.json").is_file()
    assert remote["mean"] == local["mean"]
    assert json.loads((tmp_path / "ray" / "categories.json").read_text()) == remote
    assert "mean" in out


# -- genad detect ------------------------------------------------------------------------------
def test_detect_with_a_model_streams_the_local_rows_with_few_chunks_out(head, tmp_path, capsys, monkeypatch):
    from genad.engines.baseline import BaselineDetector
    from genad.io import load_inputs
    from genad.run import ray_backend

    data = make_mvtec(tmp_path / "d", n_train=4, n_good=6, defects={"scratch": 6}, seed=9)
    model = tmp_path / "m.genad"
    code, _, err = run_cli(["fit", data / "train" / "good", "-d", "baseline", "--save", model], capsys)
    assert code == 0, err
    monkeypatch.setattr(BaselineDetector, "chunk_size", 2)
    rows = {}
    for where in ("local", "ray"):
        extra = ["--ray", head] if where == "ray" else []
        code, out, err = run_cli(
            ["detect", data / "test", "--model", model, "--out", tmp_path / where, "-f", "jsonl", "-q", *extra], capsys
        )
        assert code == 0, err
        rows[where] = {r["sample_id"]: {**r, "timings": None} for r in map(json.loads, out.splitlines())}
    assert len(rows["ray"]) == 12 and rows["ray"] == rows["local"]
    recs = _records(tmp_path / "ray")
    assert sorted(r["id"] for r in recs) == sorted(rows["local"]) and all(r["score"] is not None for r in recs)
    assert (tmp_path / "ray" / "index.html").is_file()

    # at most max_in_flight chunks are out at a time: chunks are drawn only as results come back
    import genad

    det = genad.load(model)
    samples = load_inputs([data / "test"])
    events: list[str] = []
    real_chunks = ray_backend.chunks

    def counted(*a, **k):
        for batch in real_chunks(*a, **k):
            events.append("out")
            yield batch

    monkeypatch.setattr(ray_backend, "chunks", counted)
    done = [
        r for _, r in ray_backend.run_detector_ray(det, samples, sink=lambda s, r: events.append("in"), max_in_flight=2)
    ]
    assert len(done) == 12 and all(r.ok for r in done)
    outstanding = peak = 0
    for e in events:
        outstanding += 2 if e == "out" else -1  # a chunk is 2 samples
        peak = max(peak, outstanding)
    assert events.count("out") == 6 and peak == 2 * 2  # never more than 2 chunks (4 samples) out


# -- LMM: one budget, one rate, one cache ------------------------------------------------------
def test_lmm_workers_share_one_budget_one_rate_and_one_cache(head, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(8):  # 8 different images: 8 different questions
        Image.fromarray(np.full((64, 64, 3), (30 + 20 * i, 200, 30), np.uint8)).save(folder / f"img{i}.png")
    arrivals: list[float] = []
    answer = '{"anomalous": false, "anomaly_score": 0.2, "defect_type": null, "location": null, "reason": "fine"}'

    def script(payload):
        arrivals.append(time.monotonic())
        return reply(answer, completion_tokens=100)  # what the budget's estimate assumes: cost = estimate

    # input tokens free, output $1000 per 1M tokens: every call costs exactly $0.10 (100 tokens)
    prices = json.dumps({"ray-test-vlm": {"input": 0, "output": 1000}})
    with FakeOpenAI(script, model="ray-test-vlm") as srv:
        monkeypatch.setenv("GENAD_LMM_BASE_URL", srv.base_url)
        monkeypatch.setenv("GENAD_LMM_MODEL", "ray-test-vlm")
        monkeypatch.setenv("GENAD_LMM_API_KEY", KEY)
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        monkeypatch.setenv("GENAD_CACHE_DIR", str(tmp_path / "cache"))
        config = tmp_path / "config.toml"
        config.write_text("[lmm]\nretry_base_delay = 0.001\n")
        monkeypatch.setenv("GENAD_CONFIG", str(config))
        # 8 images in 4 chunks of 2 on 2 workers, 2 requests at once in each: a $0.35 budget is 3 calls
        args = ["detect", folder, "-d", "lmm", "--out", tmp_path / "out", "-f", "jsonl", "-q", "--ray", head]
        args += ["--max-tokens", "100", "-p", "batch_size=2", "-p", "concurrency=2", "-p", f"prices={prices}"]
        code, _, err = run_cli([*args, "-p", "budget=0.35"], capsys)
        assert code != 0 and "budget $0.3500 reached" in err, err
        assert len(srv.chat_requests()) == 3  # not 3 per worker: one budget
        scored = [r for r in _records(tmp_path / "out") if r["score"] is not None]
        assert len(scored) == 3

        # again with room to spare: the 3 answers come from the one cache, 5 are asked, at one rate
        arrivals.clear()
        args[args.index(tmp_path / "out")] = tmp_path / "again"
        code, out, err = run_cli([*args, "-p", "budget=5", "-p", "rpm=240"], capsys)
        assert code == 0, err
        assert len(srv.chat_requests()) == 8  # 3 + 5: nothing asked twice
        assert len(arrivals) == 5 and arrivals[-1] - arrivals[0] >= 4 * 0.25 * 0.8  # 240/min across workers
        recs = _records(tmp_path / "again")
        assert len(recs) == 8 and all(r["score"] is not None for r in recs)
        assert sum(r["usage"]["cached_calls"] for r in recs) == 3
        assert list((tmp_path / "cache" / "responses").rglob("*.json"))
    assert grep_tree(tmp_path, KEY) == []  # not in results, reports or the cache


# -- errors ------------------------------------------------------------------------------------
def test_without_ray_installed_one_line_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    data = make_mvtec(tmp_path / "w", n_train=2, n_good=3, defects={"scratch": 2}, seed=1)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as where it is not installed
    for args in (["eval", data, "-d", "baseline", "--shots", "1"], ["detect", data / "test", "-d", "baseline"]):
        code, out, err = run_cli([*args, "--ray", "127.0.0.1:6379"], capsys)
        assert code != 0
        line = err.strip()
        assert "\n" not in line and "pip install 'genad[ray]'" in line, err
        assert not (tmp_path / "w" / "results.jsonl").exists()


def test_a_head_that_is_not_there_is_one_line(tmp_path):
    data = make_mvtec(tmp_path / "w", n_train=2, n_good=3, defects={"scratch": 2}, seed=1)
    env = {**os.environ, **LOOPBACK_ENV}
    t0 = time.monotonic()
    got = subprocess.run(
        [sys.executable, "-m", "genad.cli.main", "eval", str(data), "-d", "baseline", "--shots", "1"]
        + ["--run-dir", str(tmp_path / "run"), "--ray", f"127.0.0.1:{_free_port()}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert got.returncode != 0 and time.monotonic() - t0 < 60
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Ray cluster at 127.0.0.1:" in lines[0], got.stderr
    assert not (tmp_path / "run" / "results.jsonl").exists()
