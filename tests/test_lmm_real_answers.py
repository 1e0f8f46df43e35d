"""The LMM-backed detectors when the server or the model misbehaves as real ones do: prompts
echoed back, placeholders copied, answers cut at max_tokens, a server that fails mid-run or
ignores the images. What came back is either a parsed answer or a clear "no usable answer",
never an invented score, and a run that must stop keeps every answer it received."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

import genad
from fake_openai import FakeOpenAI, error, reply
from foundation_helpers import run_cli
from genad.engines.lmm.detector import LMMDetector
from genad.modalities.video.rules import aggregate_rules
from genad.types import ImageSample, TimeSeriesSample, VideoSample
from lmm_helpers import config, dominant, set_env, solid
from video_helpers import moving_square_frames

RED, GREEN = (230, 20, 20), (20, 230, 20)


def _sample(i: str, rgb) -> ImageSample:
    return ImageSample(id=i, array=solid(rgb), class_name="magnetic_tile")


def test_an_echo_of_the_prompt_or_its_placeholders_is_no_answer(tmp_path):
    def echo(req):
        text = FakeOpenAI.text_in(req)
        if "second" in FakeOpenAI.images_in(req)[-1][:0] or len(FakeOpenAI.images_in(req)) > 1:
            return reply("image anomaly score: X; defect type: T; location: L.")
        return reply(text.split("\n\n")[0] + " mendatang\n" + text.split("\n\n")[0])  # gemma-270m-style echo

    with FakeOpenAI(echo) as srv:
        det = LMMDetector(config=config(srv, tmp_path, json_mode="off"), variant="class")
        (zero,) = det.predict([_sample("a", RED)])
        det.fit([_sample("ref", GREEN)])
        (few,) = det.predict([_sample("b", RED)])
        asked = FakeOpenAI.text_in(srv.chat_requests()[0])
    # "whether the image given about the magnetic tile contains anomalies" is the question, not a verdict
    assert "the magnetic tile contains anomalies" in asked and "magnetic_tile" not in asked
    for r in (zero, few):
        assert r.score is None and r.decision is None and r.error.startswith("no usable score")
        assert r.extra["reply"]  # kept verbatim
    assert "repeated the prompt" in zero.error


def test_an_answer_cut_at_max_tokens_says_how_to_fix_it(tmp_path):
    cut = reply("<think>The tile has a dark line near the top edge. It could be a crack, or", finish_reason="length")
    with FakeOpenAI([cut]) as srv:
        det = LMMDetector(config=config(srv, tmp_path), max_tokens=40)
        (r,) = det.predict([_sample("a", RED)])
        assert srv.chat_requests()[0]["max_tokens"] == 40
    assert r.score is None and "cut off at max_tokens=40" in r.error and "--max-tokens" in r.error


def test_a_reasoning_models_final_answer_counts_not_its_thoughts(tmp_path):
    text = (
        "<think>First impression: anomaly score 0.2, looks normal. But the lower edge has a chip. "
        "So it is defective, maybe 0.9.</think>\n"
        '{"reason": "a chip on the lower edge", "anomalous": true, "anomaly_score": 0.85}'
    )
    with FakeOpenAI([reply(text)]) as srv:
        (r,) = LMMDetector(config=config(srv, tmp_path)).predict([_sample("a", RED)])
    assert r.score == 0.85 and r.decision is True and "chip" in r.explanation


def _mvtec(root):
    for sub, rgb, n in (("test/good", GREEN, 4), ("test/stain", RED, 4)):
        (root / sub).mkdir(parents=True)
        for i in range(n):
            a = solid(rgb, 32, 32)
            a[0, 0] = i
            Image.fromarray(a).save(root / sub / f"{i:03d}.png")
    return root


def test_a_server_failing_mid_run_stops_eval_with_one_line_and_keeps_every_answer(tmp_path, monkeypatch, capsys):
    data = _mvtec(tmp_path / "widget")
    state = {"n": 0}

    def flaky(req):
        state["n"] += 1
        if state["n"] > 3:
            return error(503, "model overloaded")
        red = dominant(FakeOpenAI.images_in(req)[-1]) == "red"
        return reply(json.dumps({"reason": "r", "anomalous": red, "anomaly_score": 0.9 if red else 0.1}))

    run_dir = tmp_path / "run"
    with FakeOpenAI(flaky) as srv:
        set_env(monkeypatch, srv, tmp_path)
        (tmp_path / "config.toml").write_text("[lmm]\nretry_base_delay = 0.001\nmax_retries = 0\nmax_concurrency = 1\n")
        args = ["eval", data, "-d", "lmm", "--run-dir", run_dir, "-p", "batch_size=2", "--max-tokens", "50", "-q"]
        code, out, err = run_cli(args, capsys)
        sent = srv.chat_requests()
    assert code == 2 and "Traceback" not in err
    assert "failed 3 requests in a row" in err and len(err.strip().splitlines()) <= 3
    assert len(sent) == 6 and all(r["max_tokens"] == 50 for r in sent)  # 3 answers, 3 failures, then nothing
    recs = [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]
    scored = [r for r in recs if r.get("score") is not None]
    assert len(scored) == 3  # every answer received is kept
    # resumed against a healthy server: only what failed is asked again; answers came from the cache
    with FakeOpenAI(lambda req: reply('{"reason": "r", "anomalous": false, "anomaly_score": 0.1}')) as srv2:
        set_env(monkeypatch, srv2, tmp_path)
        code2, _, err2 = run_cli([*args, "--resume"], capsys)
        assert code2 == 0, err2
        assert len(srv2.chat_requests()) == 8 - 3


def test_eval_with_a_model_that_ignores_images_stops_at_the_first_answer(tmp_path, monkeypatch, capsys):
    data = _mvtec(tmp_path / "widget")
    with FakeOpenAI([reply("(1)\n(2)\n(3)", prompt_tokens=7)]) as srv:
        set_env(monkeypatch, srv, tmp_path)
        code, _, err = run_cli(["eval", data, "-d", "lmm", "--run-dir", tmp_path / "r", "-q"], capsys)
        sent = len(srv.chat_requests())
    assert code == 2 and "ignored the images (no vision?)" in err and "Traceback" not in err
    assert sent <= 4  # the requests of the first chunk in flight at most, then the run stopped


def test_ts_lmm_numbers_only_for_text_models(tmp_path):
    x = np.sin(np.arange(400) / 6.0)
    x[300:305] += 6
    answer = (
        '{"ranges": [{"reason": "spike", "start": 300, "end": 305, "score": 0.9}], "anomalous": true, "score": 0.9}'
    )
    with FakeOpenAI([reply(answer)]) as srv:
        det = genad.create("ts-lmm", chart=False, base_url=srv.base_url, model="text-llm", api_key="k", cache_dir=None)
        (r,) = det.predict([TimeSeriesSample(id="s", values=x)])
        req = srv.chat_requests()[0]
    assert FakeOpenAI.images_in(req) == [] and isinstance(req["messages"][1]["content"], str)
    assert "line chart" not in req["messages"][0]["content"] and "as numbers" in req["messages"][0]["content"]
    assert "300-" in req["messages"][1]["content"] or "300:" in req["messages"][1]["content"]
    assert r.ranges == [(300, 305)] and r.decision is True


def test_ts_lmm_a_copied_example_is_no_answer(tmp_path):
    # an answer equal to a JSON example written in the prompt: the fake copies whatever it finds
    def copier(req):
        text = FakeOpenAI.text_in(req)
        assert '"anomalous": <true or false>' in text  # the prompt's form, copied below
        return reply('{"ranges": [], "anomalous": <true or false>, "score": <0 to 1>}')

    with FakeOpenAI(copier) as srv:
        det = genad.create("ts-lmm", base_url=srv.base_url, model="m", api_key="k", cache_dir=None)
        (r,) = det.predict([TimeSeriesSample(id="s", values=np.sin(np.arange(200) / 5.0))])
    assert r.score is None and r.error.startswith("no usable answer")


def test_rule_aggregation_keeps_what_recurs():
    batches = [
        ["People walk on the walkway", "Cars stay on the road", "A dog runs"],
        ["people are walking on the walkway", "cars stay on the road only"],
        ["People walk along the walkway", "Bicycles are parked"],
    ]
    assert aggregate_rules(batches) == ["People walk on the walkway", "Cars stay on the road"]
    assert aggregate_rules([["only one batch rule here"]]) == ["only one batch rule here"]
    # nothing recurs in a majority: the rules of the batch that shares most with the others
    assert aggregate_rules([["aaa bbb ccc"], ["ddd eee fff"]]) == ["aaa bbb ccc"]


def _red(url: str) -> bool:
    import base64
    import io

    a = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")).astype(int)
    return bool(((a[..., 0] > 180) & (a[..., 1] < 100)).mean() > 0.005)


def test_video_rules_text_path_a_vlm_describes_and_a_text_llm_reasons(tmp_path):
    def describer(req):
        frames = [int(m) for m in re.findall(r"Frame (\d+):", FakeOpenAI.text_in(req))]
        items = [
            {"frame": j, "description": "a red ball enters the walkway" if _red(u) else "a grey square slides right"}
            for j, u in zip(frames, FakeOpenAI.images_in(req))
        ]
        return reply(json.dumps({"frames": items}))

    def text_llm(req):
        text = FakeOpenAI.text_in(req)
        assert FakeOpenAI.images_in(req) == []
        if "Derive rules of ABNORMAL" in text:
            return reply('{"rules": ["a red object appears on the walkway"]}')
        if "Induce rules of normal" in text:
            return reply('{"rules": ["a grey square slides to the right", "..."]}')
        lines = re.findall(r"Frame (\d+): (.+)", text)
        out = [
            {"frame": int(j), "reason": d, "rule": "A1" if "red" in d else None, "anomalous": "red" in d}
            for j, d in lines
        ]
        return reply(json.dumps({"frames": out}))

    frames = moving_square_frames(80)
    truth = np.array([_has_red_frame(f) for f in frames])
    with FakeOpenAI(describer) as vlm, FakeOpenAI(text_llm) as llm:
        det = genad.create(
            "video-rules",
            mode="text",
            describer={"base_url": vlm.base_url, "model": "vlm"},
            base_url=llm.base_url,
            model="text-only",
            api_key="k",
            cache_dir=str(tmp_path / "c"),
            window=1,
            induction_batches=2,
        )
        det.fit([VideoSample(id="normal", frames=moving_square_frames(40, anomaly=False))])
        (r,) = det.predict([VideoSample(id="v", frames=frames)])
        assert all(FakeOpenAI.images_in(q) == [] for q in llm.chat_requests())
        assert all(FakeOpenAI.images_in(q) for q in vlm.chat_requests())
    assert det.rules_.normal == ["a grey square slides to the right"]  # the placeholder "..." is no rule
    assert det.rules_.abnormal == ["a red object appears on the walkway"]
    flagged = np.zeros(len(frames), bool)
    for a, b in r.ranges:
        flagged[a:b] = True
    assert truth.any() and (flagged == truth).all()


def _has_red_frame(f: np.ndarray) -> bool:
    a = f.astype(int)
    return bool(((a[..., 0] > 180) & (a[..., 1] < 100)).mean() > 0.005)


def test_video_rules_text_path_reads_given_descriptions_without_a_describer(tmp_path):
    def text_llm(req):
        text = FakeOpenAI.text_in(req)
        lines = re.findall(r"Frame (\d+): (.+)", text)
        out = [
            {"frame": int(j), "reason": d, "anomalous": "fire" in d, "score": 0.9 if "fire" in d else 0.1}
            for j, d in lines
        ]
        return reply(json.dumps({"frames": out}))

    descs = ["a quiet corridor"] * 6 + ["fire and smoke in the corridor"] * 4
    v = VideoSample(id="v", frames=np.zeros((10, 8, 8, 3), np.uint8), meta={"frame_descriptions": descs})
    with FakeOpenAI(text_llm) as llm:
        det = genad.create(
            "video-rules",
            mode="text",
            rules={"normal": ["the corridor is quiet"], "abnormal": ["fire"]},
            base_url=llm.base_url,
            model="t",
            api_key="k",
            cache_dir=None,
            window=1,
            batch_frames=5,
        )
        (r,) = det.predict([v])
        assert len(llm.chat_requests()) == 2
    assert r.ranges == [(6, 10)]


def test_describer_settings_are_checked():
    from genad.errors import GenadError

    with pytest.raises(GenadError, match="describer takes"):
        genad.create("video-rules", mode="text", describer={"modle": "x"})


def test_max_tokens_flag_reaches_every_lmm_call(tmp_path, monkeypatch, capsys):
    img = tmp_path / "part.png"
    Image.fromarray(solid(RED)).save(img)
    with FakeOpenAI([reply('{"reason": "r", "anomalous": true, "anomaly_score": 0.8}')]) as srv:
        set_env(monkeypatch, srv, tmp_path)
        code, out, err = run_cli(["detect", img, "-d", "lmm", "--max-tokens", "33"], capsys)
        assert code == 0, err
        code, out, err = run_cli(["ask", img, "Is it defective?", "--max-tokens", "21", "--no-cache"], capsys)
        assert code == 0, err
        code, _, err = run_cli(["detect", img, "--max-tokens", "5"], capsys)  # the embedded engine asks no model
        assert code == 2 and "max_tokens" in err
        assert [r["max_tokens"] for r in srv.chat_requests()] == [33, 21]


def test_induced_rules_that_are_only_placeholders_are_no_rules(tmp_path):
    from genad.errors import GenadError

    copied = reply('{"description": "...", "normal_rules": ["..."], "abnormal_rules": ["..."]}')
    with FakeOpenAI([copied]) as srv:
        det = genad.create("video-rules", base_url=srv.base_url, model="m", api_key="k", cache_dir=None)
        with pytest.raises(GenadError, match="induced no rules"):
            det.fit([VideoSample(id="n", frames=moving_square_frames(8, anomaly=False))])


def test_an_unusable_answer_is_not_cached_so_a_resumed_run_asks_again(tmp_path):
    script = [
        reply("I'm sorry, I can't help with that."),
        reply('{"reason": "ok", "anomalous": false, "anomaly_score": 0.1}'),
    ]
    with FakeOpenAI(script) as srv:
        det = LMMDetector(config=config(srv, tmp_path))
        (first,) = det.predict([_sample("a", RED)])
        assert first.error.startswith("no usable score") and "refused" in first.error
        (second,) = det.predict([_sample("a", RED)])  # the refusal was not kept in the cache
        assert second.score == 0.1 and len(srv.chat_requests()) == 2
        (third,) = det.predict([_sample("a", RED)])  # a usable answer is
        assert third.score == 0.1 and len(srv.chat_requests()) == 2 and third.extra["cached"]
