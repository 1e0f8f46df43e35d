"""genad against a real OpenAI-compatible server: llama-cpp-python's server with the text model
gemma3-270m from PyPI, on 127.0.0.1, behind a recording proxy (tests/llama_server.py).

This server is what the fake cannot be: it answers json_schema with HTTP 500, drops a message
whose content is a list of parts, counts prompt tokens itself, and its tiny model answers in
whatever shape it likes (it often echoes the prompt). Each test asserts on what genad sent and
that what came back is either a parsed answer or a clear "no usable answer", never an invented
score. `make test` installs llama-cpp-python[server] and the model package."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fake_openai import FakeOpenAI, reply
from foundation_helpers import run_cli
from llama_server import LlamaServer, RecordingProxy

MODEL = "gemma-3-270m"


@pytest.fixture(scope="module")
def server():
    with LlamaServer() as srv, RecordingProxy(srv.base_url) as proxy:
        yield proxy


@pytest.fixture
def llm(server, monkeypatch, tmp_path):
    """The environment of a user pointing genad at that server; the proxy's record starts empty."""
    monkeypatch.setenv("GENAD_LMM_BASE_URL", server.base_url)
    monkeypatch.setenv("GENAD_LMM_MODEL", MODEL)
    monkeypatch.setenv("GENAD_LMM_API_KEY", "none")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("GENAD_CACHE_DIR", str(tmp_path / "cache"))
    # a slow machine (or one busy with other work) must not turn a slow answer into a timeout:
    # constrained JSON sampling over gemma's 262k-token vocabulary costs seconds per token here
    (tmp_path / "config.toml").write_text("[lmm]\nretry_base_delay = 0.01\ntimeout = 1200\n")
    monkeypatch.setenv("GENAD_CONFIG", str(tmp_path / "config.toml"))
    server.exchanges.clear()
    return server


