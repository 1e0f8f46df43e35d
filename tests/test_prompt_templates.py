"""Every prompt of the LMM-backed detectors comes from the TOML files of genad/engines/lmm/prompts/.

The golden strings below were produced by the hard-coded prompts these files replaced, with the
changes made since on purpose (2026-12: every JSON form asks for the reason before the verdict
and the score; the series' example holds placeholders rather than values a model could copy;
class names are written as words): the rendered text must stay byte for byte the same (response
cache keys and cached answers depend on it). A user prompts folder overrides the packaged files
key by key."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from genad.engines.lmm.hybrid import LookTwiceDetector, _Plan
from genad.engines.lmm.templates import load_templates, templates_for
from genad.engines.lmm.text2seg import build_localize_messages, knowledge_text
from genad.errors import GenadError
from genad.modalities.timeseries.common import prepare
from genad.modalities.timeseries.lmm import SeriesLMMDetector, task_text
from genad.modalities.video.rules import Rules, RuleVideoDetector, induction_prompt, judge_prompt
from genad.types import ImageSample, Knowledge, TimeSeriesSample, Usage


class RecordingClient:
    """Stands in for LMMClient: images become "<image>", chats are recorded. Its config has no
    prompts_dir unless one is given (test doubles elsewhere look like this too)."""

    def __init__(self, prompts_dir=None):
        self.config = SimpleNamespace(max_image_side=768, max_concurrency=1, detail=None)
        if prompts_dir is not None:
            self.config.prompts_dir = prompts_dir
        self.sent = []

    def user(self, *parts):
        return {"role": "user", "content": [p if isinstance(p, str) else "<image>" for p in parts]}

    def chat(self, messages, schema=None, max_tokens=None):
        self.sent.append(messages)
        return SimpleNamespace(
            text="{}", data={"normal_rules": ["people walk"], "abnormal_rules": ["a bike rides"]}, usage=Usage()
        )


IMG = np.zeros((8, 8, 3), np.uint8)
K = Knowledge(normal_standards=" flat and grey ", defect_types=["crack", "hole"], notes=" check edges ")
K_TEXT = "What normal looks like: flat and grey\nKnown defect types: crack, hole.\ncheck edges"

# --------------------------------------------------------------------------- look twice
LT_SYSTEM = (
    "You are an expert visual inspector for anomaly detection. An automatic detector has marked "
    "candidate defect regions on an image; it is often wrong. You check each candidate and say "
    "whether it is a real anomaly, and why."
)
LT_TASK = (
    "For each numbered region, decide whether it really contains an anomaly or defect. "
    'Answer in JSON: {"regions": [{"region": 1, "reason": "...", "defect_type": "..." or null, '
    '"anomalous": true or false, "confidence": c}, ...], '
    '"image_anomaly_score": x}, with one entry per region; confidence is how sure you '
    "are of your verdict, from 0.5 (a guess) to 1 (certain); image_anomaly_score is from "
    "0 (surely normal) to 1 (surely anomalous)."
)
REF_ONE = "The next image is a normal reference of the same kind, without anomalies:"


def _look_twice(client=None, n=1, refs=0, **kw):
    det = LookTwiceDetector(embedded="baseline", client=client or RecordingClient(), **kw)
    plan = _Plan(IMG, IMG[..., 0].astype(np.float32), 1.0, np.zeros((8, 8), np.int32), n, IMG)
    return det._messages(ImageSample(id="a"), plan, [IMG] * refs)


def test_look_twice_one_region_no_references_no_class():
    assert _look_twice(n=1, refs=0) == [
        {"role": "system", "content": LT_SYSTEM},
        {
            "role": "user",
            "content": [
                "The first image is an image to be inspected.",
                "<image>",
                "The second image is the same image with region 1 outlined and numbered by an automatic "
                "detector (each number is on a black box inside its region, or next to it when the region "
                "is small).",
                "<image>",
                LT_TASK,
            ],
        },
    ]


def test_look_twice_several_regions_references_class_and_knowledge():
    assert _look_twice(n=3, refs=2, class_name="tile", knowledge=K) == [
        {"role": "system", "content": LT_SYSTEM},
        {
            "role": "user",
            "content": [
                "The first image is an image of tile to be inspected.",
                "<image>",
                "The second image is the same image with regions 1 to 3 outlined and numbered by an "
                "automatic detector (each number is on a black box inside its region, or next to it when "
                "the region is small).",
                "<image>",
                "The next 2 images are normal references of the same kind, without anomalies:",
                "<image>",
                "<image>",
                K_TEXT,
                LT_TASK,
            ],
        },
    ]


def test_look_twice_marked_image_only():
    assert _look_twice(n=3, refs=1, include_original=False) == [
        {"role": "system", "content": LT_SYSTEM},
        {
            "role": "user",
            "content": [
                "This is an image to be inspected, with regions 1 to 3 outlined and numbered by an automatic detector.",
                "<image>",
                REF_ONE,
                "<image>",
                LT_TASK,
            ],
        },
    ]
    assert _look_twice(n=1, include_original=False, class_name="tile", knowledge="  be careful ")[1]["content"] == [
        "This is an image of tile to be inspected, with region 1 outlined and numbered by an automatic detector.",
        "<image>",
        "be careful",
        LT_TASK,
    ]


# --------------------------------------------------------------------------- text2seg
LOC_SYSTEM = (
    "You are an expert visual inspector for anomaly detection. You judge images of objects, "
    "textures and medical scans, and you locate anomalies by the numbered regions marked on them."
)
LOC_QUESTION = (
    "Please determine whether the inspected image contains anomalies or defects, and in which marked regions. "
)
LOC_FORMAT = (
    "Give the image anomaly score and the scores of the anomalous regions (0 = surely normal, "
    "1 = surely anomalous), in exactly this format:\n"
    "image anomaly score: X; region i: s; region j: s.\n"
    "List only regions that contain an anomaly; regions not listed count as normal. Then, on a "
    "new line, name the defect type and give a short reason."
)
LOC_JSON = (
    'Answer in JSON: {"reason": "...", "defect_type": "...", "regions": [{"region": i, "score": s}], '
    '"image_anomaly_score": X} with scores from 0 (surely normal) to 1 '
    "(surely anomalous). List only regions that contain an anomaly; regions not listed count "
    "as normal."
)


def _localize(client=None, n=1, refs=0, **kw):
    return build_localize_messages(client or RecordingClient(), IMG, IMG, n, references=[IMG] * refs, **kw)


def test_localize_text_format_one_region():
    assert _localize(n=1) == [
        {"role": "system", "content": LOC_SYSTEM},
        {
            "role": "user",
            "content": [
                "The first image is an image to be inspected.",
                "<image>",
                "The second image is the same image divided into 1 regions.",
                "<image>",
                "Each region is outlined and marked with a number (1 to 1) on a black box at a point "
                "inside it or, for a small region, next to it.",
                LOC_QUESTION + LOC_FORMAT,
            ],
        },
    ]


def test_localize_json_reference_class_and_knowledge():
    assert _localize(n=4, refs=1, class_name="bottle", knowledge=K, json_answer=True) == [
        {"role": "system", "content": LOC_SYSTEM},
        {
            "role": "user",
            "content": [
                "The first image is an image of bottle to be inspected.",
                "<image>",
                "The second image is the same image divided into 4 regions.",
                "<image>",
                "Each region is outlined and marked with a number (1 to 4) on a black box at a point "
                "inside it or, for a small region, next to it.",
                REF_ONE,
                "<image>",
                K_TEXT,
                LOC_QUESTION + LOC_JSON,
            ],
        },
    ]


def test_localize_marked_image_only_several_references():
    assert _localize(n=4, refs=3, include_original=False) == [
        {"role": "system", "content": LOC_SYSTEM},
        {
            "role": "user",
            "content": [
                "This is an image to be inspected, divided into 4 regions.",
                "<image>",
                "Each region is outlined and marked with a number (1 to 4) on a black box at a point "
                "inside it or, for a small region, next to it.",
                "The next 3 images are normal references of the same kind, without anomalies:",
                "<image>",
                "<image>",
                "<image>",
                LOC_QUESTION + LOC_FORMAT,
            ],
        },
    ]
    assert _localize(n=2, include_original=False, class_name="bottle", json_answer=True)[1]["content"] == [
        "This is an image of bottle to be inspected, divided into 2 regions.",
        "<image>",
        "Each region is outlined and marked with a number (1 to 2) on a black box at a point "
        "inside it or, for a small region, next to it.",
        LOC_QUESTION + LOC_JSON,
    ]


def test_knowledge_text():
    assert knowledge_text(None) == ""
    assert knowledge_text(Knowledge()) == ""
    assert knowledge_text("  just text ") == "just text"
    assert knowledge_text(K) == K_TEXT
    assert knowledge_text(Knowledge(normal_standards="x")) == "What normal looks like: x"
    assert knowledge_text(Knowledge(defect_types=["a"])) == "Known defect types: a."
    assert knowledge_text(Knowledge(notes=" n ")) == "n"


# --------------------------------------------------------------------------- ts-lmm
TS_SYSTEM = (
    "You are an expert in time-series anomaly detection. You are shown a line chart of a series "
    "(x axis: point index) and its numbers. You point out the stretches of points that break the "
    "series' normal behaviour, and you answer in JSON only."
)


def _ts_task(n):
    return (
        "\nTask: find anomalous stretches of this series (spikes, dips, level shifts, changes of rhythm, "
        "period or noise, flat lines, drifts) that differ from its normal behaviour.\n"
        "Answer with JSON only, in this form:\n"
        '{"ranges": [{"reason": <what is unusual>, "start": <first index>, "end": <index after the last>, '
        '"score": <0 to 1>}], "anomalous": <true or false>, "score": <0 to 1>}\n'
        f"start and end are point indices from 0 to {n} (end exclusive); score is 0 (normal) to 1 "
        '(certainly anomalous). If the series looks normal, give "anomalous": false and an empty "ranges" list.'
    )


def test_series_task_text():
    assert task_text(50, None) == (
        "\nTask: find anomalous stretches of this series (spikes, dips, level shifts, changes of rhythm, "
        "period or noise, flat lines, drifts) that differ from its normal behaviour.\n"
        "Answer with JSON only, in this form:\n"
        '{"ranges": [{"reason": <what is unusual>, "start": <first index>, "end": <index after the last>, '
        '"score": <0 to 1>}], "anomalous": <true or false>, "score": <0 to 1>}\n'
        "start and end are point indices from 0 to 50 (end exclusive); score is 0 (normal) to 1 "
        '(certainly anomalous). If the series looks normal, give "anomalous": false and an empty "ranges" list.'
    )
    assert task_text(7, "CPU load of a web server") == "\nAbout this series: CPU load of a web server" + _ts_task(7)
    assert task_text(7, "") == _ts_task(7)


def _series():
    rng = np.random.default_rng(0)
    return TimeSeriesSample(id="cpu", values=np.round(rng.normal(size=12), 2))


def test_series_messages():
    s = _series()
    m = SeriesLMMDetector(client=RecordingClient(), context="a sensor").messages(s, prepare(s, 0.2))
    assert m[0] == {"role": "system", "content": TS_SYSTEM}
    assert m[1]["content"][0]["type"] == "image_url"
    assert m[1]["content"][1] == {
        "type": "text",
        "text": (
            "Series 'cpu': 12 points.\n"
            "dim 0: min -1.27 (index 9), max 1.3 (index 6), mean 0.02167, std 0.7042, median 0.07, "
            "1st-99th percentile -1.207..1.262.\n"
            "All values, as index: value:\n"
            "0: 0.13\n1: -0.13\n2: 0.64\n3: 0.1\n4: -0.54\n5: 0.36\n6: 1.3\n7: 0.95\n8: -0.7\n9: -1.27\n"
            "10: -0.62\n11: 0.04\n"
            "\nAbout this series: a sensor" + _ts_task(12)
        ),
    }


# --------------------------------------------------------------------------- video-rules
VR_SYSTEM = (
    "You are a careful video surveillance and process-monitoring analyst. You describe what you "
    "see precisely and judge events against explicit rules."
)
VR_STEPS = (
    "\n1. Describe the scene: the objects and people present, where they are, what they do.\n"
    "2. Induce rules of normal activity (what is expected here: objects, actions, places, colours, "
    "motion), then rules of abnormal activity (what would be an anomaly here, derived from the "
    "normal rules). Keep each rule short and checkable on one frame.\n"
    'Answer with JSON only: {"description": "...", "normal_rules": ["..."], "abnormal_rules": ["..."]}'
)
RULES = Rules(["people walk", "cars stay on the road"], ["a bike on the walkway"], "a campus")
RULES_TEXT = (
    "Rules of NORMAL activity:\nN1. people walk\nN2. cars stay on the road\n"
    "Rules of ABNORMAL activity:\nA1. a bike on the walkway"
)
JUDGE_TAIL = (
    " against the rules. A frame is anomalous if it violates a normal rule or matches an abnormal "
    "rule. Give a score from 0 (clearly normal) to 1 (clearly anomalous) and name the rule (e.g. "
    "'A2: ...') that the frame breaks, or null.\n"
    'Answer with JSON only: {"frames": [{"frame": <index>, "reason": "...", "rule": "..." | null, '
    '"anomalous": true|false, "score": 0.0-1.0}]}'
)


def test_rules_as_text():
    assert RULES.as_text() == RULES_TEXT
    assert Rules().as_text() == "Rules of NORMAL activity:\n(none)\nRules of ABNORMAL activity:\n(none)"


def test_induction_prompt():
    assert induction_prompt(4, None, True) == (
        "These 4 frames are spread over one video. Most of the video is normal; judge what is typical "
        "from what recurs." + VR_STEPS
    )
    assert induction_prompt(4, "a campus walkway camera", True) == (
        "These 4 frames are spread over one video of a campus walkway camera. Most of the video is "
        "normal; judge what is typical from what recurs." + VR_STEPS
    )
    assert induction_prompt(4, None, False) == (
        "These 4 frames come from NORMAL footage: nothing in them is anomalous." + VR_STEPS
    )
    assert induction_prompt(4, "a campus walkway camera", False) == (
        "These 4 frames come from NORMAL footage of a campus walkway camera: nothing in them is anomalous." + VR_STEPS
    )


def test_judge_prompt():
    assert judge_prompt(RULES, [0, 2, 4]) == (
        RULES_TEXT + "\n\nJudge each of the 3 frames above (frames 0, 2, 4)" + JUDGE_TAIL
    )
    assert judge_prompt(Rules(), [7]) == (
        "Rules of NORMAL activity:\n(none)\nRules of ABNORMAL activity:\n(none)"
        "\n\nJudge each of the 1 frames above (frames 7)" + JUDGE_TAIL
    )


def test_video_rules_induction_messages():
    client = RecordingClient()
    RuleVideoDetector(client=client, context="a lab").induce([IMG, IMG])
    assert client.sent[0] == [
        {"role": "system", "content": VR_SYSTEM},
        {
            "role": "user",
            "content": [
                "Frame 1:",
                "<image>",
                "Frame 2:",
                "<image>",
                "These 2 frames come from NORMAL footage of a lab: nothing in them is anomalous." + VR_STEPS,
            ],
        },
    ]


# --------------------------------------------------------------------------- the files
def test_new_files_are_packaged_but_not_domains():
    t = load_templates()
    for name in ("look_twice", "localize", "series", "video_rules"):
        assert name in t.files
        assert name not in t.domains
    assert t.domains == ["depth", "industrial", "logical", "medical"]


def test_text_renders_with_placeholders_and_leaves_unknown_ones():
    t = load_templates()
    assert t.text("localize", "reference_many", n=3) == (
        "The next 3 images are normal references of the same kind, without anomalies:"
    )
    assert t.text("localize", "reference_many") == (
        "The next $n images are normal references of the same kind, without anomalies:"
    )


def test_missing_key_or_file_is_one_clear_line(tmp_path):
    t = load_templates()
    with pytest.raises(GenadError) as e:
        t.text("look_twice", "no_such_key")
    msg = str(e.value)
    assert "\n" not in msg and "look_twice" in msg and "no_such_key" in msg
    with pytest.raises(GenadError) as e:
        t.text("no_such_file", "system")
    msg = str(e.value)
    assert "\n" not in msg and "no_such_file" in msg
    # a user file that turns a template into something else is caught too
    (tmp_path / "series.toml").write_text("system = 3\n")
    with pytest.raises(GenadError) as e:
        load_templates(tmp_path).text("series", "system")
    assert "\n" not in str(e.value) and "system" in str(e.value)


def test_user_folder_overrides_one_look_twice_key(tmp_path):
    (tmp_path / "look_twice.toml").write_text('system = "Check the marked regions."\n')
    got = _look_twice(client=RecordingClient(tmp_path), n=3, refs=2, class_name="tile", knowledge=K)
    want = _look_twice(n=3, refs=2, class_name="tile", knowledge=K)
    assert got[0] == {"role": "system", "content": "Check the marked regions."}
    assert got[1] == want[1]  # every other key keeps its packaged default


def test_user_folder_overrides_with_placeholders(tmp_path):
    (tmp_path / "look_twice.toml").write_text('reference_many = "Here are $n good ones:"\n')
    (tmp_path / "localize.toml").write_text(
        'answer_json = "Answer in JSON, please."\nstandards = "Normal: $standards"\n'
    )
    client = RecordingClient(tmp_path)
    lt = _look_twice(client=client, n=3, refs=2, class_name="tile", knowledge=K)
    assert "Here are 2 good ones:" in lt[1]["content"]
    # look twice shares the knowledge phrases of localize.toml
    assert "Normal: flat and grey\nKnown defect types: crack, hole.\ncheck edges" in lt[1]["content"]
    loc = _localize(client=client, n=4, json_answer=True)
    assert loc[1]["content"][-1] == LOC_QUESTION + "Answer in JSON, please."
    assert loc[0] == {"role": "system", "content": LOC_SYSTEM}
    assert _localize(client=client, n=4)[1]["content"][-1] == LOC_QUESTION + LOC_FORMAT


def test_user_folder_overrides_series_and_video_prompts(tmp_path):
    (tmp_path / "series.toml").write_text('system = "You read charts."\n')
    (tmp_path / "video_rules.toml").write_text('system = "You watch videos."\nnormal_heading = "Normal:"\n')
    s = _series()
    m = SeriesLMMDetector(client=RecordingClient(tmp_path), context="a sensor").messages(s, prepare(s, 0.2))
    assert m[0] == {"role": "system", "content": "You read charts."}
    assert m[1]["content"][1]["text"].endswith("\nAbout this series: a sensor" + _ts_task(12))
    client = RecordingClient(tmp_path)
    RuleVideoDetector(client=client, context="a lab").induce([IMG])
    assert client.sent[0][0] == {"role": "system", "content": "You watch videos."}
    t = templates_for(client)
    assert RULES.as_text(t).startswith("Normal:\nN1. people walk")
    assert judge_prompt(RULES, [1], t).startswith("Normal:\n")
