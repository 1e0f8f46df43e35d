"""`genad ask` and `genad cases` against the fake server, configured through the environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import SHARED_DATA
from fake_openai import FakeOpenAI, reply
from genad.cli.cases import marks_first, normal_first
from genad.cli.main import main
from lmm_helpers import KEY, dominant, grep_tree, set_env, solid

RED, GREEN, BLUE = (230, 20, 20), (20, 230, 20), (20, 20, 230)


def colour_answer(payload: dict):
    last = dominant(FakeOpenAI.images_in(payload)[-1]) if FakeOpenAI.images_in(payload) else None
    n_user = sum(1 for m in payload["messages"] if m["role"] == "user")
    if n_user > 1:
        return reply("It is in the upper left corner.")
    if last == "red" or (
        last == "blue"
        and len(FakeOpenAI.images_in(payload)) == 2
        and dominant(FakeOpenAI.images_in(payload)[0]) == "red"
    ):
        return reply("Yes, the image contains an anomaly: a red stain. Anomaly score: 0.9")
    return reply("No, the image does not contain any anomalies.")


def run(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def png(path: Path, rgb) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(solid(rgb)).save(path)
    return path


def test_ask_then_continue_keeps_history(tmp_path, monkeypatch, capsys):
    img, ref = png(tmp_path / "part.png", RED), png(tmp_path / "good.png", GREEN)
    with FakeOpenAI(colour_answer) as srv:
        set_env(monkeypatch, srv, tmp_path)
        assert run(["ask", "--normal", str(ref), str(img), "Is the part defective?"]) == 0
        first = capsys.readouterr()
        assert "red stain" in first.out and "score 0.90" in first.err and "anomalous" in first.err
        assert run(["ask", "--continue", "Where is it?"]) == 0
        second = capsys.readouterr()
        reqs = srv.chat_requests()
    assert "upper left" in second.out and "2 turn(s)" in second.err
    assert [dominant(u) for u in FakeOpenAI.images_in(reqs[0])] == ["green", "red"]
    assert FakeOpenAI.text_in(reqs[0]) == (
        "The first image is a normal reference. The last image is the one to inspect. Is the part defective?"
    )
    roles = [m["role"] for m in reqs[1]["messages"]]
    assert roles == ["user", "assistant", "user"]  # the follow-up carries the history, images included
    assert len(FakeOpenAI.images_in(reqs[1])) == 2 and "red stain" in reqs[1]["messages"][1]["content"]
    session = tmp_path / "cache" / "sessions" / "default.json"
    assert json.loads(session.read_text())["model"] == "gpt-4o"
    assert grep_tree(tmp_path / "cache", KEY) == []


def test_ask_json_and_named_sessions(tmp_path, monkeypatch, capsys):
    img = png(tmp_path / "ok.png", GREEN)
    with FakeOpenAI(colour_answer) as srv:
        set_env(monkeypatch, srv, tmp_path)
        assert run(["ask", "--session", "s1", "--json", str(img), "Anything wrong?"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["parsed"]["anomalous"] is False and out["turns"] == 1 and out["session"] == "s1"
        assert run(["ask", "--session", "s2", "--continue", "more?"]) == 2
        assert "no session" in capsys.readouterr().err
        assert run(["ask", str(tmp_path / "missing.png"), "q"]) == 2
        assert "no such image" in capsys.readouterr().err


def test_ask_without_configuration_says_what_to_set(tmp_path, monkeypatch, capsys):
    for k in ("GENAD_LMM_MODEL", "GENAD_LMM_API_KEY", "OPENAI_API_KEY", "GENAD_LMM_BASE_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("GENAD_CONFIG", str(tmp_path / "none.toml"))
    assert run(["ask", str(png(tmp_path / "a.png", RED)), "q"]) == 2
    err = capsys.readouterr().err
    assert "GENAD_LMM_MODEL" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def _suite(root: Path) -> Path:
    c = root / "Cases"
    ad = c / "Industrial-AD" / "Case1"
    png(ad / "normal.png", GREEN)
    png(ad / "abnormal.png", RED)
    (ad / "label.json").write_text("""{
  "dataset": "MVTec AD", "category": "Bottle",
  "reference_normal_standards": "Normally, clear bottles.",
  "reference_abnormal_states": "A red stain.",
  "zero-shot-prompt": {"naive": "Z naive?", "with class_information": "Z class bottle?",
                       "with human expertise": "Z expert bottle?",},
  "one-shot-prompt": {"naive": "The first image is normal. O naive?",
                      "with class_information": "The first image given about the bottle is normal. O class?",
                      "with human expertise": "The first image given about the bottle is normal. O expert?",}
}""")
    al = c / "Industrial-AL" / "Case1"
    png(al / "abnormal.png", RED)
    png(al / "abnormal_som.png", BLUE)
    (al / "label.json").write_text(
        '{"dataset": "MVTec AD", "category": "Bottle", "prompt": '
        '"The first image needs to be inspected. The second image contains its corresponding marks. Anomalies?",}'
    )
    png(c / "Medical-AL" / "EndoTect" / "x.jpg", RED)  # no label.json, no set-of-mark image
    return root


def test_cases_runs_every_prompt_verbatim_with_images_in_order(tmp_path, monkeypatch, capsys):
    root = _suite(tmp_path / "suite")
    out = tmp_path / "out"
    with FakeOpenAI(colour_answer) as srv:
        set_env(monkeypatch, srv, tmp_path)
        assert run(["cases", str(root), "--out", str(out)]) == 0
        reqs = srv.chat_requests()
        printed = capsys.readouterr().out
        assert run(["cases", str(root), "--out", str(tmp_path / "out2")]) == 0  # re-run: all cached
        assert len(srv.chat_requests()) == len(reqs) == 7
    by_text = {FakeOpenAI.text_in(r): [dominant(u) for u in FakeOpenAI.images_in(r)] for r in reqs}
    assert by_text["Z naive?"] == ["red"] and by_text["Z expert bottle?"] == ["red"]
    assert by_text["The first image is normal. O naive?"] == ["green", "red"]
    assert by_text["The first image given about the bottle is normal. O expert?"] == ["green", "red"]
    loc = "The first image needs to be inspected. The second image contains its corresponding marks. Anomalies?"
    assert by_text[loc] == ["red", "blue"]
    lines = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    assert len(lines) == 8
    verdicts = {(r["case_id"], r["shot"], r["variant"]): r["verdict"] for r in lines}
    assert verdicts[("Industrial-AD/Case1", "one-shot", "naive")] == "anomalous"
    assert verdicts[("Industrial-AL/Case1", "localisation", "as given")] == "anomalous"
    endo = [r for r in lines if r["case_id"] == "Medical-AL/EndoTect"][0]
    assert endo["verdict"] == "skipped" and "label.json" in endo["skipped"]
    md = (out / "report.md").read_text()
    assert "Medical-AL/EndoTect" in md and "cannot run: missing" in md and "A red stain." in md
    assert (out / "images" / "Industrial-AD" / "Case1" / "normal.png").is_file()
    assert "images/Industrial-AD/Case1/normal.png" in (out / "index.html").read_text()
    assert "7 prompts: 7 anomalous, 1 skipped" in printed
    assert grep_tree(out, KEY) == [] and grep_tree(tmp_path / "cache", KEY) == []


def test_cases_variant_filter_and_dry_run(tmp_path, monkeypatch, capsys):
    root = _suite(tmp_path / "suite")
    with FakeOpenAI(colour_answer) as srv:
        set_env(monkeypatch, srv, tmp_path)
        assert run(["cases", str(root), "--variant", "naive", "--shots", "one", "--out", str(tmp_path / "o")]) == 0
        assert sorted(FakeOpenAI.text_in(r) for r in srv.chat_requests()) == [
            "The first image is normal. O naive?",
            "The first image needs to be inspected. The second image contains its corresponding marks. Anomalies?",
        ]
    monkeypatch.delenv("GENAD_LMM_MODEL")
    assert run(["cases", str(root), "--dry-run", "--out", str(tmp_path / "d")]) == 0  # needs no model
    assert "7 prompts from 3 cases" in capsys.readouterr().out
    assert run(["cases", str(root), "--variant", "fancy"]) == 2


def test_cases_on_the_real_suite_slice(tmp_path, monkeypatch):
    root = SHARED_DATA / "gpt4v_cases"
    with FakeOpenAI([reply("Yes. The two screws are both long.")]) as srv:
        set_env(monkeypatch, srv, tmp_path)
        assert (
            run(
                ["cases", str(root), "--case", "Logical-AD/Case4", "--case", "Retina OCT", "--out", str(tmp_path / "o")]
            )
            == 0
        )
        texts = [FakeOpenAI.text_in(r) for r in srv.chat_requests()]
        n_images = sorted(len(FakeOpenAI.images_in(r)) for r in srv.chat_requests())
    label = json.loads((root / "Cases/Logical-AD/Case4/label.json").read_text().replace('.",\n}', '."\n}'))
    assert label["one-shot prompt"] in texts and label["zero-shot prompt"] in texts
    assert len(texts) == 2 + 6 and n_images == [1] * 4 + [2] * 4
    md = (tmp_path / "o" / "report.md").read_text()
    assert "RetinaOCT_One-shot.png" in md  # the absent upstream image is reported


@pytest.mark.parametrize(
    "prompt,first",
    [
        ("The first image is normal. Please determine whether the second image contains anomalies.", True),
        ("The first rendered depth image given  about the rope is normal. Please ...", True),
        (
            "The image given about screw bags should obey the following rules: ... The first image meets all "
            "the standards and is normal. Please determine whether the second image contains anomalies",
            True,
        ),
        ("The second image is normal. Is the first image anomalous?", False),
    ],
)
def test_reference_order_follows_the_prompt(prompt, first):
    assert normal_first(prompt) is first


def test_mark_order_follows_the_prompt():
    assert not marks_first("The first image needs to be inspected. The second image contains its corresponding marks.")
    assert marks_first("The first image contains the marks. The second image needs to be inspected.")
