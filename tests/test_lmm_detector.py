"""LMMDetector end to end against the fake server: prompts per variant, reference order,
parsed results, refusals, budget, the evaluator (and its resume), templates overrides."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fake_openai import FakeOpenAI, count_prompt, error, reply
from genad import registry
from genad.engines.lmm.detector import LMMDetector
from genad.engines.lmm.provider import BudgetExceeded
from genad.engines.lmm.templates import load_templates
from genad.errors import ConfigError, GenadError
from genad.types import ImageSample, Knowledge
from lmm_helpers import KEY, config, dominant, grep_tree, set_env, solid

RED, GREEN, BLUE = (230, 20, 20), (20, 230, 20), (20, 20, 230)


def by_last_image(payload: dict):
    """Answer by the colour of the last image sent: red = defective, anything else = good."""
    colour = dominant(FakeOpenAI.images_in(payload)[-1])
    if colour == "red":
        return reply(
            '{"anomalous": true, "anomaly_score": 0.9, "defect_type": "stain", '
            '"location": "centre", "reason": "a red stain covers the part"}'
        )
    return reply(
        '{"anomalous": false, "anomaly_score": 0.1, "defect_type": null, "location": null, '
        '"reason": "looks like the reference"}'
    )


def sample(i: str, rgb, cls="widget", **kw) -> ImageSample:
    return ImageSample(id=i, array=solid(rgb), class_name=cls, **kw)


def test_registry_builds_lmm_without_leaking_the_key(tmp_path):
    det = registry.create("lmm", variant="class", model="m", api_key=KEY, base_url="http://x/v1")
    assert isinstance(det, LMMDetector) and det.batch_size == 8
    assert KEY not in repr(det) and "api_key" not in det.params
    with pytest.raises(GenadError, match="unknown option"):
        registry.create("lmm", temprature=0.3)
    with pytest.raises(GenadError, match="unknown prompt variant"):
        registry.create("lmm", variant="fancy")


def test_zero_shot_scores_parse_and_carry_transcript_and_usage(tmp_path):
    with FakeOpenAI(by_last_image) as srv:
        det = LMMDetector(config=config(srv, tmp_path), variant="naive")
        res = det.predict([sample("a", RED), sample("b", GREEN)])
        req = srv.chat_requests()[0]
    assert [r.sample_id for r in res] == ["a", "b"]
    assert (res[0].score, res[0].decision, res[1].score, res[1].decision) == (0.9, True, 0.1, False)
    assert res[0].explanation == "defect: stain; location: centre; a red stain covers the part"
    assert res[0].usage.prompt_tokens == count_prompt(req) and res[0].usage.cost_usd > 0  # as the server said
    t = res[0].extra["transcript"]
    assert t[-1]["role"] == "assistant" and "red stain" in t[-1]["content"]
    assert t[0]["content"].startswith("<image 1>") and "base64" not in json.dumps(res[0].to_dict())
    text = FakeOpenAI.text_in(req)
    assert "Please determine whether the image contains anomalies or defects" in text
    assert "anomaly_score" in text and req["response_format"]["type"] == "json_schema"


def test_prompt_variants_use_class_name_and_knowledge(tmp_path):
    know = Knowledge(
        normal_standards="Normally, four round candles with centred wicks.", defect_types=["melted wax", "missing wick"]
    )
    with FakeOpenAI([reply('{"anomalous": false, "anomaly_score": 0.2, "reason": "ok"}')]) as srv:
        cfg = config(srv, tmp_path)
        LMMDetector(config=cfg, variant="class").predict([sample("a", GREEN, cls="candle")])
        LMMDetector(config=cfg, variant="expertise").predict([sample("b", GREEN, cls="candle", knowledge=know)])
        LMMDetector(
            config=cfg, variant="expertise", domain="medical", class_name="Head CT", defect_types="hemorrhage"
        ).predict([sample("c", GREEN)])
        texts = [FakeOpenAI.text_in(r) for r in srv.chat_requests()]
        systems = [r["messages"][0] for r in srv.chat_requests()]
    assert "Please determine whether the image given about the candle contains anomalies" in texts[0]
    assert (
        "about the candle contains anomalies or defects. If yes, give a specific reason. Normally, four "
        "round candles with centred wicks. It may have defects such as melted wax or missing wick."
    ) in texts[1]
    assert (
        "Please determine whether this Head CT image contains any anomalies. If yes, please give your "
        "reason. The image given should be classified as normal or hemorrhage."
    ) in texts[2]
    assert systems[2]["role"] == "system" and "not a diagnosis" in systems[2]["content"]
    assert systems[0]["role"] == "user"  # the industrial domain has no system prompt


def test_class_variant_without_a_class_is_a_per_sample_error(tmp_path):
    with FakeOpenAI([reply('{"anomalous": false, "anomaly_score": 0.2, "reason": "ok"}')]) as srv:
        det = LMMDetector(config=config(srv, tmp_path), variant="class")
        res = det.predict([sample("a", GREEN, cls=None), sample("b", GREEN)])
        assert len(srv.chat_requests()) == 1
    assert res[0].score is None and "class name" in res[0].error and res[1].score == 0.2


def test_expertise_without_knowledge_falls_back_and_says_so(tmp_path):
    with FakeOpenAI([reply('{"anomalous": false, "anomaly_score": 0.2, "reason": "ok"}')]) as srv:
        r = LMMDetector(config=config(srv, tmp_path), variant="expertise").predict([sample("a", GREEN)])[0]
    assert "used the class prompt" in r.extra["prompt_note"] and r.ok


def test_few_shot_references_go_first_in_order(tmp_path):
    with FakeOpenAI(by_last_image) as srv:
        det = LMMDetector(config=config(srv, tmp_path), variant="class", max_refs=2)
        det.fit([sample("n1", GREEN), sample("n2", BLUE), sample("n3", BLUE)])
        res = det.predict([sample("q", RED)])
        req = srv.chat_requests()[0]
    colours = [dominant(u) for u in FakeOpenAI.images_in(req)]
    assert colours == ["green", "blue", "red"]  # references (max_refs=2) first, then the image
    assert (
        "The first 2 images given about the widget are normal. Please determine whether the third "
        "image given about the widget contains anomalies"
    ) in FakeOpenAI.text_in(req)
    assert res[0].extra["references"] == ["n1", "n2"] and res[0].decision is True


def test_references_of_the_same_class_are_preferred(tmp_path):
    with FakeOpenAI(by_last_image) as srv:
        det = LMMDetector(config=config(srv, tmp_path))
        det.fit([sample("n1", GREEN, cls="a"), sample("n2", BLUE, cls="b")])
        det.predict([sample("q", RED, cls="b")])
        assert [dominant(u) for u in FakeOpenAI.images_in(srv.chat_requests()[0])] == ["blue", "red"]
        assert "The first image is normal. Please determine whether the second image" in FakeOpenAI.text_in(
            srv.chat_requests()[0]
        )


def test_gpt4v_ad_text_answers_and_json_off(tmp_path):
    with FakeOpenAI([reply("image anomaly score: 0.7; region 2: 0.8.")]) as srv:
        r = LMMDetector(config=config(srv, tmp_path, json_mode="off")).predict([sample("a", RED)])[0]
        req = srv.chat_requests()[0]
    assert "response_format" not in req and "image anomaly score: X" in FakeOpenAI.text_in(req)
    assert r.score == 0.7 and r.decision is True and r.extra["answer"]["region_scores"] == {2: 0.8}


def test_refusal_malformed_and_yes_no_answers(tmp_path):
    answers = {
        "red": reply("I'm sorry, but I can't help with that request."),
        "green": reply('{"anomalous": false, "anomaly_score": 0.15, "reason": "clean surf'),
        "blue": reply("Yes, there is a scratch on the part."),
    }
    with FakeOpenAI(lambda p: answers[dominant(FakeOpenAI.images_in(p)[-1])]) as srv:
        det = LMMDetector(config=config(srv, tmp_path))
        res = det.predict([sample("r", RED), sample("g", GREEN), sample("b", BLUE)])
    assert res[0].score is None and res[0].error == "no usable score: the model refused to answer"
    assert res[0].extra["refusal"] is True and "can't help" in res[0].explanation and not res[0].ok
    assert res[1].score == 0.15 and res[1].decision is False
    assert res[2].score == 1.0 and res[2].decision is True and res[2].extra["score_source"] == "decision"


def test_http_failure_on_one_sample_does_not_stop_the_others(tmp_path):
    def script(p):
        return error(400, "image too large") if dominant(FakeOpenAI.images_in(p)[-1]) == "blue" else by_last_image(p)

    with FakeOpenAI(script) as srv:
        res = LMMDetector(config=config(srv, tmp_path)).predict(
            [sample("a", RED), sample("b", BLUE), sample("c", GREEN)]
        )
    assert res[0].score == 0.9 and res[2].score == 0.1
    assert res[1].score is None and "image too large" in res[1].error


def test_budget_stops_the_batch(tmp_path):
    with FakeOpenAI(by_last_image) as srv:
        det = LMMDetector(config=config(srv, tmp_path, budget_usd=1e-6))
        with pytest.raises(BudgetExceeded):
            det.predict([sample("a", RED)])
        assert srv.chat_requests() == []


def test_missing_configuration_is_one_clear_error(tmp_path, monkeypatch):
    for k in ("GENAD_LMM_MODEL", "GENAD_LMM_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("GENAD_CONFIG", str(tmp_path / "none.toml"))
    with pytest.raises(ConfigError, match="GENAD_LMM_MODEL"):
        registry.create("lmm").predict([sample("a", RED)])


def test_regions_delegate_to_text2seg(tmp_path):
    img = np.zeros((64, 64, 3), np.uint8)
    with FakeOpenAI([reply("image anomaly score: 0.8; region 4: 0.9.")]) as srv:
        det = LMMDetector(config=config(srv, tmp_path, json_mode="off"), regions="grid", n_regions=2)
        r = det.predict([ImageSample(id="x", array=img)])[0]
        n_images = len(FakeOpenAI.images_in(srv.chat_requests()[0]))
    assert r.score == 0.8 and r.anomaly_map.shape == (64, 64)
    assert r.anomaly_map[40:, 40:].min() == pytest.approx(0.9) and r.anomaly_map[:30, :30].max() == 0
    assert n_images == 2 and "transcript" in r.extra and r.visual_prompt.image is None


def test_user_templates_override_key_by_key(tmp_path):
    d = tmp_path / "prompts"
    d.mkdir()
    (d / "industrial.toml").write_text('[zero_shot]\nnaive = "Inspect this $object part. Any faults?"\n')
    (d / "textile.toml").write_text('[zero_shot]\nnaive = "Is the fabric flawed?"\n')
    t = load_templates(d)
    assert t.render("industrial", "naive", 0, "gear")[0] == "Inspect this gear part. Any faults?"
    assert t.render("industrial", "class", 0, "gear")[0].startswith(
        "Please determine whether the image given about the gear"
    )
    assert "textile" in t.domains
    with FakeOpenAI([reply('{"anomalous": false, "anomaly_score": 0.0, "reason": "ok"}')]) as srv:
        det = LMMDetector(config=config(srv, tmp_path, prompts_dir=d), domain="textile")
        det.predict([sample("a", GREEN)])
        assert FakeOpenAI.text_in(srv.chat_requests()[0]).startswith("Is the fabric flawed?")
    with pytest.raises(GenadError, match="unknown prompt domain"):
        t.domain("nope")


def _mvtec(root: Path) -> Path:
    """A tiny MVTec-style category: red images are the defective ones."""
    for sub, rgb, n in (("train/good", GREEN, 2), ("test/good", GREEN, 3), ("test/stain", RED, 3)):
        (root / sub).mkdir(parents=True)
        for i in range(n):
            a = solid(rgb, 32, 32)
            a[0, 0] = i  # distinct files, same colour
            Image.fromarray(a).save(root / sub / f"{i:03d}.png")
    return root


def test_genad_eval_with_lmm_and_resume_costs_nothing(tmp_path, monkeypatch):
    from genad.evaluate import run_benchmark

    data = _mvtec(tmp_path / "widget")
    with FakeOpenAI(by_last_image) as srv:
        set_env(monkeypatch, srv, tmp_path)
        run = run_benchmark(data, "lmm", {"variant": "class"}, shots=1, run_dir=tmp_path / "run", progress=False)
        n = len(srv.chat_requests())
        again = run_benchmark(data, "lmm", {"variant": "class"}, shots=1, run_dir=tmp_path / "run2", progress=False)
        assert len(srv.chat_requests()) == n == 6  # the second run is served from the cache
    assert run.summary["image_auroc"] == 1.0 and again.summary["image_auroc"] == 1.0
    recs = [json.loads(x) for x in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 6 and all(r["extra"]["transcript"] for r in recs)
    assert grep_tree(tmp_path, KEY) == []  # not in results, cache or summary


def test_command_line_aliases_and_config_file(tmp_path, monkeypatch):
    with FakeOpenAI(by_last_image) as srv:
        set_env(monkeypatch, srv, tmp_path)
        f = tmp_path / "my.toml"
        f.write_text('[lmm]\nmodel = "gpt-4o-mini"\nretry_base_delay = 0.001\n')
        monkeypatch.delenv("GENAD_LMM_MODEL")
        det = registry.create("lmm", config=str(f), budget=5, concurrency=2, prompts=str(tmp_path))
        cfg = det.client.config
        assert (cfg.model, cfg.budget_usd, cfg.max_concurrency, cfg.prompts_dir) == ("gpt-4o-mini", 5, 2, tmp_path)
        assert det.predict([sample("a", RED)])[0].score == 0.9
        assert srv.chat_requests()[0]["model"] == "gpt-4o-mini"
