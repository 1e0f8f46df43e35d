"""The shared contracts: types, registry, detector base, CLI error handling."""

import json

import numpy as np
import pytest

import genad
from genad import registry
from genad.cli.main import main
from genad.detector import Detector
from genad.errors import GenadError
from genad.types import GroundTruth, ImageSample, Region, Result, Usage


def test_result_to_dict_is_json_and_omits_maps_by_default():
    r = Result(
        "a.png",
        score=np.float32(0.75),
        decision=True,
        anomaly_map=np.zeros((4, 5), np.float32),
        regions=[Region(0.9, box=(1, 2, 3, 4), mask=np.ones((4, 5), bool), index=1)],
        usage=Usage(10, 5, 0.01, 1, 0),
        extra={"arr": np.arange(3), "n": np.int64(2)},
    )
    d = json.loads(json.dumps(r.to_dict()))
    assert d["score"] == pytest.approx(0.75)
    assert "anomaly_map" not in d
    assert d["regions"][0]["box"] == [1, 2, 3, 4] and "mask" not in d["regions"][0]
    assert d["usage"]["prompt_tokens"] == 10
    assert d["extra"] == {"arr": [0, 1, 2], "n": 2}
    assert np.array(r.to_dict(with_map=True)["anomaly_map"]).shape == (4, 5)


def test_usage_adds():
    u = Usage(1, 2, 0.5, 1, 0) + Usage(3, 4, 0.25, 1, 1)
    assert (u.prompt_tokens, u.completion_tokens, u.cost_usd, u.calls, u.cached_calls) == (4, 6, 0.75, 2, 1)


def test_mask_size_mismatch_is_a_clear_error(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "x.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x_mask.png")
    s = ImageSample("x", path=tmp_path / "x.png", truth=GroundTruth(label=1, mask_path=tmp_path / "x_mask.png"))
    with pytest.raises(GenadError, match="differs from its image"):
        s.mask()


def test_registry_unknown_name_lists_choices():
    with pytest.raises(GenadError, match="unknown detector 'nope'"):
        registry.create("nope")


def test_register_and_create_custom_detector():
    @genad.register("test-constant")
    class Constant(Detector):
        def __init__(self, value: float = 1.0):
            super().__init__(value=value)
            self.value = value

        def predict(self, samples):
            return [Result(s.id, score=self.value) for s in samples]

    det = genad.create("test-constant", value=0.5)
    assert det.predict([ImageSample("a", array=np.zeros((2, 2, 3), np.uint8))])[0].score == 0.5
    assert "test-constant" in genad.available()
    with pytest.raises(GenadError, match="bad option"):
        genad.create("test-constant", nonsense=1)


def test_cli_unknown_command_exits_2_without_traceback(capsys):
    with pytest.raises(SystemExit) as e:
        main(["no-such-command"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "No such command" in err and "Traceback" not in err
