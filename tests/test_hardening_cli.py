"""The command line under stress: files that are not what they say (oversized, truncated, empty,
text), machine-readable rows, rows as they come, Ctrl-C and SIGTERM mid-run, and no temporary
run folders left behind. The signal and progress tests drive the real `genad` executable."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fake_openai import FakeOpenAI, reply, slow
from foundation_helpers import make_mvtec, normal_image, run_cli, truncate
from genad.errors import GenadError
from genad.io.images import image_size, read_image
from lmm_helpers import KEY

GENAD = Path(sys.executable).parent / "genad"
ANSWER = "No, the image shows no anomaly. Anomaly score: 0.1"


def huge_png(path: Path, side: int = 20000) -> Path:
    """A side x side PNG of one colour (1-bit grey): about 75 KB on disk, 400 megapixels, written
    in a fraction of a second without ever holding the pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte 0, then black pixels
    z = zlib.compressobj(9)
    data = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def bad_files(folder: Path) -> dict[str, str]:
    """Four files that are not readable images, by name -> what their error must say."""
    huge_png(folder / "huge.png")
    jpg = folder / "cut.jpg"
    Image.fromarray(normal_image(np.random.default_rng(9), (120, 160))).save(jpg, quality=95)
    truncate(jpg, 400)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("this is not an image\n")
    return {
        "huge.png": "over genad's limit of 100 megapixels",
        "cut.jpg": "cannot read image",
        "empty.png": "empty (0 bytes)",
        "notes.png": "not an image format",
    }


