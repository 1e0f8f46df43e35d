"""RuleVideoDetector (AnomalyRuler-style) through the real openai SDK against a local fake server.

The fake model really looks at the frames it is sent: it calls a frame anomalous when it sees
a red object, so the test checks the whole path (frames -> requests -> verdicts -> smoothing)."""

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

import genad
from fake_openai import FakeOpenAI, reply
from genad.errors import GenadError
from genad.modalities.video.rules import _read_verdicts, majority_smooth
from genad.types import VideoSample
from video_helpers import labels, moving_square_frames

RULES = {
    "description": "a grey square slides",
    "normal_rules": ["one grey square moves left to right"],
    "abnormal_rules": ["a red object appears"],
}


def _has_red(url: str) -> bool:
    a = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")).astype(int)
    return bool(((a[..., 0] > 180) & (a[..., 1] < 100)).mean() > 0.005)


def seeing_model(flicker_frame: int | None = None, verdicts: bool = True, red_score: float = 0.9):
    def script(req):
        text = FakeOpenAI.text_in(req)
        if "Induce rules" in text:
            return reply(json.dumps(RULES))
        frames = [int(m) for m in re.findall(r"Frame (\d+):", text)]
        out = []
        for j, url in zip(frames, FakeOpenAI.images_in(req)):
            red = _has_red(url) or j == flicker_frame
            item = {
                "frame": j,
                "anomalous": red,
                "score": red_score if red else 0.1,
                "rule": "A1. a red object appears" if red else None,
                "reason": "red" if red else "ok",
            }
            if not verdicts:  # a model that answers with a score only
                del item["anomalous"]
            out.append(item)
        return reply("Here is my answer:\n```json\n" + json.dumps({"frames": out}) + "\n```")

    return script


def _det(srv, tmp_path, **kw):
    return genad.create(
        "video-rules",
        base_url=srv.base_url,
        api_key="sk-secret-test",
        model="fake-vlm",
        cache_dir=str(tmp_path / "cache"),
        **kw,
    )


def test_few_shot_rules_then_batched_judgement_finds_the_span(tmp_path):
    video = VideoSample(id="clip", frames=moving_square_frames())
    normal = VideoSample(id="normal", frames=moving_square_frames(anomaly=False))
    with FakeOpenAI(seeing_model(flicker_frame=10)) as srv:
        det = _det(srv, tmp_path, n_normal_frames=3, batch_frames=5, window=5).fit([normal])
        assert det.rules_.abnormal == ["a red object appears"]
        induction = srv.chat_requests()[0]
        assert len(FakeOpenAI.images_in(induction)) == 3 and "NORMAL footage" in FakeOpenAI.text_in(induction)
        [r] = det.predict([video])
        judge_calls = srv.chat_requests()[1:]
    assert len(judge_calls) == 16  # 80 frames, 5 per call
    assert all(len(FakeOpenAI.images_in(c)) == 5 for c in judge_calls)
    assert "A1. a red object appears" in FakeOpenAI.text_in(judge_calls[0])
    assert r.ok and r.anomaly_map.shape == (80,)
    assert roc_auc_score(labels(), r.anomaly_map) > 0.95
    assert r.ranges == [(40, 60)]  # the one-frame flicker at 10 is outvoted
    assert r.decision is True and r.threshold == 0.5 and r.normalized_score == pytest.approx(r.score)
    assert "violates 'A1. a red object appears'" in r.explanation and "40-59" in r.explanation
    assert r.usage.calls == 16 and r.extra["verdicts"][10]["anomalous"] is True
    assert "sk-secret-test" not in json.dumps(r.to_dict()) and "sk-secret-test" not in repr(det)


