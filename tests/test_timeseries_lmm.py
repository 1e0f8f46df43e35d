"""ts-lmm against the local fake OpenAI server: what is sent, and how answers map back."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from fake_openai import FakeOpenAI, reply
from genad.errors import ConfigError
from genad.modalities.timeseries.lmm import ranges_to_map, read_ranges, summarize
from genad.registry import create
from genad.types import TimeSeriesSample


def series(n: int = 600, spike_at: int = 420) -> np.ndarray:
    x = np.sin(np.arange(n) / 6.0)
    x[spike_at] += 7.5
    return x


def detector(srv: FakeOpenAI, **kw):
    return create(
        "ts-lmm", base_url=srv.base_url, model="fake-vlm", api_key="sk-test-secret", cache_dir=None, max_retries=0, **kw
    )


def answer(**data) -> str:
    return json.dumps(data)


def test_request_has_png_chart_and_numbers_and_answer_maps_to_points():
    text = answer(
        anomalous=True,
        score=0.9,
        ranges=[
            {"start": 415, "end": 425, "score": 0.95, "reason": "spike far above the usual peaks"},
            {"start": 100, "end": 110, "score": 0.4, "reason": "slightly flat top"},
        ],
    )
    with FakeOpenAI([reply(text)]) as srv:
        (r,) = detector(srv, context="a vibration sensor").predict([TimeSeriesSample(id="vib", values=series())])
        (req,) = srv.chat_requests()
    assert r.error is None
    urls = FakeOpenAI.images_in(req)
    assert len(urls) == 1 and urls[0].startswith("data:image/png;base64,")
    png = Image.open(io.BytesIO(base64.b64decode(urls[0].split(",", 1)[1])))
    assert png.format == "PNG" and png.size[0] <= 768  # drawn at the size that is sent
    sent = FakeOpenAI.text_in(req)
    peak = f"max {series().max():.4g} (index 420)"  # the spike, in numbers
    assert "600 points" in sent and peak in sent
    assert f"..{series().max():.4g}]" in sent  # and its bucket's max survives the downsampling
    assert "a vibration sensor" in sent and "end exclusive" in sent
    assert "sk-test-secret" not in json.dumps(req)
    # ranges back onto points, with their own scores
    assert r.ranges == [(415, 425), (100, 110)]
    assert r.anomaly_map.shape == (600,) and r.anomaly_map[420] == pytest.approx(0.95)
    assert r.anomaly_map[105] == pytest.approx(0.4) and r.anomaly_map[300] == 0
    assert r.score == pytest.approx(0.9) and r.decision is True
    assert "spike far above the usual peaks" in r.explanation and r.usage.calls == 1


def test_normal_answer_and_text_answer():
    with FakeOpenAI(
        [reply(answer(anomalous=False, score=0.05, ranges=[])), reply("Yes, anomalous. ranges: 410-430")]
    ) as srv:
        det = detector(srv, max_concurrency=1)
        normal, text = det.predict(
            [TimeSeriesSample(id="a", values=series()), TimeSeriesSample(id="b", values=series())]
        )
    assert normal.ok and normal.decision is False and normal.ranges == [] and normal.score == pytest.approx(0.05)
    assert not normal.anomaly_map.any()
    assert text.ok and text.ranges == [(410, 430)] and text.decision is True


def test_malformed_and_refused_answers_are_errors_not_crashes():
    script = [
        reply("{not json at all"),
        reply("I'm sorry, I can't help with that."),
        reply(answer(anomalous=True, ranges=[{"start": 9000, "end": 9100, "reason": "x"}])),
        reply(answer(anomalous=True, score=0.8, ranges=[{"start": 410, "end": 430, "reason": "spike"}])),
    ]
    with FakeOpenAI(script) as srv:
        det = detector(srv, max_concurrency=1)
        rs = det.predict([TimeSeriesSample(id=str(i), values=series()) for i in range(4)])
    garbled, refused, outside, good = rs
    assert garbled.score is None and "gave no decision or ranges" in garbled.error
    assert refused.score is None and "refused" in refused.error
    # a range entirely outside the series is dropped and said so; nothing invented
    assert outside.error is not None and "no usable range" in outside.error
    assert good.ok and good.ranges == [(410, 430)]


def test_server_error_is_per_sample_and_constant_series_is_not_sent():
    from fake_openai import error

    with FakeOpenAI([error(400, "bad request")]) as srv:
        det = detector(srv)
        bad, const = det.predict(
            [TimeSeriesSample(id="a", values=series()), TimeSeriesSample(id="c", values=np.ones(50))]
        )
        assert len(srv.chat_requests()) == 1
    assert bad.score is None and "model call failed" in bad.error
    assert const.ok and const.score == 0.0 and "constant series" in const.explanation


def test_missing_model_is_a_config_error(monkeypatch):
    for k in ("GENAD_LMM_MODEL", "GENAD_LMM_BASE_URL", "GENAD_LMM_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ConfigError):
        create("ts-lmm").predict([TimeSeriesSample(id="a", values=series())])


def test_helpers():
    s = TimeSeriesSample(id="s", values=np.arange(1000.0))
    text = summarize(s.values[:, None], s, max_values=10)
    assert "Values in 10 buckets" in text and "900-999: 949.5 [900..999]" in text
    assert read_ranges({"ranges": [[5, 2], {"start": "7", "end": 9}]})[0][0]["start"] == 5
    assert read_ranges({"foo": 1}) is None
    m, kept, dropped = ranges_to_map(
        [{"start": 5, "end": 2, "score": None, "reason": None}, {"start": -5, "end": -1, "score": 1.0, "reason": None}],
        10,
        0.7,
    )
    assert kept[0]["start"] == 2 and kept[0]["end"] == 5 and len(dropped) == 1
    assert np.allclose(m, [0, 0, 0.7, 0.7, 0.7, 0, 0, 0, 0, 0])


def test_decisions_use_the_unit_calibration_and_the_models_yes_no_wins():
    script = [
        reply(answer(score=0.7, ranges=[{"start": 410, "end": 430, "score": 0.7, "reason": "spike"}])),
        reply(answer(anomalous=False, score=0.9, ranges=[{"start": 410, "end": 430, "reason": "maybe"}])),
        reply(answer(anomalous=True, score=0.2, ranges=[{"start": 410, "end": 430, "reason": "spike"}])),
    ]
    samples = [TimeSeriesSample(id=str(i), values=series()) for i in range(3)]

    def run(**kw):
        with FakeOpenAI(list(script)) as srv:
            return detector(srv, max_concurrency=1, **kw).predict(samples)

    score_only, said_no, said_yes = run()
    # a score without a yes/no: decided by the score; UNIT at 0.5 leaves 0..1 scores as they are
    assert score_only.decision is True and score_only.threshold == pytest.approx(0.5)
    assert score_only.normalized_score == pytest.approx(0.7) and score_only.ranges == [(410, 430)]
    # the model's no wins over its high score; its ranges are kept aside, not reported
    assert said_no.decision is False and said_no.normalized_score == pytest.approx(0.9)
    assert said_no.ranges == [] and said_no.extra["unflagged_ranges"] == [[410, 430]]
    assert "judged normal" in said_no.explanation
    assert said_yes.decision is True and said_yes.normalized_score == pytest.approx(0.2)
    assert said_yes.ranges == [(410, 430)]
    # a stricter normalised threshold turns the score-only answer normal, and its range goes
    strict = run(threshold=0.9)
    assert strict[0].decision is False and strict[0].ranges == [] and strict[0].threshold == pytest.approx(0.9)
    assert [r.decision for r in strict[1:]] == [False, True]  # yes/no answers do not move
    # raw_threshold: the boundary in the model's 0..1 score, normalised to 0.5
    raw = run(raw_threshold=0.8)
    assert raw[0].decision is False and raw[0].threshold == pytest.approx(0.8)
    assert raw[0].normalized_score == pytest.approx(0.5 * 0.7 / 0.8)


def test_a_constant_series_is_normal_whatever_the_boundary():
    with FakeOpenAI([]) as srv:
        (const,) = detector(srv).predict([TimeSeriesSample(id="c", values=np.ones(50))])
        (low,) = detector(srv, raw_threshold=0.0).predict([TimeSeriesSample(id="c", values=np.ones(50))])
        assert srv.chat_requests() == []
    assert const.decision is False and const.ranges == [] and const.normalized_score == pytest.approx(0.0)
    assert low.decision is False and low.ranges == [] and low.threshold == 0.0
