"""The sanity baseline finds a known, obvious defect and behaves by the detector contract."""

import numpy as np
import pytest
from PIL import Image

from foundation_helpers import defect_image, normal_image, truncate
from genad import create
from genad.errors import GenadError
from genad.types import ImageSample


def _samples(n_good=5, n_bad=3, seed=0):
    rng = np.random.default_rng(seed)
    goods = [ImageSample(f"g{i}", array=normal_image(rng)) for i in range(n_good)]
    bads, masks = [], []
    for i in range(n_bad):
        img, m = defect_image(rng)
        bads.append(ImageSample(f"b{i}", array=img))
        masks.append(m)
    return goods, bads, masks


def test_few_shot_ranks_defects_first_and_localises_them():
    refs, _, _ = _samples(n_good=4, seed=1)
    goods, bads, masks = _samples(seed=2)
    det = create("baseline").fit(refs)
    res = det.predict(goods + bads)
    assert [r.sample_id for r in res] == [s.id for s in goods + bads]
    good_scores = [r.score for r in res[:5]]
    bad_scores = [r.score for r in res[5:]]
    assert min(bad_scores) > max(good_scores)
    assert all(r.decision for r in res[5:]) and not any(r.decision for r in res[:5])
    for r, m in zip(res[5:], masks):
        assert r.anomaly_map.shape == m.shape and r.anomaly_map.dtype == np.float32
        peak = np.unravel_index(np.argmax(r.anomaly_map), m.shape)
        assert m[peak]  # the hottest pixel is on the defect
        x0, y0, x1, y1 = r.regions[0].box
        ys, xs = np.nonzero(m)
        assert x0 <= xs.mean() <= x1 and y0 <= ys.mean() <= y1 and r.regions[0].index == 1


def test_zero_shot_uses_the_batch_median():
    goods, bads, _ = _samples(n_good=8, n_bad=2, seed=3)
    res = create("baseline").predict(goods + bads)
    scores = np.array([r.score for r in res])
    assert set(np.argsort(scores)[-2:]) == {8, 9}
    assert res[9].decision and not res[0].decision


def test_zero_shot_needs_three_images():
    goods, _, _ = _samples(n_good=2, n_bad=0)
    with pytest.raises(GenadError, match="at least 3 images"):
        create("baseline").predict(goods)


def test_one_bad_file_does_not_stop_the_batch(tmp_path):
    goods, bads, _ = _samples(n_good=4, n_bad=1)
    Image.fromarray(normal_image(np.random.default_rng(0))).save(tmp_path / "t.png")
    truncate(tmp_path / "t.png", 100)
    broken = ImageSample("broken", path=tmp_path / "t.png")
    res = create("baseline").predict(goods[:2] + [broken] + goods[2:] + bads)
    assert res[2].error and "cannot read image" in res[2].error and res[2].score is None
    assert all(r.ok for i, r in enumerate(res) if i != 2)
    assert res[-1].score == max(r.score for r in res if r.ok)


def test_images_of_different_sizes_and_a_fixed_threshold():
    rng = np.random.default_rng(0)
    refs = [ImageSample(f"r{i}", array=normal_image(rng, (60 + 10 * i, 80))) for i in range(3)]
    big = ImageSample("big", array=normal_image(rng, (120, 160)))
    det = create("baseline", raw_threshold=1e9).fit(refs)
    (r,) = det.predict([big])
    assert r.anomaly_map.shape == (120, 160) and r.threshold == 1e9 and r.decision is False


def test_bad_options_are_clear():
    with pytest.raises(GenadError, match="bad option for detector 'baseline'"):
        create("baseline", nonsense=1)
    with pytest.raises(GenadError, match="grid must be at least 8"):
        create("baseline", grid=2)
