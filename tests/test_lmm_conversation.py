"""Conversation (multi-round, saved sessions) and the paid-answers-are-kept guarantee."""

from __future__ import annotations

import json

import pytest

from fake_openai import FakeOpenAI, error, reply
from genad.engines.lmm.conversation import Conversation
from genad.engines.lmm.provider import LMMClient, user
from genad.errors import GenadError
from lmm_helpers import KEY, config, dominant, grep_tree, solid


def test_follow_ups_carry_the_history_and_sessions_round_trip(tmp_path):
    with FakeOpenAI(
        [reply("Yes, there is a dent. Anomaly score: 0.8"), reply("Bottom right."), reply("About 2 mm.")]
    ) as srv:
        client = LMMClient(config(srv, tmp_path))
        conv = Conversation(client, system_prompt="You inspect peaches.")
        r1 = conv.ask("Is the second image anomalous?", images=[solid((20, 230, 20)), solid((230, 20, 20))])
        assert conv.answer().score == 0.8 and conv.answer().anomalous is True
        conv.ask("Where?")
        path = conv.save(Conversation.session_path("peach", tmp_path / "cache"))
        again = Conversation.load(path, client)
        assert again.turns == 2 and again.usage.calls == 2
        again.ask("How big?")
        reqs = srv.chat_requests()
    assert [m["role"] for m in reqs[2]["messages"]] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [dominant(u) for u in FakeOpenAI.images_in(reqs[2])] == ["green", "red"]
    assert reqs[2]["messages"][4]["content"] == "Bottom right."
    assert r1.usage.calls == 1 and again.usage.calls == 3
    saved = json.loads(path.read_text())
    assert saved["model"] == "gpt-4o" and len(saved["messages"]) == 5
    assert grep_tree(tmp_path / "cache", KEY) == []


def test_a_failed_question_leaves_the_history_unchanged(tmp_path):
    with FakeOpenAI([reply("fine"), error(400, "bad")]) as srv:
        conv = Conversation(LMMClient(config(srv, tmp_path)))
        conv.ask("first")
        with pytest.raises(GenadError):
            conv.ask("second")
    assert conv.turns == 1 and len(conv.messages) == 2


def test_bad_session_names_are_refused(tmp_path):
    with pytest.raises(GenadError, match="session name"):
        Conversation.session_path("../etc/passwd", tmp_path)


def test_a_run_stopped_halfway_keeps_every_paid_answer(tmp_path):
    """Half the requests succeed, the rest hit a hard error (like a crash mid-run): a re-run asks
    only for the missing ones, and no half-written cache file is left behind."""

    def script(p):
        n = int(FakeOpenAI.text_in(p)[1:])
        return reply(f"answer {n}") if n % 2 == 0 else error(400, "server broke")

    with FakeOpenAI(script) as srv:
        c = LMMClient(config(srv, tmp_path, max_concurrency=3))
        first = c.chat_many([{"messages": [user(f"q{i}")]} for i in range(6)])
        assert sum(isinstance(r, Exception) for r in first) == 3
        n_before = len(srv.chat_requests())
        srv.script = [reply("late answer")]
        second = LMMClient(config(srv, tmp_path)).chat_many([{"messages": [user(f"q{i}")]} for i in range(6)])
        assert len(srv.chat_requests()) == n_before + 3  # only the three unanswered were asked again
    assert [r.cached for r in second] == [True, False, True, False, True, False]
    assert [r.text for r in second[::2]] == ["answer 0", "answer 2", "answer 4"]
    assert list((tmp_path / "cache").rglob("*.tmp")) == []
