"""The answer parsers against a corpus of answers in the styles real models write (GPT-4o,
Qwen2.5-VL, InternVL, LLaVA, reasoning models), each with the reading a careful person gives
it, written apart from the parser: tests/data/lmm_answers.toml (121 answers, the parser was
developed on it) and tests/data/lmm_answers_holdout.toml (60 more, written afterwards and read
first as a held-out check: 43 of 60 were read right before the parser's rules were widened)."""

from __future__ import annotations

import tomllib
from collections import Counter
from pathlib import Path

import pytest

from genad.engines.lmm.hybrid import parse_verdicts
from genad.engines.lmm.parse import parse_answer
from genad.engines.lmm.templates import load_templates
from genad.engines.lmm.text2seg import image_score

DATA = Path(__file__).parent / "data"
CORPUS = [
    answer
    for name in ("lmm_answers.toml", "lmm_answers_holdout.toml")
    for answer in tomllib.loads((DATA / name).read_text(encoding="utf-8"))["answer"]
]


def _prompt(kind: str) -> str:
    """What the model was asked, as genad asks it (echoes of it are not answers)."""
    t = load_templates()
    if kind == "image":
        task, _ = t.render("industrial", "class", 1, "magnetic tile")
        return "\n".join([task, t.answer_instruction(True), t.answer_instruction(False)])
    if kind == "regions":
        return t.text("localize", "task", answer=t.text("localize", "answer_text"))
    return t.text("look_twice", "task", n=3)


def _decision(verdict: bool | None, score: float | None) -> str:
    if verdict is not None:
        return "anomalous" if verdict else "normal"
    if score is not None:
        return "anomalous" if score >= 0.5 else "normal"
    return "none"


def test_the_corpus_is_large_and_covers_every_style_and_kind():
    assert len(CORPUS) >= 180
    assert len({c["id"] for c in CORPUS}) == len(CORPUS)
    styles = Counter(c["style"] for c in CORPUS)
    assert set(styles) == {"gpt-4o", "qwen2.5-vl", "internvl", "llava", "reasoning"}
    assert min(styles.values()) >= 15
    kinds = Counter(c["kind"] for c in CORPUS)
    assert kinds["image"] >= 40 and kinds["regions"] >= 15 and kinds["verdicts"] >= 15
    assert sum(c["decision"] == "none" for c in CORPUS) >= 10  # unreadable answers are part of it


@pytest.mark.parametrize("case", [c for c in CORPUS if c["kind"] == "image"], ids=lambda c: c["id"])
def test_image_answers(case):
    a = parse_answer(case["text"], prompt=_prompt("image"))
    assert a.score == pytest.approx(case.get("score"), abs=1e-6) if "score" in case else a.score is None, (
        f"score {a.score}"
    )
    assert _decision(a.anomalous, a.score) == case["decision"]
    if case["decision"] == "none":
        assert not a.usable and a.why_unusable().startswith("no usable score")


@pytest.mark.parametrize("case", [c for c in CORPUS if c["kind"] == "regions"], ids=lambda c: c["id"])
def test_region_answers(case):
    a = parse_answer(case["text"], prompt=_prompt("regions"))
    want = {int(k): v for k, v in case.get("regions", {}).items()}
    assert a.region_scores == pytest.approx(want, abs=1e-6)
    assert a.score == pytest.approx(case.get("score"), abs=1e-6) if "score" in case else a.score is None, (
        f"score {a.score}"
    )
    # genad's image score for a localisation answer: the stated one, else the highest region's
    assert _decision(a.anomalous, image_score(a.score, a.region_scores)) == case["decision"]


@pytest.mark.parametrize("case", [c for c in CORPUS if c["kind"] == "verdicts"], ids=lambda c: c["id"])
def test_look_twice_verdicts(case):
    got = parse_verdicts(case["text"], None, 16)
    want = case.get("verdicts", {})
    assert {i: v.anomalous for i, v in got.items()} == {int(k): w["anomalous"] for k, w in want.items()}
    for k, w in want.items():
        if "confidence" in w:
            assert got[int(k)].confidence == pytest.approx(w["confidence"], abs=1e-6), f"region {k}"
    decision = "none" if not got else ("anomalous" if any(v.anomalous for v in got.values()) else "normal")
    assert decision == case["decision"]
    if "score" in case:
        assert parse_answer(case["text"]).score == pytest.approx(case["score"], abs=1e-6)
