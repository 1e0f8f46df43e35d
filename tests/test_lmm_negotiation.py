"""LMMClient against servers that are not OpenAI's, through real HTTP and the real openai SDK:
what it negotiates (structured output, the answer-length parameter, temperature), the limits
that keep a slow or failing server from piling up work, malformed replies, and the check that
the server read the images (its prompt-token count against genad's estimate).

The refusals are scripted in the words real servers use: llama-cpp-python answers a json_schema
response_format with HTTP 500 naming it; OpenAI's reasoning models refuse max_tokens and any
temperature but the default with HTTP 400."""

from __future__ import annotations

import json

import pytest

from fake_openai import IMAGE_TOKENS, FakeOpenAI, Item, count_prompt, error, reply, slow
from genad.engines.lmm.config import LMMConfig
from genad.engines.lmm.negotiate import PromptEstimate, judge_input, traits_for
from genad.engines.lmm.parse import ANSWER_SCHEMA
from genad.engines.lmm.provider import InputIgnored, LMMClient, LMMRequestError, ServerFailing, user
from genad.errors import ConfigError
from lmm_helpers import config, grep_tree, solid

LLAMA_CPP_500 = (
    "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
    "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}"
)


def refusing(kinds: set[str], answer: str = '{"anomalous": false, "anomaly_score": 0.2, "reason": "clean"}'):
    """A server that refuses the response_format types in `kinds` with HTTP 500 (as
    llama-cpp-python does) and answers everything else."""

    def script(req):
        rf = req.get("response_format")
        kind = None if rf is None else ("object_schema" if "schema" in rf else rf["type"])
        if kind in kinds:
            return error(500, f"response_format {kind} is not supported: {LLAMA_CPP_500}")
        return reply(answer)

    return script


def test_json_schema_refused_with_a_500_falls_back_once_per_server_and_model(tmp_path):
    with FakeOpenAI(refusing({"json_schema"})) as srv:
        c = LMMClient(config(srv, tmp_path, cache_dir=None, max_retries=4))
        replies = [c.chat([user(f"image {i}")], schema=ANSWER_SCHEMA) for i in range(5)]
        # another client of the same server and model (a second detector in the same run) knows too
        LMMClient(config(srv, tmp_path, cache_dir=None)).chat([user("again")], schema=ANSWER_SCHEMA)
        reqs = srv.chat_requests()
        learned = traits_for(srv.base_url, "gpt-4o").json_mode
    # one refused request in all, never retried: then JSON mode carrying the schema
    assert len(reqs) == 7
    assert reqs[0]["response_format"]["type"] == "json_schema"
    assert all(r["response_format"] == {"type": "json_object", "schema": ANSWER_SCHEMA} for r in reqs[1:])
    assert all(r.data == {"anomalous": False, "anomaly_score": 0.2, "reason": "clean"} for r in replies)
    assert learned == "object_schema"


def test_every_structured_output_refused_ends_in_free_text(tmp_path):
    with FakeOpenAI(refusing({"json_schema", "object_schema", "json_object"}, "anomaly score: 0.7")) as srv:
        c = LMMClient(config(srv, tmp_path, cache_dir=None))
        first = c.chat([user("one")], schema=ANSWER_SCHEMA)
        c.chat([user("two")], schema=ANSWER_SCHEMA)
        kinds = [(r.get("response_format") or {}).get("type") for r in srv.chat_requests()]
    assert kinds == ["json_schema", "json_object", "json_object", None, None]
    assert first.text == "anomaly score: 0.7" and first.json_mode_used == "off"


def test_a_server_error_that_does_not_name_the_format_is_retried_not_taken_as_a_refusal(tmp_path):
    with FakeOpenAI([error(500, "CUDA out of memory"), reply("{}")]) as srv:
        c = LMMClient(config(srv, tmp_path, cache_dir=None))
        c.chat([user("q")], schema=ANSWER_SCHEMA)
        reqs = srv.chat_requests()
    assert [r["response_format"]["type"] for r in reqs] == ["json_schema", "json_schema"]


def test_reasoning_models_get_max_completion_tokens_and_no_temperature(tmp_path):
    def o_series(req):
        if "max_tokens" in req:
            return error(
                400,
                "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead.",
            )
        if "temperature" in req and req["temperature"] != 1:
            return error(
                400,
                "Unsupported value: 'temperature' does not support 0.0 with this model. "
                "Only the default (1) value is supported.",
            )
        return reply("image anomaly score: 0.3")

    with FakeOpenAI(o_series) as srv:
        c = LMMClient(config(srv, tmp_path, cache_dir=None, model="o3"))
        assert c.chat([user("one")], max_tokens=300).text == "image anomaly score: 0.3"
        c.chat([user("two")])
        reqs = srv.chat_requests()
    assert len(reqs) == 4  # two refusals, learned once: the second call goes straight through
    assert reqs[2]["max_completion_tokens"] == 300 and "max_tokens" not in reqs[2] and "temperature" not in reqs[2]
    assert reqs[3]["max_completion_tokens"] == 1024 and "temperature" not in reqs[3]


