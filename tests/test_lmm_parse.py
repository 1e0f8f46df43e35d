"""parse_answer on the answer shapes real models give: JSON (clean, fenced, broken), the
GPT-4V-AD text format, yes/no prose, scales, refusals."""

from __future__ import annotations

import pytest

from genad.engines.lmm.parse import decide_yes_no, extract_json, parse_answer


def test_gpt4v_ad_text_format():
    a = parse_answer("image anomaly score: 0.9; region 1: 0.9; region 3: 0.7.")
    assert a.score == 0.9 and a.region_scores == {1: 0.9, 3: 0.7}
    assert a.anomalous is None and not a.refusal and a.effective_score == 0.9


def test_gpt4v_ad_format_with_prose_around():
    a = parse_answer(
        "Looking at the marked regions.\nImage anomaly score: 0.35; Region 12: 0.6.\n"
        "Defect type: scratch. Location: lower left."
    )
    assert a.score == 0.35 and a.region_scores == {12: 0.6}
    assert a.defect_type == "scratch" and a.location == "lower left"


def test_clean_json_and_data_given():
    d = {"anomalous": True, "anomaly_score": 0.85, "defect_type": "crack", "location": "top", "reason": "a crack"}
    a = parse_answer("ignored", d)
    assert (a.score, a.anomalous, a.defect_type, a.location, a.reason) == (0.85, True, "crack", "top", "a crack")


def test_fenced_json_with_trailing_comma_and_region_list():
    text = (
        'Here you go:\n```json\n{"anomalous": false, "anomaly_score": 0.1, "reason": "fine",\n'
        ' "region_scores": [{"region": 2, "score": 0.2}, {"region": 5, "score": 0.05},],}\n```'
    )
    a = parse_answer(text)
    assert a.anomalous is False and a.score == 0.1 and a.region_scores == {2: 0.2, 5: 0.05}
    assert a.reason == "fine"


def test_malformed_json_still_yields_fields():
    a = parse_answer('{"anomalous": true, "anomaly_score": 0.8, "reason": "frayed edge')
    assert a.score == 0.8 and a.anomalous is True
    assert extract_json('{"a": 1') is None


@pytest.mark.parametrize(
    "text,anomalous",
    [
        ("Yes, the image contains anomalies. The bottle has a cord inside.", True),
        ("No. The image looks normal.", False),
        ("No, there are no anomalies in this image.", False),
        ("The image appears normal with no visible defects.", False),
        ("The image does not contain any anomalies or defects. The PCB looks clean.", False),
        ("There is a crack on the left side of the hazelnut.", True),
        ("Upon inspection, the capsule in the third row shows a damaged surface.", True),
        ("The screw bag is free of defects.", False),
        ("This chest X-ray shows signs of pneumonia in the right lower lobe.", True),
        ("The weather is nice.", None),
    ],
)
def test_yes_no_prose(text, anomalous):
    a = parse_answer(text)
    assert a.anomalous is anomalous and a.score is None
    assert a.effective_score == (None if anomalous is None else float(anomalous))
    assert a.score_source == ("none" if anomalous is None else "decision")
    assert a.reason == text


@pytest.mark.parametrize(
    "text,score",
    [
        ("Anomaly score: 8/10.", 0.8),
        ("anomaly score: 85%", 0.85),
        ("anomaly_score = 7", 0.7),
        ("image anomaly score: 7.5", 0.75),
        ("image anomaly score: -0.2", 0.0),
        ('{"score": "0.25"}', 0.25),
        ('{"anomaly_score": 60}', 0.6),
    ],
)
def test_score_scales(text, score):
    assert parse_answer(text).score == pytest.approx(score)


def test_refusal_keeps_the_reason_and_has_no_score():
    text = "I'm sorry, but I can't help with identifying medical conditions from images."
    a = parse_answer(text)
    assert a.refusal and a.score is None and a.anomalous is None and a.effective_score is None
    assert a.reason == text and not a.usable


def test_hedged_refusal_that_still_answers_is_not_a_refusal():
    a = parse_answer(
        "I'm sorry, I cannot provide a diagnosis. However, the scan shows a bright region that suggests a hemorrhage."
    )
    assert a.anomalous is True and not a.refusal


def test_empty_answer_is_unusable_but_not_a_refusal():
    a = parse_answer("")
    assert not a.usable and not a.refusal and a.reason is None


def test_ranges_from_json_and_text():
    assert parse_answer('{"anomalous": true, "ranges": [[10, 20], {"start": 30, "end": 35}]}').ranges == [
        (10, 20),
        (30, 35),
    ]
    assert parse_answer("Anomalous ranges: [100, 120], 300-340").ranges == [(100, 120), (300, 340)]


def test_decide_yes_no_prefers_negation():
    assert decide_yes_no("There are no signs of damage.") is False
    assert decide_yes_no("yes") is True and decide_yes_no("") is None
