"""LMMClient against a real HTTP server through the real openai SDK: what is sent, retries,
timeouts, structured-output fallback, cache, budget, configuration and secrets."""

from __future__ import annotations

import json
import logging
import threading
import time

import numpy as np
import pytest

from fake_openai import FakeOpenAI, error, reply, slow
from genad.engines.lmm.config import LMMConfig
from genad.engines.lmm.parse import ANSWER_SCHEMA
from genad.engines.lmm.pricing import PriceTable, image_tokens
from genad.engines.lmm.provider import (
    BudgetExceeded,
    LMMClient,
    LMMRequestError,
    RateLimiter,
    system,
    user,
)
from genad.errors import ConfigError
from lmm_helpers import KEY, config, decode, dominant, grep_tree, solid


def test_images_sent_as_downscaled_data_urls_in_order(tmp_path):
    with FakeOpenAI([reply("ok")]) as srv:
        c = LMMClient(config(srv, tmp_path, max_image_side=128, detail="low"))
        big = solid((255, 0, 0), h=300, w=600)
        c.chat([system("be brief"), user(big, "between", solid((0, 0, 255)), "question?")])
        req = srv.chat_requests()[0]
    urls = FakeOpenAI.images_in(req)
    assert [dominant(u) for u in urls] == ["red", "blue"]
    assert decode(urls[0]).shape[:2] == (64, 128)  # longest side 600 -> 128, aspect kept
    assert decode(urls[1]).shape[:2] == (64, 96)  # small images are not upscaled
    parts = req["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["image_url", "text", "image_url", "text"]
    assert all(p["image_url"]["detail"] == "low" for p in parts if p["type"] == "image_url")
    assert req["messages"][0] == {"role": "system", "content": "be brief"}
    assert req["model"] == "gpt-4o" and req["temperature"] == 0.0
    headers = {k.lower(): v for k, v in srv.requests[0]["headers"].items()}
    assert headers["authorization"] == f"Bearer {KEY}"


def test_path_and_pil_images_and_extra_headers(tmp_path):
    from PIL import Image

    p = tmp_path / "g.png"
    Image.fromarray(solid((0, 255, 0))).save(p)
    with FakeOpenAI([reply("ok")]) as srv:
        c = LMMClient(config(srv, tmp_path, extra_headers={"X-Team": "qa"}))
        c.chat([user(p, Image.fromarray(solid((255, 0, 0))), "?")])
        assert {k.lower(): v for k, v in srv.requests[0]["headers"].items()}["x-team"] == "qa"
        assert [dominant(u) for u in FakeOpenAI.images_in(srv.chat_requests()[0])] == ["green", "red"]


def test_429_then_success_is_retried_and_counted(tmp_path):
    script = [
        error(429, headers={"Retry-After": "0"}),
        error(429),
        reply("fine", prompt_tokens=1000, completion_tokens=100),
    ]
    with FakeOpenAI(script) as srv:
        c = LMMClient(config(srv, tmp_path))
        r = c.chat([user("hi")])
        assert len(srv.chat_requests()) == 3
    assert r.text == "fine" and r.retries == 2 and c.retries_total == 2
    # gpt-4o: $2.50 / 1M in, $10 / 1M out
    assert r.usage.cost_usd == pytest.approx(1000 * 2.5e-6 + 100 * 10e-6)
    assert c.usage_total.calls == 1 and c.usage_total.prompt_tokens == 1000


def test_retry_after_is_honoured(tmp_path):
    waits: list[float] = []
    with FakeOpenAI([error(503, headers={"Retry-After": "7"}), reply("ok")]) as srv:
        c = LMMClient(config(srv, tmp_path), sleep=waits.append)
        assert c.chat([user("hi")]).text == "ok"
    assert waits == [7.0]


def test_backoff_grows_exponentially(tmp_path):
    waits: list[float] = []
    with FakeOpenAI([error(500)] * 3 + [reply("ok")]) as srv:
        c = LMMClient(config(srv, tmp_path, retry_base_delay=1.0), sleep=waits.append)
        c.chat([user("hi")])
    assert len(waits) == 3
    for i, w in enumerate(waits):  # base * 2^i * (1 + jitter in [0, 1))
        assert 2**i <= w < 2 ** (i + 1)


def test_persistent_500_gives_up_after_max_retries(tmp_path):
    with FakeOpenAI([error(500, "boom")]) as srv:
        c = LMMClient(config(srv, tmp_path, max_retries=2))
        with pytest.raises(LMMRequestError, match="HTTP 500"):
            c.chat([user("hi")])
        assert len(srv.chat_requests()) == 3


def test_slow_answer_past_timeout_is_retried_then_fails(tmp_path):
    with FakeOpenAI([slow(3.0, reply("late"))]) as srv:
        c = LMMClient(config(srv, tmp_path, timeout=0.4, max_retries=1))
        t0 = time.perf_counter()
        with pytest.raises(LMMRequestError, match="within 0.4s"):
            c.chat([user("hi")])
        assert time.perf_counter() - t0 < 2.5
        assert len(srv.chat_requests()) == 2 and c.retries_total == 1


def test_slow_then_fast_succeeds(tmp_path):
    with FakeOpenAI([slow(3.0, reply("late")), reply("quick")]) as srv:
        c = LMMClient(config(srv, tmp_path, timeout=0.4, max_retries=2))
        assert c.chat([user("hi")]).text == "quick"


def test_400_is_not_retried(tmp_path):
    with FakeOpenAI([error(400, "bad image")]) as srv:
        c = LMMClient(config(srv, tmp_path))
        with pytest.raises(LMMRequestError, match="bad image"):
            c.chat([user("hi")])
        assert len(srv.chat_requests()) == 1


def test_401_is_a_config_error_without_the_key(tmp_path):
    with FakeOpenAI([error(401, "invalid key")]) as srv:
        c = LMMClient(config(srv, tmp_path))
        with pytest.raises(ConfigError, match="GENAD_LMM_API_KEY") as ei:
            c.chat([user("hi")])
    assert KEY not in str(ei.value)


def test_unreachable_server_is_one_clear_config_error(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    cfg = LMMConfig(
        base_url=f"http://127.0.0.1:{port}/v1", model="m", api_key=KEY, cache_dir=None, retry_base_delay=0.001
    )
    with pytest.raises(ConfigError, match="cannot reach the LMM server.*GENAD_LMM_BASE_URL"):
        LMMClient(cfg).chat([user("hi")])


def test_structured_output_falls_back_once_when_rejected(tmp_path):
    answer = '{"anomalous": true, "anomaly_score": 0.8, "reason": "crack"}'
    with FakeOpenAI([error(400, "Unsupported parameter: response_format json_schema"), reply(answer)]) as srv:
        c = LMMClient(config(srv, tmp_path))
        r1 = c.chat([user("one")], schema=ANSWER_SCHEMA)
        r2 = c.chat([user("two")], schema=ANSWER_SCHEMA)
        reqs = srv.chat_requests()
    assert reqs[0]["response_format"]["type"] == "json_schema"
    assert reqs[0]["response_format"]["json_schema"]["schema"] == ANSWER_SCHEMA
    # json_schema refused: JSON mode with the schema (as llama-cpp-python takes it) from then on,
    # remembered (no second refusal)
    assert reqs[1]["response_format"] == reqs[2]["response_format"] == {"type": "json_object", "schema": ANSWER_SCHEMA}
    assert len(reqs) == 3
    assert r1.data == {"anomalous": True, "anomaly_score": 0.8, "reason": "crack"} and r2.data == r1.data
    assert r1.json_mode_used == "object_schema"


def test_json_mode_object_and_off(tmp_path):
    with FakeOpenAI([reply("{}")]) as srv:
        LMMClient(config(srv, tmp_path, json_mode="object")).chat([user("a JSON please")], schema=ANSWER_SCHEMA)
        LMMClient(config(srv, tmp_path, json_mode="off")).chat([user("b")], schema=ANSWER_SCHEMA)
        reqs = srv.chat_requests()
    assert reqs[0]["response_format"] == {"type": "json_object"}
    assert "response_format" not in reqs[1]


def test_cache_makes_a_rerun_free_and_never_holds_the_key(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    img = solid((255, 0, 0))
    with FakeOpenAI([error(429), reply("image anomaly score: 0.9")]) as srv:
        c1 = LMMClient(config(srv, tmp_path))
        r1 = c1.chat([user(img, "score?")])
        n = len(srv.chat_requests())
        c2 = LMMClient(config(srv, tmp_path))  # a new process, same cache dir
        r2 = c2.chat([user(img, "score?")])
        assert len(srv.chat_requests()) == n == 2
        # a different image is a different request
        c2.chat([user(solid((0, 0, 255)), "score?")])
        assert len(srv.chat_requests()) == 3
    assert not r1.cached and r2.cached and r2.text == r1.text
    assert r2.usage.cost_usd == 0 and c2.usage_total.cached_calls == 1 and c2.usage_total.calls == 1
    files = list((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 2
    assert json.loads(files[0].read_text())["text"]
    assert grep_tree(tmp_path / "cache", KEY) == []
    assert KEY not in caplog.text and "retry 1/4" in caplog.text


def test_cache_key_ignores_the_api_key_but_not_the_server_or_model(tmp_path):
    with FakeOpenAI([reply("a")]) as srv:
        LMMClient(config(srv, tmp_path)).chat([user("q")])
        other_key = LMMConfig(
            base_url=srv.base_url, model="gpt-4o", api_key="sk-other-key", cache_dir=tmp_path / "cache"
        )
        assert LMMClient(other_key).chat([user("q")]).cached
        assert not LMMClient(config(srv, tmp_path, model="gpt-4o-mini")).chat([user("q")]).cached
        assert len(srv.chat_requests()) == 2


def test_budget_refuses_before_spending_and_counts_actual_usage(tmp_path):
    # each answer: 100 prompt tokens at $2.50/1M + 20 completion tokens at $10/1M = $0.00045;
    # the estimate before a call (short prompt, max_tokens=20) is about $0.0002
    with FakeOpenAI([reply("ok", prompt_tokens=100)]) as srv:
        c = LMMClient(config(srv, tmp_path, budget_usd=0.001))
        c.chat([user("one")], max_tokens=20)
        c.chat([user("two")], max_tokens=20)
        assert c.usage_total.cost_usd == pytest.approx(2 * 0.00045)
        with pytest.raises(BudgetExceeded, match="budget"):
            c.chat([user("three")], max_tokens=20)
        assert len(srv.chat_requests()) == 2
        # a cached answer costs nothing and is still served
        assert c.chat([user("one")], max_tokens=20).cached


def test_budget_estimate_counts_images(tmp_path):
    with FakeOpenAI([reply("ok")]) as srv:
        c = LMMClient(config(srv, tmp_path, budget_usd=0.0005, detail="high"))
        # a 768x768 image is 4 tiles: 85 + 680 = 765 tokens -> ~$0.0019 before any answer
        with pytest.raises(BudgetExceeded):
            c.chat([user(solid((1, 2, 3), 768, 768), "?")])
        assert srv.chat_requests() == []
    assert image_tokens(768, 768, "high") == 765 and image_tokens(4000, 100, "low") == 85


def test_budget_with_unknown_price_is_a_config_error(tmp_path):
    with FakeOpenAI([reply("ok")]) as srv:
        c = LMMClient(config(srv, tmp_path, model="llava-local", budget_usd=1.0))
        with pytest.raises(ConfigError, match="no price"):
            c.chat([user("q")])


def test_price_table_defaults_prefixes_and_user_file(tmp_path):
    t = PriceTable()
    assert t.cost("gpt-4o", 1_000_000, 0) == 2.5
    assert t.cost("gpt-4o-mini-2024-07-18", 0, 1_000_000) == 0.6  # longest prefix wins
    assert t.cost("openai/gpt-4.1", 1_000_000, 1_000_000) == 10.0
    assert t.cost("my-llava", 10**6, 10**6) == 0 and "no price" in t.note("my-llava")
    f = tmp_path / "prices.toml"
    f.write_text('[my-llava]\ninput = 1.0\noutput = 3.0\n["gpt-4o"]\ninput = 5.0\noutput = 10.0\n')
    t2 = PriceTable(f)
    assert t2.cost("my-llava", 10**6, 10**6) == 4.0 and t2.cost("gpt-4o", 10**6, 0) == 5.0
    j = tmp_path / "prices.json"
    j.write_text(json.dumps({"x": {"input": 1, "output": 2}}))
    assert PriceTable(j).cost("x", 0, 10**6) == 2.0


def test_unknown_model_costs_zero_with_note(tmp_path):
    with FakeOpenAI([reply("ok", prompt_tokens=100)]) as srv:
        c = LMMClient(config(srv, tmp_path, model="llava-local"))
        r = c.chat([user("q")])
    assert r.usage.cost_usd == 0 and r.usage.prompt_tokens == 100 and "llava-local" in c.price_note


def test_chat_many_bounds_concurrency_and_keeps_order(tmp_path):
    def script(payload):
        text = FakeOpenAI.text_in(payload)
        return slow(0.15, reply("echo " + text)) if text != "q3" else error(400, "nope")

    with FakeOpenAI(script) as srv:
        c = LMMClient(config(srv, tmp_path, max_concurrency=3, cache_dir=None))
        live, peak, lock = [0], [0], threading.Lock()
        inner = c._call_with_retries

        def counted(*a, **kw):
            with lock:
                live[0] += 1
                peak[0] = max(peak[0], live[0])
            try:
                return inner(*a, **kw)
            finally:
                with lock:
                    live[0] -= 1

        c._call_with_retries = counted
        out = c.chat_many([{"messages": [user(f"q{i}")]} for i in range(8)])
    assert peak[0] == 3
    assert [o.text if not isinstance(o, Exception) else "ERR" for o in out] == [
        "echo q0",
        "echo q1",
        "echo q2",
        "ERR",
        "echo q4",
        "echo q5",
        "echo q6",
        "echo q7",
    ]
    assert isinstance(out[3], LMMRequestError)


def test_rate_limiter_spaces_requests():
    rl = RateLimiter(per_minute=600)  # one per 0.1 s
    t0 = time.perf_counter()
    for _ in range(4):
        rl.wait()
    assert 0.28 <= time.perf_counter() - t0 < 1.0
    RateLimiter(None).wait()  # no limit: no wait


def test_from_env_precedence_and_errors(tmp_path, monkeypatch):
    for k in ("GENAD_LMM_BASE_URL", "GENAD_LMM_MODEL", "GENAD_LMM_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("GENAD_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match="GENAD_LMM_MODEL"):
        LMMConfig.from_env()
    monkeypatch.setenv("GENAD_LMM_MODEL", "gpt-4o")
    with pytest.raises(ConfigError, match="GENAD_LMM_API_KEY"):
        LMMConfig.from_env()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fallback")
    cfg = LMMConfig.from_env()
    assert cfg.api_key == "sk-fallback" and cfg.base_url == "https://api.openai.com/v1"
    assert "sk-fallback" not in repr(cfg)
    f = tmp_path / "c.toml"
    f.write_text(
        '[lmm]\nmodel = "from-file"\nbase_url = "http://file/v1"\ntimeout = 5\n'
        'api_key_env = "MY_KEY"\nmax_image_side = 512\n[lmm.extra_headers]\nX-A = "1"\n'
    )
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("MY_KEY", "sk-from-my-key")
    monkeypatch.delenv("GENAD_LMM_MODEL")
    cfg = LMMConfig.from_env(f)
    assert (cfg.model, cfg.base_url, cfg.timeout, cfg.api_key, cfg.max_image_side, cfg.extra_headers) == (
        "from-file",
        "http://file/v1",
        5.0,
        "sk-from-my-key",
        512,
        {"X-A": "1"},
    )
    monkeypatch.setenv("GENAD_LMM_MODEL", "from-env")
    assert LMMConfig.from_env(f).model == "from-env"  # env beats file
    assert LMMConfig.from_env(f, model="from-flag", timeout=None).model == "from-flag"  # flags beat env
    with pytest.raises(ConfigError, match="does not exist"):
        LMMConfig.from_env(tmp_path / "nope.toml")
    f.write_text('[lmm]\nmodle = "typo"\n')
    with pytest.raises(ConfigError, match="modle"):
        LMMConfig.from_env(f)
    monkeypatch.setenv("GENAD_CACHE_DIR", str(tmp_path / "cc"))
    f.write_text("")
    assert LMMConfig.from_env(f, api_key="k").cache_dir == tmp_path / "cc"


def test_float_and_grey_arrays_are_accepted(tmp_path):
    with FakeOpenAI([reply("ok")]) as srv:
        c = LMMClient(config(srv, tmp_path))
        c.chat([user(np.ones((20, 30), np.float32), np.zeros((20, 30), np.uint8), "?")])
        urls = FakeOpenAI.images_in(srv.chat_requests()[0])
    assert decode(urls[0]).min() > 240 and decode(urls[1]).max() < 15