def test_every_call_limits_the_answer_and_text_only_messages_are_plain_strings(tmp_path):
    with FakeOpenAI([reply("ok")]) as srv:
        c = LMMClient(config(srv, tmp_path, cache_dir=None))
        c.chat([user("just text", "in two parts")])
        c.chat([user(solid((255, 0, 0)), "with an image")], max_tokens=64)
        LMMClient(config(srv, tmp_path, cache_dir=None, max_tokens=200)).chat([user("q")])
        reqs = srv.chat_requests()
    assert [r["max_tokens"] for r in reqs] == [1024, 64, 200]
    # llama-cpp-python's chat formats drop a list of parts: text alone goes as a string
    assert reqs[0]["messages"][0]["content"] == "just text\nin two parts"
    assert [p["type"] for p in reqs[1]["messages"][0]["content"]] == ["image_url", "text"]


def test_default_timeouts_depend_on_the_server():
    openai_cfg = LMMConfig(base_url="https://api.openai.com/v1", model="gpt-4o", api_key="k")
    local = LMMConfig(base_url="http://127.0.0.1:8080/v1", model="llava", api_key="none")
    assert openai_cfg.request_timeout == 60 and local.request_timeout == 300
    assert LMMConfig(base_url="http://127.0.0.1:1/v1", model="m", api_key="k", timeout=5).request_timeout == 5
    with pytest.raises(ConfigError):
        LMMConfig(base_url="http://x/v1", model="m", api_key="k", timeout=0)


def test_a_timeout_is_retried_once_whatever_max_retries_says(tmp_path):
    with FakeOpenAI([slow(2.0, reply("late"))]) as srv:
        c = LMMClient(config(srv, tmp_path, cache_dir=None, timeout=0.3, max_retries=5))
        with pytest.raises(LMMRequestError, match=r"within 0.3s after 2 tries.*--max-tokens"):
            c.chat([user("q")])
        assert len(srv.chat_requests()) == 2  # not 6 generations stacked on a one-slot server


def test_consecutive_failures_stop_the_run_and_later_calls_are_not_sent(tmp_path):
    with FakeOpenAI([error(503, "overloaded")]) as srv:
        c = LMMClient(config(srv, tmp_path, cache_dir=None, max_retries=1, max_concurrency=1, max_failures=3))
        out = c.chat_many([{"messages": [user(f"q{i}")]} for i in range(6)])
        sent = len(srv.chat_requests())
    assert sent == 3 * 2  # three requests (each retried once), then nothing more
    assert [type(o).__name__ for o in out] == ["LMMRequestError", "LMMRequestError", *["ServerFailing"] * 4]
    assert "failed 3 requests in a row" in str(out[2]) and "HTTP 503" in str(out[2])


def test_a_success_resets_the_failure_count(tmp_path):
    script = [error(400, "bad"), error(400, "bad"), reply("fine"), error(400, "bad"), error(400, "bad"), reply("ok")]
    with FakeOpenAI(script) as srv:
        c = LMMClient(config(srv, tmp_path, cache_dir=None, max_failures=3, max_concurrency=1))
        out = c.chat_many([{"messages": [user(f"q{i}")]} for i in range(6)])
    assert [isinstance(o, LMMRequestError) for o in out] == [True, True, False, True, True, False]
    assert not any(isinstance(o, ServerFailing) for o in out)


@pytest.mark.parametrize(
    "item",
    [
        Item(raw=b"<html><body>502 Bad Gateway</body></html>"),
        Item(body={"choices": "nope"}),
        Item(body={"choices": [{"message": {"content": {"text": "not a string"}}}]}),
    ],
    ids=["html", "choices-not-a-list", "content-not-text"],
)
def test_a_malformed_reply_is_a_clear_retried_error(tmp_path, item):
    with FakeOpenAI([item]) as srv:
        c = LMMClient(config(srv, tmp_path, cache_dir=None, max_retries=2))
        with pytest.raises(LMMRequestError, match="not a chat completion"):
            c.chat([user("q")])
        assert len(srv.chat_requests()) == 3


def test_a_reply_cut_at_max_tokens_says_so(tmp_path):
    with FakeOpenAI([reply("<think>Let me look at the tile carefully. The surface", finish_reason="length")]) as srv:
        r = LMMClient(config(srv, tmp_path, cache_dir=None)).chat([user("q")], max_tokens=16)
    assert r.finish_reason == "length" and r.max_tokens == 16


# --------------------------------------------------------------------------- what was read


