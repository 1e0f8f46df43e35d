"""Text2Segmentation: region scores -> pixel map, and the GPT-4V-AD localisation call."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from fake_openai import FakeOpenAI, count_prompt, reply
from genad.engines.lmm.provider import LMMClient, LMMConfig
from genad.engines.lmm.text2seg import image_score, localize, scores_to_map
from genad.engines.lmm.visual_prompt import divide, masks_to_labels
from genad.types import Knowledge


def decode(url: str) -> np.ndarray:
    raw = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"), dtype=np.int16)


def client_for(srv: FakeOpenAI, **kw) -> LMMClient:
    return LMMClient(
        LMMConfig(
            base_url=srv.base_url, model="fake-vlm", api_key="sk-test", cache_dir=None, retry_base_delay=0.01, **kw
        )
    )


def test_scores_to_map_puts_each_score_on_exactly_its_pixels():
    labels = np.array([[1, 1, 2], [3, 3, 2], [3, 4, 4]])
    masks = [labels == i for i in range(1, 5)]
    amap = scores_to_map(masks, {2: 0.7, 4: 0.25, 9: 1.0}, (3, 3))  # 9 is no region: ignored
    expected = np.array([[0, 0, 0.7], [0, 0, 0.7], [0, 0.25, 0.25]], np.float32)
    np.testing.assert_array_equal(amap, expected)
    assert amap.dtype == np.float32
    # a label image gives the same map; a larger shape repeats pixels (nearest)
    np.testing.assert_array_equal(scores_to_map(labels, {2: 0.7, 4: 0.25}, (3, 3)), expected)
    big = scores_to_map(labels, {2: 0.7, 4: 0.25}, (6, 6))
    np.testing.assert_array_equal(big, np.kron(expected, np.ones((2, 2), np.float32)))


def test_scores_to_map_smoothing_softens_only_the_edges():
    masks = divide(np.zeros((40, 40, 3), np.uint8), "grid", 2)
    sharp = scores_to_map(masks, {4: 1.0}, (40, 40))
    soft = scores_to_map(masks, {4: 1.0}, (40, 40), smooth_sigma=2.0)
    assert soft[35, 35] == pytest.approx(1.0, abs=1e-3) and soft[5, 5] == pytest.approx(0.0, abs=1e-3)
    assert 0.3 < soft[20, 20] < 0.7 and sharp[20, 20] == 1.0  # the region's corner is blurred
    assert soft.sum() == pytest.approx(sharp.sum(), rel=0.02)


def test_image_score_prefers_the_stated_score_then_the_best_region():
    assert image_score(0.3, {1: 0.9}) == 0.3
    assert image_score(None, {1: 0.2, 5: 0.6}) == 0.6
    assert image_score(None, {}) is None


def test_localize_gpt4v_ad_answer_maps_to_region_3_only():
    img = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    with FakeOpenAI(script=[reply("image anomaly score: 0.9; region 3: 0.8.")]) as srv:
        res = localize(client_for(srv), img, method="grid", n=2, sample_id="x.png", class_name="bottle")
        sent = srv.chat_requests()[0]
    masks = divide(img, "grid", 2)
    assert res.score == pytest.approx(0.9) and res.decision is True
    assert res.anomaly_map.shape == (90, 120)
    np.testing.assert_array_equal(res.anomaly_map[masks[2]], np.float32(0.8))
    np.testing.assert_array_equal(res.anomaly_map[~masks[2]], 0.0)
    assert [r.index for r in res.regions] == [3]
    assert res.regions[0].box == (0, 45, 60, 90)
    np.testing.assert_array_equal(res.visual_prompt.labels, masks_to_labels(masks))
    assert res.visual_prompt.image.shape == img.shape
    assert res.usage.calls == 1 and res.usage.prompt_tokens == count_prompt(sent)
    # the request: original first, then its set-of-mark version; the format is asked for
    images = FakeOpenAI.images_in(sent)
    assert len(images) == 2
    assert np.abs(decode(images[0]) - img).mean() < 12
    assert np.abs(decode(images[1]) - res.visual_prompt.image).mean() < 12
    text = FakeOpenAI.text_in(sent)
    assert "image anomaly score: X; region i: s" in text and "bottle" in text
    assert "divided into 4 regions" in text


def test_localize_json_answer_with_references_and_knowledge():
    img = np.full((64, 64, 3), 90, np.uint8)
    ref = np.full((64, 64, 3), 200, np.uint8)
    answer = (
        '{"image_anomaly_score": 0.7, "regions": [{"region": 1, "score": 0.6}], '
        '"defect_type": "scratch", "reason": "a dark line"}'
    )
    with FakeOpenAI(script=[reply(answer)]) as srv:
        res = localize(
            client_for(srv),
            img,
            method="grid",
            n=2,
            references=[ref],
            json_answer=True,
            knowledge=Knowledge(normal_standards="uniform grey", defect_types=["scratch"]),
        )
        sent = srv.chat_requests()[0]
    assert res.score == pytest.approx(0.7)
    assert res.anomaly_map[:32, :32].min() == pytest.approx(0.6) and res.anomaly_map[32:].max() == 0
    assert res.regions[0].label == "scratch" and "a dark line" in res.explanation
    images = FakeOpenAI.images_in(sent)
    assert len(images) == 3 and abs(decode(images[2]).mean() - 200) < 3  # reference last
    text = FakeOpenAI.text_in(sent)
    assert "uniform grey" in text and "scratch" in text and "JSON" in text
    assert sent.get("response_format", {}).get("type") == "json_schema"


def test_localize_unusable_answer_is_an_error_result_not_an_exception():
    img = np.zeros((32, 32, 3), np.uint8)
    with FakeOpenAI(script=[reply("I'm sorry, I can't help with that.")]) as srv:
        res = localize(client_for(srv), img, method="grid", n=2)
    assert res.score is None and "refused" in res.error


def test_localize_with_proposals_marks_the_engine_regions_and_the_background():
    img = np.full((60, 60, 3), 120, np.uint8)
    amap = np.zeros((60, 60), np.float32)
    amap[10:20, 30:50] = 1.0
    with FakeOpenAI(script=[reply("image anomaly score: 0.8; region 1: 0.8; region 2: 0.0")]) as srv:
        res = localize(client_for(srv), img, method="proposals", n=3, anomaly_map=amap)
        text = FakeOpenAI.text_in(srv.chat_requests()[0])
    assert "divided into 2 regions" in text  # one proposal + the background
    assert res.visual_prompt.method == "proposals:3"
    np.testing.assert_array_equal(res.anomaly_map > 0, amap > 0)
