"""The embedded engine's input normalisation: both conventions selectable for every backbone,
and `auto` chosen from the images' own statistics (a scan's black background), never from a
data set's name; the choice is fitted state, kept in saved models and used by exports."""

from __future__ import annotations

import numpy as np
import pytest

import genad
from genad.engines.embedded.backbones import get_backbone, input_normalisation
from genad.engines.embedded.detector import choose_normalization
from genad.errors import GenadError
from genad.types import ImageSample


def _scan(i: int, size: int = 96) -> np.ndarray:
    """A dark-background 'scan': a bright disc on black, with texture."""
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.3) ** 2
    a = np.zeros((size, size), np.float32)
    a[disc] = 0.6 + 0.1 * rng.standard_normal(disc.sum())
    return (np.clip(a, 0, 1) * 255).astype(np.uint8)


def _tile(i: int, size: int = 96) -> np.ndarray:
    """A mid-grey texture, as an industrial surface."""
    rng = np.random.default_rng(100 + i)
    return (np.clip(0.45 + 0.08 * rng.standard_normal((size, size)), 0, 1) * 255).astype(np.uint8)


def _samples(make, n=4):
    return [ImageSample(id=f"{make.__name__}{i}", array=np.repeat(make(i)[:, :, None], 3, axis=2)) for i in range(n)]


def test_auto_picks_imagenet_for_scans_with_a_black_background_and_the_weights_own_otherwise():
    assert choose_normalization(_samples(_scan)) == "imagenet"
    assert choose_normalization(_samples(_tile)) == "own"
    assert choose_normalization([]) == "own"


def test_every_backbone_takes_both_conventions():
    assert input_normalisation("effnet-lite0") == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert input_normalisation("effnet-lite0", "imagenet")["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert input_normalisation("dinov2-s")["mean"] == pytest.approx([0.485, 0.456, 0.406])  # its own
    assert input_normalisation("dinov2-s", "half") == {"mean": [0.5] * 3, "std": [0.5] * 3}
    a = get_backbone("effnet-lite0", 1, (16, 32), "own")
    b = get_backbone("effnet-lite0", 1, (16, 32), "imagenet")
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    assert not np.allclose(a(x)[0].numpy(), b(x)[0].numpy())  # the features differ
    with pytest.raises(GenadError, match="normalization must be"):
        get_backbone("effnet-lite0", 1, (16, 32), "nope")


def test_fit_records_the_choice_and_a_saved_model_keeps_it(tmp_path):
    fast = {"resolution": 64, "strides": "8,16"}
    det = genad.create("embedded", **fast).fit(_samples(_scan))
    assert det.normalization == "auto" and det.normalization_ == "imagenet"
    assert det.preprocessing()["normalization"] == "imagenet"
    back = genad.load(det.save(tmp_path / "m.genad"))
    assert back.normalization_ == "imagenet"
    test = _samples(_scan, 2)
    assert [r.score for r in det.predict(test)] == [r.score for r in back.predict(test)]
    forced = genad.create("embedded", normalization="own", **fast).fit(_samples(_scan))
    assert forced.normalization_ == "own"
    assert [r.score for r in forced.predict(test)] != [r.score for r in det.predict(test)]
    with pytest.raises(GenadError, match="normalization must be"):
        genad.create("embedded", normalization="hsv")
