import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

import genad.metrics.pixel as pixel
from genad.errors import GenadError
from genad.metrics.pixel import PixelMetrics, aupro, pixel_ap, pixel_auroc, pixel_metrics
from metrics_helpers import blob_masks_and_maps, exact_aupro


def _exact(maps, masks):
    y = np.concatenate([(np.zeros(a.shape, bool) if m is None else m).ravel() for a, m in zip(maps, masks)])
    s = np.concatenate([a.astype(np.float32).ravel() for a in maps])
    return roc_auc_score(y, s), average_precision_score(y, s), exact_aupro(maps, masks)


def _assert_close(maps, masks, tol=1e-3):
    got = pixel_metrics(maps, masks)
    auroc, ap, pro = _exact(maps, masks)
    assert got["pixel_auroc"] == pytest.approx(auroc, abs=tol)
    assert got["pixel_ap"] == pytest.approx(ap, abs=tol)
    assert got["aupro"] == pytest.approx(pro, abs=tol)
    return got, (auroc, ap, pro)


def test_hand_computed_aupro():
    # one 2-pixel component; scores: pos .9, neg .5, pos .3, neg .2, neg .1
    amap = np.array([[0.9, 0.3, 0.5, 0.2, 0.1]], np.float32)
    mask = np.array([[1, 1, 0, 0, 0]], bool)
    # curve (0,0) (0,.5) (1/3,.5) (1/3,1) (2/3,1) (1,1)
    assert aupro([amap], [mask]) == pytest.approx(0.5)  # .5 * .3 / .3
    assert aupro([amap], [mask], max_fpr=0.5) == pytest.approx((0.5 / 3 + 1 * (0.5 - 1 / 3)) / 0.5)
    assert aupro([amap], [mask], max_fpr=1.0) == pytest.approx(0.5 / 3 + 2 / 3)
    # AUROC: .9 beats 3 negatives, .3 beats 2 -> 5/6 ; AP: 1*.5 + (2/3)*.5
    assert pixel_auroc([amap], [mask]) == pytest.approx(5 / 6)
    assert pixel_ap([amap], [mask]) == pytest.approx(0.5 + 1 / 3)


def test_components_are_eight_connected_and_pooled():
    # Two diagonal pixels form ONE component (8-connectivity): half found -> PRO .5, not (1+0)/2 by
    # 4-connectivity luck. Use a map that finds one of them first.
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[1, 1] = True
    amap = np.zeros((4, 4), np.float32)
    amap[0, 0] = 2.0  # found at FPR 0
    amap[1, 1] = -1.0  # below every normal pixel
    pm = PixelMetrics(max_fpr=0.3)
    pm.add(amap, mask)
    assert pm.n_regions == 1
    assert pm.compute()["aupro"] == pytest.approx(0.5)
    assert pm.compute()["aupro"] == pytest.approx(exact_aupro([amap], [mask]))


def test_random_data_matches_exact():
    rng = np.random.default_rng(0)
    maps, masks = [], []
    for i in range(12):
        h, w = rng.integers(20, 70, 2)
        mask = rng.random((h, w)) < 0.1
        maps.append(rng.normal(mask * 0.7, 1.0).astype(np.float32))
        masks.append(mask if i % 3 else None)  # some images all normal
    got, exact = _assert_close(maps, masks, tol=1e-4)


def test_structured_data_matches_exact_across_sizes():
    rng = np.random.default_rng(1)
    maps, masks = blob_masks_and_maps(rng, 25, [(64, 80), (50, 50), (97, 33)])
    _assert_close(maps, masks, tol=1e-4)


def test_ties_integer_maps_exact():
    rng = np.random.default_rng(2)
    maps, masks = blob_masks_and_maps(rng, 10, [(40, 40)])
    maps = [np.round(a).astype(np.float32) for a in maps]  # a handful of values: heavy ties
    got, exact = _assert_close(maps, masks, tol=1e-9)


def test_scale_and_offset_do_not_matter():
    rng = np.random.default_rng(3)
    maps, masks = blob_masks_and_maps(rng, 10, [(48, 64)])
    base = pixel_metrics(maps, masks)
    for f in (lambda a: a * 1e-6, lambda a: a * 1e5 + 3e5, lambda a: a + 100.0):
        moved = [f(a.astype(np.float64)).astype(np.float32) for a in maps]
        _assert_close(moved, masks, tol=1e-4)
        assert pixel_metrics(moved, masks)["pixel_auroc"] == pytest.approx(base["pixel_auroc"], abs=1e-4)


def test_outliers_and_infinities():
    rng = np.random.default_rng(4)
    maps, masks = blob_masks_and_maps(rng, 8, [(40, 40)])
    maps[0][0, 0] = 1e9
    maps[1][5, 5] = np.inf
    maps[2][3, 3] = -np.inf
    _assert_close([np.where(np.isfinite(a), a, np.sign(a) * 3e38).astype(np.float32) for a in maps], masks, tol=1e-4)
    assert pixel_auroc(maps, masks) == pytest.approx(
        pixel_auroc([np.where(np.isfinite(a), a, np.sign(a) * 3e38).astype(np.float32) for a in maps], masks), abs=1e-9
    )


def test_many_flushes_streamed(monkeypatch):
    rng = np.random.default_rng(5)
    maps, masks = blob_masks_and_maps(rng, 20, [(30, 40)])
    monkeypatch.setattr(pixel, "_BUFFER", 1000)  # flush after every image; center from image 1
    many = pixel_metrics(iter(maps), iter(masks))
    auroc, ap, pro = _exact(maps, masks)
    assert many == pytest.approx({"pixel_auroc": auroc, "pixel_ap": ap, "aupro": pro}, abs=1e-4)


def test_undefined_is_none_and_add_after_compute():
    pm = PixelMetrics()
    assert pm.compute() == {"pixel_auroc": None, "pixel_ap": None, "aupro": None}
    pm.add(np.random.default_rng(0).random((8, 8)), None)
    assert pm.compute() == {"pixel_auroc": None, "pixel_ap": None, "aupro": None}
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:4] = True
    pm.add(mask * 5.0, mask)
    r = pm.compute()
    assert r["pixel_auroc"] == pytest.approx(1.0) and r["aupro"] == pytest.approx(1.0)
    assert pm.n_images == 2 and pm.n_positive == 4 and pm.n_negative == 124
    c = pm.curves()
    assert c["fpr"][0] == 0 and c["fpr"][-1] == pytest.approx(1) and c["tpr"][-1] == pytest.approx(1)
    assert np.all(np.diff(c["fpr"]) >= 0) and np.all(np.diff(c["recall"]) >= 0)


def test_user_mistakes():
    with pytest.raises(GenadError, match="differs from its mask"):
        PixelMetrics().add(np.zeros((4, 5)), np.zeros((5, 4), bool))
    with pytest.raises(GenadError, match="NaN"):
        PixelMetrics().add(np.full((4, 4), np.nan), None)
    with pytest.raises(GenadError, match="2-D"):
        PixelMetrics().add(np.zeros(4), None)
    with pytest.raises(GenadError, match="one mask per map"):
        pixel_metrics([np.zeros((2, 2))] * 2, [None])
    with pytest.raises(GenadError, match="max_fpr"):
        PixelMetrics(max_fpr=0.0)
