"""The detector contract every detector shares: options declared once (converted from text,
range-checked, aliases, secrets kept out), get_params / set_params / clone, capabilities, and
predict() leaving fitted state alone."""

from __future__ import annotations

import inspect
import json
from dataclasses import fields

import numpy as np
import pytest

import genad
from genad import registry
from genad.detector import Detector, param
from genad.engines.lmm.base import CONNECTION, LMMDetectorBase
from genad.engines.lmm.config import LMMConfig
from genad.errors import GenadError
from genad.types import ImageSample, Result

LMM_DETECTORS = ("lmm", "lmm+embedded", "ts-lmm", "video-rules")


class Toy(Detector):
    """A detector written the declared way."""

    grid: int = param(8, low=2, high=64, doc="cells")
    gain: float = param(1.0, low=0.0, doc="multiplier")
    mode: str = param("fast", choices=("fast", "exact"))
    sizes: tuple[int, ...] = param((1, 3), "ints", low=1)
    flag: bool = param(False)
    limit: int | None = param(None, "int", low=1)
    token: str | None = param(None, "str", secret=True)
    budget_usd: float | None = param(None, "float", aliases=("budget",))

    def predict(self, samples):  # type: ignore[no-untyped-def]
        return [Result(s.id, score=self.gain) for s in samples]


def test_options_from_text_are_converted_by_their_declared_kind():
    # what `-p grid=16 -p sizes=1,5 -p flag=yes -p limit=none` hands over
    t = Toy(grid="16", sizes="1,5", flag="yes", limit="none", gain=2)
    assert (t.grid, t.sizes, t.flag, t.limit, t.gain) == (16, (1, 5), True, None, 2.0)
    assert isinstance(t.gain, float) and isinstance(t.grid, int)
    assert Toy(budget=2).budget_usd == 2.0  # an alias


@pytest.mark.parametrize(
    "options, message",
    [
        ({"grid": 1}, "grid must be at least 2 and at most 64, got 1"),
        ({"grid": 100}, "grid must be between 2 and 64, got 100"),
        ({"grid": 2.5}, "grid must be a whole number"),
        ({"grid": True}, "grid must be a whole number"),
        ({"gain": "abc"}, "gain must be a number"),
        ({"gain": float("inf")}, "gain must be a finite number"),
        ({"mode": "slow"}, "mode must be fast or exact, got 'slow'"),
        ({"sizes": "1,0"}, "sizes must be at least 1"),
        ({"flag": "maybe"}, "flag must be true or false"),
        ({"colour": "red"}, "unknown option(s) colour; valid options are grid, gain"),
        ({"budget": 1, "budget_usd": 2}, "name the same option"),
    ],
)
def test_bad_options_are_one_line_errors_naming_the_detector(options, message):
    with pytest.raises(GenadError) as e:
        Toy(**options)
    assert str(e.value).startswith("bad option for detector") and message in str(e.value)
    assert "\n" not in str(e.value)


def test_get_set_params_clone_and_the_signature():
    t = Toy(grid=16, token="sk-secret-1234")
    p = t.get_params()
    assert p["grid"] == 16 and p["token"] == "sk-secret-1234"  # as scikit-learn: everything
    assert "token" not in t.params and "sk-secret" not in repr(t) and "sk-secret" not in json.dumps(t.params)
    c = t.clone()
    assert type(c) is Toy and c.get_params() == p and c is not t
    assert t.set_params(grid="32", mode="exact") is t and (t.grid, t.mode) == (32, "exact")
    assert t.params["grid"] == 32
    with pytest.raises(GenadError, match="grid must be"):
        t.set_params(grid=0)
    sig = inspect.signature(Toy)
    assert list(sig.parameters)[:3] == ["grid", "gain", "mode"] and sig.parameters["grid"].default == 8


def test_mutable_defaults_are_not_shared():
    a, b = genad.create("video"), genad.create("video")
    a.image_params["x"] = 1
    assert b.image_params == {}


def test_every_built_in_detector_declares_its_options():
    for name in [n for n in registry.available() if not n.startswith("test-")]:  # not other tests' own
        cls = registry.get(name)
        assert cls.declared, name
        det = genad.create(name)
        assert set(det.get_params()) == set(cls.declared), name
        json.dumps(det.params)  # the public view is JSON: no objects, no secrets
        assert det.clone().get_params() == det.get_params(), name


