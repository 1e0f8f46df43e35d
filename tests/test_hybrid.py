"""Look twice (lmm+embedded): embedded proposals verified by a scripted LMM over real HTTP."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from fake_openai import FakeOpenAI, count_prompt, error, reply
from genad.detector import Capabilities, Detector
from genad.engines.lmm.hybrid import LookTwiceDetector, normalise_embedded, parse_verdicts
from genad.engines.lmm.provider import LMMClient, LMMConfig
from genad.errors import GenadError
from genad.registry import create
from genad.types import ImageSample, Knowledge, Region, Result

H, W = 80, 100


def decode(url: str) -> np.ndarray:
    raw = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"), dtype=np.int16)


def client_for(srv: FakeOpenAI) -> LMMClient:
    return LMMClient(
        LMMConfig(
            base_url=srv.base_url,
            model="fake-vlm",
            api_key="sk-test",
            cache_dir=None,
            max_retries=0,
            retry_base_delay=0.01,
        )
    )


def two_blob_map() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    amap = np.full((H, W), 0.2, np.float32)
    a = np.zeros((H, W), bool)
    a[10:30, 10:30] = True
    b = np.zeros((H, W), bool)
    b[50:70, 60:90] = True
    amap[a], amap[b] = 3.0, 2.0
    return amap, a, b


class FakeEmbedded(Detector):
    """Stands in for the embedded engine: a fixed map with two proposed regions, threshold 1."""

    def __init__(self) -> None:
        super().__init__()
        self.fitted_on: list[str] = []

    def fit(self, normal_samples):
        self.fitted_on = [s.id for s in normal_samples]
        self.fitted_ = True
        return self

    def capabilities(self):
        # like the embedded engine: zero-shot, the images are scored against each other
        return Capabilities(self.modalities, whole_batch=not self.fitted_, min_batch=1 if self.fitted_ else 3)

    def predict(self, samples):
        amap, a, b = two_blob_map()
        return [
            Result(s.id, error="cannot read image")
            if s.id.startswith("broken")
            else Result(
                s.id,
                score=3.0,
                decision=True,
                threshold=1.0,
                anomaly_map=amap.copy(),
                regions=[Region(score=3.0, mask=a, index=1), Region(score=2.0, mask=b, index=2)],
            )
            for s in samples
        ]


def sample(seed: int = 0, sid: str = "x.png") -> ImageSample:
    rng = np.random.default_rng(seed)
    return ImageSample(id=sid, array=rng.integers(60, 200, (H, W, 3), dtype=np.uint8))


CONFIRM_1_REJECT_2 = json.dumps(
    {
        "regions": [
            {
                "region": 1,
                "anomalous": True,
                "confidence": 0.9,
                "defect_type": "crack",
                "reason": "a dark jagged line across the surface",
            },
            {
                "region": 2,
                "anomalous": False,
                "confidence": 0.8,
                "defect_type": None,
                "reason": "normal texture variation",
            },
        ],
        "image_anomaly_score": 0.9,
    }
)


def test_confirmed_region_rises_and_rejected_region_drops():
    with FakeOpenAI(script=[reply(CONFIRM_1_REJECT_2)]) as srv:
        det = LookTwiceDetector(k=3, weight=0.5, embedded=FakeEmbedded(), client=client_for(srv))
        (res,) = det.predict([sample()])
        assert len(srv.chat_requests()) == 1
    amap, a, b = two_blob_map()
    e = normalise_embedded(amap, 1.0)  # threshold 1 -> s / (s + 1)
    assert e[a].max() == pytest.approx(0.75) and e[b].max() == pytest.approx(2 / 3)
    fused = res.anomaly_map
    assert fused.shape == (H, W) and fused.dtype == np.float32
    assert (fused[a] > e[a]).all() and (fused[b] < e[b]).all()
    # the documented rule: w*p + (1-w)*e with p = 0.9 (confirmed) and 1 - 0.8 (rejected)
    np.testing.assert_allclose(fused[a], 0.5 * 0.9 + 0.5 * 0.75, rtol=1e-6)
    np.testing.assert_allclose(fused[b], 0.5 * 0.2 + 0.5 * (2 / 3), rtol=1e-6)
    np.testing.assert_allclose(fused[~(a | b)], e[~(a | b)], rtol=1e-6)  # the rest is kept
    assert res.score == pytest.approx(0.825) and res.decision is True
    assert [r.index for r in res.regions] == [1] and res.regions[0].label == "crack"
    assert res.regions[0].box == (10, 10, 30, 30)
    assert "region 1 (crack" in res.explanation and "dark jagged line" in res.explanation
    assert "Judged normal: region 2" in res.explanation
    assert res.usage.calls == 1 and res.usage.prompt_tokens == count_prompt(srv.chat_requests()[0])
    assert "fallback" not in res.extra
    v = {d["region"]: d for d in res.extra["verdicts"]}
    assert v[1]["probability"] == pytest.approx(0.9) and v[2]["probability"] == pytest.approx(0.2)
    labels = res.visual_prompt.labels
    assert (labels[a] == 1).all() and (labels[b] == 2).all() and (labels[~(a | b)] == 0).all()
    assert res.visual_prompt.image.shape == (H, W, 3)


def test_rejecting_everything_clears_a_false_alarm():
    answer = json.dumps(
        {
            "regions": [
                {"region": 1, "anomalous": False, "confidence": 1.0, "reason": "a reflection"},
                {"region": 2, "anomalous": False, "confidence": 1.0, "reason": "texture"},
            ]
        }
    )
    with FakeOpenAI(script=[reply(answer)]) as srv:
        det = LookTwiceDetector(embedded=FakeEmbedded(), client=client_for(srv))
        (res,) = det.predict([sample()])
    assert res.score == pytest.approx(0.5 * 0.75) and res.decision is False
    assert res.regions == [] and res.explanation.startswith("No proposed region confirmed.")


@pytest.mark.parametrize(
    "script,why",
    [
        ([reply("I'm sorry, but I can't help with that.")], "refused"),
        ([reply("Something seems off somewhere, anomalous: yes")], "did not say which regions"),
        ([error(400, "bad request")], "LMM call failed"),
    ],
)
def test_unusable_answer_falls_back_to_the_embedded_score_and_says_so(script, why):
    with FakeOpenAI(script=script) as srv:
        det = LookTwiceDetector(embedded=FakeEmbedded(), client=client_for(srv))
        (res,) = det.predict([sample()])
    assert why in res.extra["fallback"] and "embedded engine only" in res.explanation
    assert res.score == pytest.approx(3.0 / 4.0)  # the embedded score on the same 0-1 scale
    amap, _, _ = two_blob_map()
    np.testing.assert_allclose(res.anomaly_map, normalise_embedded(amap, 1.0))
    assert res.error is None and res.decision is True


def test_request_holds_image_then_set_of_mark_then_reference_in_order():
    normal = ImageSample(id="normal.png", array=np.full((H, W, 3), 230, np.uint8))
    s = sample(1)
    with FakeOpenAI(script=[reply(CONFIRM_1_REJECT_2)]) as srv:
        emb = FakeEmbedded()
        det = LookTwiceDetector(
            embedded=emb,
            client=client_for(srv),
            class_name="tile",
            knowledge=Knowledge(defect_types=["crack", "blowhole"]),
        )
        assert det.capabilities().whole_batch  # zero-shot: the engine needs the whole batch
        det.fit([normal, sample(2, "n2.png")])
        assert (
            det.capabilities().chunk_size == 4
            and not det.capabilities().whole_batch
            and emb.fitted_on == ["normal.png", "n2.png"]
        )
        (res,) = det.predict([s])
        sent = srv.chat_requests()[0]
    images = [decode(u) for u in FakeOpenAI.images_in(sent)]
    assert len(images) == 3  # one reference by default
    assert np.abs(images[0] - s.array).mean() < 15
    assert np.abs(images[1] - res.visual_prompt.image).mean() < 15
    assert np.abs(images[1] - s.array).mean() > np.abs(images[0] - s.array).mean()  # it is marked
    assert np.abs(images[2] - 230).mean() < 3
    text = FakeOpenAI.text_in(sent)
    assert text.index("first image") < text.index("second image") < text.index("normal reference")
    assert "regions 1 to 2" in text and "tile" in text and "blowhole" in text
    assert sent["response_format"]["type"] == "json_schema"


def test_parse_verdicts_from_prose_and_from_the_gpt4v_ad_format():
    prose = (
        "Region 1: Yes, confidence 90%, defect type: crack, reason: a dark line.\n"
        "Region 2: No (confidence 0.7) - it is the normal weave.\nRegion 7: yes"
    )
    v = parse_verdicts(prose, None, n_regions=3)
    assert set(v) == {1, 2}  # region 7 does not exist
    assert v[1].anomalous is True and v[1].confidence == pytest.approx(0.9)
    assert v[1].defect_type == "crack" and v[1].reason == "a dark line."
    assert v[2].anomalous is False and v[2].probability == pytest.approx(0.3)
    g = parse_verdicts("image anomaly score: 0.9; region 1: 0.8; region 2: 0.1.", None, 2)
    assert g[1].probability == pytest.approx(0.8) and g[2].probability == pytest.approx(0.1)
    # confidence below 0.5 means a guess: clipped, so a rejection cannot become a confirmation
    j = parse_verdicts('{"regions": [{"region": 1, "anomalous": false, "confidence": 0.1}]}', None, 1)
    assert j[1].probability == pytest.approx(0.5)


def test_whole_image_normal_answer_rejects_every_region():
    with FakeOpenAI(script=[reply("No. The tile looks normal; there are no defects.")]) as srv:
        det = LookTwiceDetector(embedded=FakeEmbedded(), client=client_for(srv))
        (res,) = det.predict([sample()])
    assert "fallback" not in res.extra and res.decision is False
    assert res.score == pytest.approx(0.5 * 0.75)
    assert "whole image judged normal" in res.explanation


def test_with_the_real_baseline_engine_the_defect_is_proposed_and_confirmed():
    rng = np.random.default_rng(0)
    imgs = []
    for i in range(4):
        im = np.clip(rng.normal(128, 4, (64, 64, 3)), 0, 255).astype(np.uint8)
        if i == 3:
            im[20:32, 36:48] = 20  # the known defect
        imgs.append(ImageSample(id=f"{i}.png", array=im))

    # region 1 confirmed, any others rejected (numbers beyond the marked ones are dropped)
    answer = json.dumps(
        {
            "regions": [
                {"region": 1, "anomalous": True, "confidence": 1.0, "defect_type": "stain", "reason": "dark square"}
            ]
            + [{"region": i, "anomalous": False, "confidence": 1.0, "reason": "noise"} for i in (2, 3)]
        }
    )

    with FakeOpenAI(script=[reply(answer)]) as srv:
        det = create("lmm+embedded", embedded="baseline", client=client_for(srv))
        results = det.predict(imgs)
        assert len(srv.chat_requests()) == 4
    assert all(r.ok for r in results)
    best = max(results, key=lambda r: r.score)
    assert best.sample_id == "3.png" and best.decision is True
    labels = best.visual_prompt.labels
    # region 1 lies on the defect (the baseline's regions are its map above the decision
    # boundary: on a flat dark square, its edges)
    ys, xs = np.nonzero(labels == 1)
    assert ys.size and 18 <= ys.min() and ys.max() < 34 and 34 <= xs.min() and xs.max() < 50
    assert best.anomaly_map[26, 42] > best.anomaly_map[5, 5]
    # in the clean images region 1 is noise confirmed by this scripted model, but their
    # embedded value is low, so they stay below the defective image
    assert sorted(r.score for r in results)[-2] < best.score


def test_embedded_proposals_use_the_fine_grid_unless_told_otherwise():
    assert LookTwiceDetector().engine.strides == (8, 16)
    assert LookTwiceDetector(embedded_params={"strides": "16,32"}).engine.strides == (16, 32)
    assert LookTwiceDetector(embedded_params={"backbone": "dinov2-s"}).engine.strides == (14,)


def test_option_mistakes_are_one_line_errors():
    with pytest.raises(GenadError, match="weight must be between 0 and 1"):
        LookTwiceDetector(weight=2.0, embedded=FakeEmbedded())
    with pytest.raises(GenadError, match="unknown option.*colour"):
        LookTwiceDetector(embedded=FakeEmbedded(), colour="red")
    det = LookTwiceDetector(embedded=FakeEmbedded(), api_key="sk-secret-123", model="m")
    assert "sk-secret-123" not in repr(det) and "sk-secret" not in json.dumps(det.params)


def test_missing_lmm_settings_stop_with_a_config_error(monkeypatch, tmp_path):
    for var in ("GENAD_LMM_MODEL", "GENAD_LMM_API_KEY", "GENAD_LMM_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GENAD_CONFIG", str(tmp_path / "none.toml"))
    det = LookTwiceDetector(embedded=FakeEmbedded())
    with pytest.raises(GenadError, match="GENAD_LMM_MODEL"):
        det.predict([sample()])


def test_a_rejected_api_key_stops_the_run_instead_of_falling_back():
    with FakeOpenAI(script=[error(401, "invalid key")]) as srv:
        det = LookTwiceDetector(embedded=FakeEmbedded(), client=client_for(srv))
        with pytest.raises(GenadError, match="rejected the API key"):
            det.predict([sample()])


def test_only_the_top_k_are_asked_about_and_a_failed_sample_does_not_stop_the_rest():
    with FakeOpenAI(script=[reply(CONFIRM_1_REJECT_2)]) as srv:
        det = LookTwiceDetector(k=1, embedded=FakeEmbedded(), client=client_for(srv))
        res = det.predict([sample(0, "a.png"), sample(1, "broken.png"), sample(2, "c.png")])
        assert len(srv.chat_requests()) == 2
        assert "region 1 outlined" in FakeOpenAI.text_in(srv.chat_requests()[0])
    assert [r.sample_id for r in res] == ["a.png", "broken.png", "c.png"]
    assert res[1].error == "cannot read image" and res[1].score is None
    amap, a, b = two_blob_map()
    e = normalise_embedded(amap, 1.0)
    assert res[0].ok and res[2].ok
    labels = res[0].visual_prompt.labels
    assert labels.max() == 1 and (labels[b] == 0).all()
    # region 2 was not proposed (k=1): it keeps the embedded value; the verdict on a
    # "region 2" that was never marked is dropped
    np.testing.assert_allclose(res[0].anomaly_map[b], e[b], rtol=1e-6)
    np.testing.assert_allclose(res[0].anomaly_map[a], 0.5 * 0.9 + 0.5 * 0.75, rtol=1e-6)


def test_fusion_keeps_the_embedded_shape_inside_a_region():
    from genad.engines.lmm.hybrid import fuse

    e = np.array([[0.2, 0.4, 0.8, 0.1]], np.float32)
    labels = np.array([[1, 1, 1, 0]])
    fused, scores = fuse(e, labels, 1, {1: 1.0}, weight=0.5)
    assert scores == [pytest.approx(0.9)]  # 0.5 * 1.0 + 0.5 * 0.8
    np.testing.assert_allclose(fused, [[0.225, 0.45, 0.9, 0.1]], rtol=1e-6)
    fused, scores = fuse(e, labels, 1, {1: 0.0}, weight=0.5)
    np.testing.assert_allclose(fused, [[0.1, 0.2, 0.4, 0.1]], rtol=1e-6)