def _png(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(80, 120, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


def _unusable(message: str) -> bool:
    return message.startswith(("no usable score", "no usable answer"))


def test_ask_sends_a_text_question_as_a_string_and_reads_or_rejects_the_answer(llm, capsys):
    q = "Is a ceramic tile with a long crack across it anomalous? Answer yes or no."
    code, out, err = run_cli(["ask", q, "--max-tokens", "40"], capsys)
    assert code == 0, err
    (x,) = llm.chat()
    sent = x["request"]["messages"][-1]
    assert sent["content"] == q and x["request"]["max_tokens"] == 40  # a string: the server keeps it
    assert "response_format" not in x["request"]
    assert x["response"]["usage"]["prompt_tokens"] >= 15  # the question was read (a list of parts gave 7)
    answer = x["response"]["choices"][0]["message"]["content"]
    assert out.strip() == answer.strip()
    # either a parsed verdict/score or the clear line; never silence, never a made-up score
    assert ("score" in err or "anomalous" in err or "normal" in err) or "no usable score" in err


def test_ask_about_an_image_says_the_model_ignored_it(llm, tmp_path, capsys):
    img = _png(tmp_path / "part.png")
    code, _, err = run_cli(["ask", img, "Is this part defective?", "--max-tokens", "32"], capsys)
    assert code == 2 and "ignored the images (no vision?)" in err and "Traceback" not in err
    x, *twin = llm.chat()
    parts = x["request"]["messages"][-1]["content"]
    assert [p["type"] for p in parts] == ["image_url", "text"]
    assert x["response"]["usage"]["prompt_tokens"] < 20  # the server dropped the whole message
    # so short a question cannot tell alone: its text-only twin (one token) settled it
    assert len(twin) <= 1 and all(t["request"]["max_tokens"] == 1 for t in twin)
    assert all(t["response"]["usage"]["prompt_tokens"] > x["response"]["usage"]["prompt_tokens"] for t in twin)


def test_ts_lmm_numbers_only_negotiates_json_and_reads_the_answer(llm, tmp_path, capsys):
    x = np.sin(np.arange(240) / 5.0)
    x[170:174] += 6.0
    csv = tmp_path / "sensor.csv"
    csv.write_text("t,value\n" + "".join(f"{i},{v:.4f}\n" for i, v in enumerate(x)))
    out = tmp_path / "out"
    args = [
        "detect",
        csv,
        "-d",
        "ts-lmm",
        "-p",
        "chart=false",
        "-p",
        "max_values=40",
        "--max-tokens",
        "64",
        "--out",
        out,
    ]
    code, stdout, err = run_cli(args, capsys)
    assert code in (0, 1) and "Traceback" not in err, err
    chats = llm.chat()
    # json_schema refused once with the server's HTTP 500, then JSON mode carrying the schema
    assert chats[0]["status"] == 500 and chats[0]["request"]["response_format"]["type"] == "json_schema"
    assert "response_format" in json.dumps(chats[0]["response"])
    assert chats[1]["status"] == 200 and chats[1]["request"]["response_format"]["type"] == "json_object"
    assert "schema" in chats[1]["request"]["response_format"]
    assert len(chats) == 2
    for c in chats:
        assert c["request"]["max_tokens"] == 64 and all(isinstance(m["content"], str) for m in c["request"]["messages"])
        assert "image_url" not in json.dumps(c["request"])
    (rec,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    answer = chats[1]["response"]["choices"][0]["message"]["content"]
    if rec.get("score") is None:
        assert _unusable(rec["error"]), rec["error"]
    else:  # a score only from what the model said
        assert any(k in answer for k in ('"anomalous"', '"ranges"', '"score"'))


def _mvtec(root: Path) -> Path:
    for sub, n in (("test/good", 2), ("test/crack", 2)):
        (root / sub).mkdir(parents=True)
        for i in range(n):
            _png(root / sub / f"{i:03d}.png", seed=i + (10 if "crack" in sub else 0))
    return root


def test_eval_with_the_text_model_stops_with_one_clear_line(llm, tmp_path, capsys):
    data = _mvtec(tmp_path / "magnetic_tile")
    run_dir = tmp_path / "run"
    args = ["eval", data, "-d", "lmm", "-p", "variant=class", "--max-tokens", "8", "--run-dir", run_dir, "-q"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "Traceback" not in err
    assert "ignored the images (no vision?)" in err
    chats = llm.chat()
    # the first call to a server runs alone: one format refusal, one answer read as "images ignored",
    # and the images waiting behind it are never sent
    assert len(chats) == 2 and chats[0]["status"] == 500
    ok = [c for c in chats if c["status"] == 200]
    assert ok and all(c["response"]["usage"]["prompt_tokens"] < 20 for c in ok)
    sent_text = json.dumps(chats[-1]["request"])
    assert "magnetic tile" in sent_text and "image_url" in sent_text and '"max_tokens": 8' in sent_text
    recs = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert all(r.get("score") is None for r in recs)  # nothing scored from an unread image


def test_video_rules_text_path_reasons_on_descriptions_with_the_text_model(llm, tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(12):
        a = np.full((48, 64, 3), 30, np.uint8)
        a[10:22, 4 * i : 4 * i + 12] = 200
        if 8 <= i < 11:
            a[30:42, 2:14] = (255, 40, 40)
        Image.fromarray(a).save(frames / f"{i:03d}.png")

    def describer(req):
        import re

        idx = [int(m) for m in re.findall(r"Frame (\d+):", FakeOpenAI.text_in(req))]
        desc = [
            {"frame": j, "description": "A red box appears at the lower left." if 8 <= j < 11 else "A grey box slides."}
            for j in idx
        ]
        return reply(json.dumps({"frames": desc}))

    with FakeOpenAI(describer) as vlm:
        settings = json.dumps({"base_url": vlm.base_url, "model": "vlm", "api_key": "none"})
        args = [
            "detect", frames, "-m", "video", "-d", "video-rules", "-p", "mode=text", "-p", f"describer={settings}",
            "-p", "induction_batches=1", "-p", "n_normal_frames=6", "-p", "batch_frames=6", "-p", "window=1",
            "--max-tokens", "120", "--out", tmp_path / "out",
        ]  # fmt: skip
        code, stdout, err = run_cli(args, capsys)
        described = vlm.chat_requests()
    assert code in (0, 1) and "Traceback" not in err, err
    assert described and all(FakeOpenAI.images_in(r) for r in described)  # the frames went to the describer
    chats = llm.chat()
    assert chats and all("image_url" not in json.dumps(c["request"]) for c in chats)  # text only to the text model
    assert all(c["request"]["max_tokens"] == 120 for c in chats)
    assert any("A red box appears" in json.dumps(c["request"]) for c in chats)  # it reasons on the descriptions
    (rec,) = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    if rec.get("score") is None:
        assert "rules" in rec["error"] or "no frame could be judged" in rec["error"], rec["error"]
    else:  # judged frames come from the model's own verdicts
        assert rec["extra"]["verdicts"] and rec["extra"]["rules"]["normal"] + rec["extra"]["rules"]["abnormal"]