@pytest.mark.parametrize("name", LMM_DETECTORS)
def test_every_lmm_detector_takes_the_one_lmm_option_set(name):
    det = genad.create(name, budget=2, model="m", rpm=30, concurrency=2, max_image_side=512, api_key="sk-XYZ-123")
    assert isinstance(det, LMMDetectorBase)
    assert det.budget_usd == 2.0 and det.requests_per_minute == 30.0 and det.max_concurrency == 2
    assert "sk-XYZ" not in repr(det) and "api_key" not in det.params
    with pytest.raises(GenadError, match="max_image_side must be between 64 and 4096"):
        genad.create(name, max_image_side=100000)
    with pytest.raises(GenadError, match="unknown option"):
        genad.create(name, temprature=0.3)


def test_the_lmm_option_set_is_every_lmm_config_field():
    assert set(CONNECTION) == {f.name for f in fields(LMMConfig)}
    assert set(CONNECTION) <= set(LMMDetectorBase.declared)


def _images(n: int, seed: int = 0) -> list[ImageSample]:
    rng = np.random.default_rng(seed)
    return [ImageSample(f"i{k}", array=rng.integers(90, 110, (64, 64, 3), dtype=np.uint8)) for k in range(n)]


def test_capabilities_follow_fitted_state_and_predict_leaves_it_alone():
    det = genad.create("embedded", resolution=64)
    caps = det.capabilities()
    assert caps.whole_batch and caps.min_batch == 3 and "image" in caps.modalities
    det.predict(_images(4))  # zero-shot
    assert det.scale_ is None and det.calibration_ is None and not det.fitted_
    det.fit(_images(2, seed=1))
    state = (det.scale_, det.calibration_, det.n_refs_)
    caps = det.capabilities()
    assert not caps.whole_batch and caps.min_batch == 1 and caps.chunk_size
    det.predict(_images(3, seed=2))
    assert (det.scale_, det.calibration_, det.n_refs_) == state


def test_wrappers_check_their_engine_reads_images():
    for name in ("video", "pointcloud"):
        with pytest.raises(GenadError, match="not an image detector"):
            genad.create(name, image_detector="ts-iforest")
    with pytest.raises(GenadError, match="not an image detector"):
        genad.create("lmm+embedded", embedded="ts-iforest")


def test_a_hostile_value_or_name_gives_a_short_error():
    for options in ({"grid": 1e308}, {"x" * 5000: 1}, {"mode": "y" * 5000}):
        with pytest.raises(GenadError) as e:
            Toy(**options)
        assert len(str(e.value)) < 300, options


def test_changing_an_lmm_option_builds_the_client_anew(tmp_path):
    det = genad.create(
        "ts-lmm", model="a", api_key="sk-test-1234", base_url="http://127.0.0.1:9/v1", cache_dir=str(tmp_path)
    )
    assert det.client.config.model == "a" and det.client is det.client  # built once
    det.set_params(model="b")
    assert det.client.config.model == "b"


def test_a_valid_value_is_stored_as_the_very_object_given():
    # scikit-learn's clone() checks that the constructor keeps each parameter unchanged
    sizes, gain, mode = (2, 4), 2.5, "".join(["ex", "act"])
    t = Toy(sizes=sizes, gain=gain, mode=mode)
    assert t.sizes is sizes and t.gain is gain and t.mode is mode
    from genad.detector import Param

    headers = {"x-team": "qa"}
    p = Param(None, "dict")
    p.name = "headers"
    assert p.coerce(headers) is headers
    # what needed converting is converted, element by element, and still checked
    t = Toy(sizes=[1, 3], gain=2, flag=1, grid=np.int64(16))
    assert (
        t.sizes == (1, 3)
        and type(t.sizes) is tuple
        and (type(t.gain), type(t.flag), type(t.grid)) == (float, bool, int)
    )
    floats = Toy(sizes=(1.0, 3)).sizes
    assert floats == (1, 3) and all(type(v) is int for v in floats)
    with pytest.raises(GenadError, match="sizes must be at least 1"):
        Toy(sizes=(1, 0))


def test_fit_and_predict_take_arrays_through_the_base_class():
    class Mean(Detector):
        def fit(self, normal_samples):  # type: ignore[no-untyped-def]
            self.seen_ = [type(s).__name__ for s in normal_samples]
            return self

        def predict(self, samples):  # type: ignore[no-untyped-def]
            return [Result(s.id, score=float(s.load().mean())) for s in samples]

    det = Mean().fit(np.zeros((3, 8, 8), np.uint8))
    assert det.seen_ == ["ImageSample"] * 3 and det.fit_info_["count"] == 3  # type: ignore[index]
    assert [r.sample_id for r in det.predict(np.full((2, 8, 8, 3), 255, np.uint8))] == ["array-0", "array-1"]
    with pytest.raises(GenadError, match="image detector reads arrays"):
        det.predict(np.zeros(5))