@pytest.fixture()
def mixed(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Four good images and the four bad files of `bad_files` in one folder."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(normal_image(rng)).save(folder / f"good{i}.png")
    return folder, bad_files(folder)


def _rows(stdout: str) -> dict[str, dict]:
    return {(row := json.loads(line))["sample_id"].split("/")[-1]: row for line in stdout.splitlines() if line}


def test_the_readers_say_what_is_wrong_in_one_line(mixed):
    folder, expected = mixed
    for name, message in expected.items():
        for read in (image_size, read_image):
            with pytest.raises(GenadError) as e:
                read(folder / name)
            assert message in str(e.value) and "\n" not in str(e.value), (name, str(e.value))
    t0 = time.perf_counter()
    with pytest.raises(GenadError, match="GENAD_MAX_PIXELS"):
        read_image(folder / "huge.png")
    assert time.perf_counter() - t0 < 3.0  # refused from the header, never decoded (decoding takes far longer)


def test_a_lower_pixel_limit_refuses_from_the_header(tmp_path, monkeypatch):
    Image.fromarray(normal_image(np.random.default_rng(0), (100, 200))).save(tmp_path / "a.png")
    monkeypatch.setenv("GENAD_MAX_PIXELS", "10000")
    with pytest.raises(GenadError, match=r"200x100 pixels .* limit of 0.01 megapixels"):
        image_size(tmp_path / "a.png")
    monkeypatch.setenv("GENAD_MAX_PIXELS", "lots")
    with pytest.raises(GenadError, match="GENAD_MAX_PIXELS must be a number"):
        read_image(tmp_path / "a.png")


@pytest.mark.parametrize("detector", ["embedded", "baseline"])
def test_bad_files_are_one_failed_row_each_zero_shot(mixed, capsys, detector):
    folder, expected = mixed
    code, stdout, err = run_cli(["detect", folder, "-d", detector, "--format", "jsonl", "-q"], capsys)
    assert code == 0, err
    assert "Traceback" not in err and re.search(r"^8 inputs, \d anomalous, 4 failed", err, re.M), err
    rows = _rows(stdout)
    assert len(rows) == 8
    for name, message in expected.items():
        assert rows[name]["score"] is None and message in rows[name]["error"], rows[name]
    assert all(rows[f"good{i}.png"]["score"] is not None and rows[f"good{i}.png"]["error"] is None for i in range(4))


def test_bad_files_fail_alone_few_shot_in_detect_and_eval(tmp_path, mixed, capsys):
    folder, expected = mixed
    refs = tmp_path / "refs"
    refs.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(normal_image(rng)).save(refs / f"r{i}.png")
    code, stdout, err = run_cli(["detect", folder, "-n", refs, "-d", "baseline", "-o", tmp_path / "out"], capsys)
    assert code == 0 and "Traceback" not in err, err
    assert re.search(r"^8 inputs, \d anomalous, 4 failed", stdout, re.M), stdout
    for name, message in expected.items():  # a line each, as it came, then the table
        (line,) = [x for x in stdout.splitlines() if x.startswith("failed") and x.split()[1].endswith(name)]
        assert message in line
    # genad eval: one bad file among the test images fails alone, never its chunk
    root = make_mvtec(tmp_path / "toy", n_good=4, defects={"scratch": 3})
    huge_png(root / "test" / "good" / "huge.png")
    (root / "test" / "scratch" / "zero.png").write_bytes(b"")
    code, stdout, err = run_cli(
        ["eval", root, "-d", "baseline", "--shots", "2", "-q", "--run-dir", tmp_path / "run", "--json", tmp_path / "s"],
        capsys,
    )
    assert code == 0 and "Traceback" not in err, err
    s = json.loads((tmp_path / "s").read_text())
    assert s["n_images"] == 9 and s["n_failed"] == 2 and s["n_scored"] == 7
    assert {f["id"].split("/")[-1] for f in s["failed"]} == {"huge.png", "zero.png"}


def test_jsonl_csv_and_limit(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(normal_image(rng)).save(tmp_path / f"{i}.png")
    code, stdout, err = run_cli(["detect", tmp_path, "-d", "baseline", "--format", "jsonl", "--limit", "4"], capsys)
    assert code == 0, err
    rows = [json.loads(x) for x in stdout.splitlines()]
    assert [r["sample_id"] for r in rows] == [f"{tmp_path.name}/{i}.png" for i in range(4)]
    assert all(isinstance(r["score"], float) and r["decision"] in (True, False) for r in rows)
    assert "4 inputs" in err and "inputs" not in stdout  # the summary goes to stderr
    code, stdout, err = run_cli(["detect", tmp_path, "-d", "baseline", "--format", "csv", "-l", "3"], capsys)
    assert code == 0, err
    table = list(csv.DictReader(io.StringIO(stdout)))
    assert len(table) == 3 and list(table[0]) == [
        "input",
        "score",
        "normalized_score",
        "decision",
        "threshold",
        "regions",
        "explanation",
        "error",
    ]
    assert all(float(r["score"]) > 0 and r["decision"] in ("normal", "anomalous") and not r["error"] for r in table)
    code, _, err = run_cli(["detect", tmp_path, "-d", "baseline", "--format", "xml"], capsys)
    assert code == 2 and "--format must be table, jsonl or csv" in err
    code, _, err = run_cli(["detect", tmp_path, "-d", "baseline", "--limit", "0"], capsys)
    assert code == 2 and "Traceback" not in err


def test_detect_resume_scores_only_the_rest(tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    for i in range(5):
        Image.fromarray(normal_image(rng)).save(tmp_path / "in" / f"{i}.png")
    refs = tmp_path / "in" / "0.png"
    args = ["detect", tmp_path / "in", "-n", refs, "-d", "baseline", "-o", tmp_path / "o", "-q"]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    results = tmp_path / "o" / "results.jsonl"
    lines = results.read_text().splitlines()
    results.write_text("\n".join(lines[:3]) + "\n" + lines[3][:25])  # interrupted mid-write
    code, stdout, err = run_cli([*args, "--resume"], capsys)
    assert code == 0, err
    assert "5 inputs, 0 anomalous" in stdout and (tmp_path / "o" / "index.html").read_text().count("<tr") >= 5
    recs = [json.loads(x) for x in results.read_text().splitlines()[3:] if x.startswith("{") and x.endswith("}")]
    assert sorted(r["id"].split("/")[-1] for r in recs) == ["3.png", "4.png"]  # only the rest
    code, _, err = run_cli([*args[:-1], "--limit", "2", "--resume"], capsys)
    assert code == 2 and "different limit" in err and "new --out" in err


# -- the real executable ---------------------------------------------------------------------------
def _env(srv: FakeOpenAI, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    cfg = tmp_path / "config.toml"
    cfg.write_text("[lmm]\nretry_base_delay = 0.001\n")
    env.update(
        GENAD_LMM_BASE_URL=srv.base_url,
        GENAD_LMM_MODEL="gpt-4o",
        GENAD_LMM_API_KEY=KEY,
        GENAD_CACHE_DIR=str(tmp_path / "cache"),
        GENAD_CONFIG=str(cfg),
        GENAD_PROGRESS_SECONDS="0.3",
        **extra,
    )
    return env


class Reader:
    """Reads a process's stdout and stderr as they come, with the time of each line."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.t0 = time.monotonic()
        self.out: list[tuple[float, str]] = []
        self.err: list[tuple[float, str]] = []
        self._threads = [
            threading.Thread(target=self._read, args=(proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read(self, stream, into: list) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            into.append((time.monotonic() - self.t0, line.rstrip("\n")))

    def join(self) -> None:
        for t in self._threads:
            t.join(10)

    def stderr(self) -> str:
        return "\n".join(line for _, line in self.err)


def test_rows_are_printed_as_they_come_with_progress_on_stderr(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(normal_image(rng)).save(folder / f"{i}.png")
    with FakeOpenAI([slow(0.5, reply(ANSWER))]) as srv:
        proc = subprocess.Popen(
            [str(GENAD), "detect", str(folder), "-d", "lmm", "-p", "batch_size=1", "--format", "jsonl"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(srv, tmp_path),
        )
        reader = Reader(proc)
        assert proc.wait(timeout=120) == 0, reader.stderr()
        ended = time.monotonic() - reader.t0
        reader.join()
    rows = [json.loads(line) for _, line in reader.out]
    assert len(rows) == 6 and all(r["score"] == pytest.approx(0.1) for r in rows)
    # the first row came while the others were still being scored (0.5 s an answer)
    assert reader.out[0][0] < ended - 1.5, (reader.out, ended)
    assert "scored" in reader.stderr() and "Traceback" not in reader.stderr()


def _eval_until(proc: subprocess.Popen, results: Path, n: int, timeout: float = 90.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if results.exists() and len(results.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.05)
    raise AssertionError(f"no {n} results after {timeout} s")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_eval_within_seconds_and_resume_does_the_rest(tmp_path, sig):
    root = make_mvtec(tmp_path / "toy", n_train=0, with_train=False, n_good=8, defects={"scratch": 8})
    run_dir = tmp_path / "run"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    # SIGINT with --run-dir; SIGTERM without: the temporary folder is then kept and named
    with FakeOpenAI([slow(0.4, reply(ANSWER))]) as srv:
        env = _env(srv, tmp_path, TMPDIR=str(tmp))
        args = [str(GENAD), "eval", str(root), "-d", "lmm", "-p", "batch_size=2"]
        if sig == signal.SIGINT:
            args += ["--run-dir", str(run_dir)]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        reader = Reader(proc)
        if sig == signal.SIGTERM:
            t0 = time.monotonic()
            while not list(tmp.glob("genad-run-*")) and time.monotonic() - t0 < 60:
                time.sleep(0.05)
            (run_dir,) = tmp.glob("genad-run-*")
        _eval_until(proc, run_dir / "results.jsonl", 3)
        t_signal = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(timeout=30)
        stopped_in = time.monotonic() - t_signal
        reader.join()
        err = reader.stderr()
        assert code == 130, err
        assert stopped_in < 5.0, stopped_in
        assert "Traceback" not in err and f"kept in {run_dir}" in err
        assert f"--run-dir {run_dir} --resume" in err
        kept = [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]
        scored = [r for r in kept if r["score"] is not None]
        assert 3 <= len(scored) < 16 and len({r["id"] for r in kept}) == len(kept)
        # --resume scores only the rest
        again = subprocess.run(
            [*args[:7], "--run-dir", str(run_dir), "--resume", "-q", "--json", str(tmp_path / "s.json")],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    assert again.returncode == 0, again.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["n_resumed"] == len(scored) and summary["n_images"] == 16 and summary["n_failed"] == 0
    recs = [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]
    assert len(recs) == len(kept) + 16 - len(scored)  # nothing done before was scored again


def test_eval_without_run_dir_leaves_no_temporary_folder(tmp_path):
    root = make_mvtec(tmp_path / "toy")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp))
    for extra, code in (([], 0), (["--limit", "0"], 2)):  # a finished run, and one refused
        p = subprocess.run(
            [str(GENAD), "eval", str(root), "-d", "baseline", "--shots", "2", "-q", *extra],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert p.returncode == code, p.stderr
        assert "Traceback" not in p.stderr
        assert not list(tmp.glob("genad-run-*")), list(tmp.iterdir())
        if code == 0:
            assert "image_auroc" in p.stdout and "run dir: not kept" in p.stdout