def test_judge_input_rules():
    est = PromptEstimate(text_tokens=300, images=2, image_tokens=1530)
    assert judge_input(0, est) == "unknown"
    assert judge_input(7, est) == "dropped"  # llama-cpp-python dropped the whole list of parts
    assert judge_input(300 + 2 * 576, est) == "read"  # LLaVA-style counts
    assert judge_input(320, est) == "unsure"  # the text alone could explain it: ask a text-only twin
    assert judge_input(310, PromptEstimate(300, 0, 0)) == "read"
    assert judge_input(100, PromptEstimate(300, 0, 0)) == "dropped"


def test_a_server_that_drops_the_message_with_images_stops_the_run_and_nothing_is_cached(tmp_path):
    # what llama-cpp-python does with a text model: the list of parts is dropped, 7 tokens remain
    with FakeOpenAI([reply("(1)\n(2)\n(3)", prompt_tokens=7)]) as srv:
        c = LMMClient(config(srv, tmp_path))
        with pytest.raises(InputIgnored, match=r"ignored the images \(no vision\?\).*counted 7 prompt tokens"):
            c.chat([user(solid((255, 0, 0)), "Is the image anomalous? " * 20)])
    assert grep_tree(tmp_path / "cache", "(1)") == []  # the garbage answer is not kept


def test_a_server_that_silently_drops_images_is_found_by_a_text_only_twin(tmp_path):
    # what Ollama does with a text-only model: the text is counted, the images are not
    def text_only_model(req):
        text = FakeOpenAI.text_in(req)
        return reply("The image is normal.", prompt_tokens=len(text) // 4 + 8)

    with FakeOpenAI(text_only_model) as srv:
        c = LMMClient(config(srv, tmp_path, cache_dir=None))
        with pytest.raises(InputIgnored, match="ignored the images"):
            c.chat([user(solid((255, 0, 0)), "Please determine whether the image contains anomalies. " * 4)])
        reqs = srv.chat_requests()
    assert len(reqs) == 2  # the request, then its text-only twin (one answer token)
    assert FakeOpenAI.images_in(reqs[1]) == [] and reqs[1]["max_tokens"] == 1


def test_a_vision_model_is_checked_once_and_a_text_prompt_that_was_read_passes(tmp_path):
    with FakeOpenAI([reply("ok")]) as srv:
        c = LMMClient(config(srv, tmp_path, cache_dir=None))
        for i in range(3):
            c.chat([user(solid((i, 0, 0)), "is it anomalous?")])
        c.chat([user("a long question " * 30)])
        reqs = srv.chat_requests()
        assert len(reqs) == 4  # no twin: the counts were clear
        assert c.usage_total.prompt_tokens == sum(count_prompt(r) for r in reqs)
    assert count_prompt(reqs[0]) >= IMAGE_TOKENS


def test_a_dropped_text_prompt_stops_and_the_check_can_be_turned_off(tmp_path):
    with FakeOpenAI([reply("hello", prompt_tokens=3)]) as srv:
        with pytest.raises(InputIgnored, match="dropped the prompt"):
            LMMClient(config(srv, tmp_path, cache_dir=None)).chat([user("Describe the tile in detail. " * 20)])
        r = LMMClient(config(srv, tmp_path, cache_dir=None, check_input=False)).chat([user("Describe it. " * 20)])
    assert r.text == "hello"


def test_the_check_and_the_limits_come_from_the_environment_and_the_config_file(tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[lmm]\nmax_tokens = 77\nmax_failures = 2\ncheck_input = "false"\n')
    monkeypatch.setenv("GENAD_LMM_API_KEY", "k")
    monkeypatch.setenv("GENAD_LMM_MODEL", "m")
    c = LMMConfig.from_env(cfg)
    assert (c.max_tokens, c.max_failures, c.check_input) == (77, 2, False)
    assert json.loads(json.dumps(c.max_tokens)) == 77


def test_the_first_call_runs_alone_then_calls_run_side_by_side(tmp_path):
    import threading

    live, peak, lock = [0], [0], threading.Lock()

    def script(req):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        return slow(0.3, reply("ok"))

    with FakeOpenAI(script) as srv:
        c = LMMClient(config(srv, tmp_path, cache_dir=None, max_concurrency=4))
        orig = c._call_with_retries

        def counted(*a, **kw):
            try:
                return orig(*a, **kw)
            finally:
                with lock:
                    live[0] -= 1

        c._call_with_retries = counted
        first_peak = []
        out = c.chat_many(
            [{"messages": [user(f"q{i}")]} for i in range(8)], on_done=lambda i, r: first_peak.append(peak[0])
        )
    assert all(not isinstance(o, Exception) for o in out)
    assert first_peak[0] == 1  # the first answer came back before any other request was sent
    assert peak[0] >= 3  # then up to max_concurrency at once