def test_zero_shot_induces_from_the_video_itself_and_stride_skips_frames(tmp_path):
    video = VideoSample(id="clip", frames=moving_square_frames())
    with FakeOpenAI(seeing_model()) as srv:
        [r] = _det(srv, tmp_path, stride=4, batch_frames=4, window=3).predict([video])
        reqs = srv.chat_requests()
    assert "spread over one video" in FakeOpenAI.text_in(reqs[0])
    assert len(reqs) == 1 + 5  # induction + 20 judged frames / 4
    assert r.usage.calls == 6
    assert r.ranges and abs(r.ranges[0][0] - 40) <= 4 and abs(r.ranges[0][1] - 60) <= 4
    assert roc_auc_score(labels(), r.anomaly_map) > 0.9


def test_given_rules_skip_induction_and_bad_answers_are_errors(tmp_path):
    video = VideoSample(id="clip", frames=moving_square_frames(12))
    with FakeOpenAI([reply("I cannot help with that.")]) as srv:
        det = _det(srv, tmp_path, rules={"normal": ["a grey square"], "abnormal": ["red"]}, batch_frames=6)
        [r] = det.predict([video])
        assert len(srv.chat_requests()) == 2  # no induction call
    assert r.error and "no frame could be judged" in r.error and r.score is None
    with FakeOpenAI([reply("no json here")]) as srv:
        with pytest.raises(GenadError, match="rule induction"):
            _det(srv, tmp_path / "b").fit([video])
    with pytest.raises(GenadError, match="unknown option"):
        genad.create("video-rules", colour="red")


def test_verdict_parsing_and_majority_vote():
    got = _read_verdicts(
        {"frames": [{"frame": 7, "anomalous": "yes"}, {"index": "x", "score": 0.2}, {"frame": 99, "score": 2}]},
        [7, 8, 9],
    )
    assert got[7]["anomalous"] is True and got[7]["score"] == 1.0
    assert got[8]["score"] == 0.2 and got[8]["anomalous"] is False
    assert got[9]["score"] == 1.0  # out-of-batch index matched by position, score clipped
    v = np.array([0, 1, 0, 0, 1, 1, 1, np.nan, 0, 0], dtype=float)
    # centred windows of 3; NaN abstains; a tie (frame 7: one yes, one no) is not a majority
    assert majority_smooth(v, 3).tolist() == [False, False, False, False, True, True, True, False, False, False]


def test_decisions_follow_the_votes_and_the_threshold_applies_to_scores_without_a_yes_no(tmp_path):
    video = VideoSample(id="clip", frames=moving_square_frames())
    normal = VideoSample(id="normal", frames=moving_square_frames(anomaly=False))

    runs = iter(range(100))

    def run(model, **kw):
        with FakeOpenAI(model) as srv:  # a cache of its own for each run
            det = _det(srv, tmp_path / str(next(runs)), batch_frames=10, rules={"abnormal": ["red"]}, **kw)
            [r] = det.predict([video])
        assert r.ok and 0.0 <= r.normalized_score <= 1.0 and r.decision == bool(r.ranges)
        return r

    scores_only = seeing_model(verdicts=False, red_score=0.7)
    r = run(scores_only)
    assert r.ranges == [(40, 60)] and r.threshold == 0.5
    strict = run(scores_only, threshold=0.9)  # 0.7 is no longer above the boundary
    assert strict.decision is False and strict.ranges == [] and strict.threshold == pytest.approx(0.9)
    assert "all 80 frames follow the rules" in strict.explanation
    raw = run(scores_only, raw_threshold=0.6)
    assert raw.ranges == [(40, 60)] and raw.threshold == 0.6
    assert raw.normalized_score == pytest.approx(0.5 + 0.5 * (raw.score - 0.6) / 0.4)
    # explicit yes/no answers win over the threshold (as for every LMM detector)
    with_verdicts = run(seeing_model(red_score=0.7), threshold=0.9)
    assert with_verdicts.decision is True and with_verdicts.ranges == [(40, 60)]
    # a video the model calls normal throughout: no range, not anomalous
    with FakeOpenAI(seeing_model()) as srv:
        [n] = _det(srv, tmp_path / "n", batch_frames=10, rules={"abnormal": ["red"]}).predict([normal])
    assert n.decision is False and n.ranges == [] and n.normalized_score < 0.5
