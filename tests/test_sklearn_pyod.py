"""genad's scikit-learn / PyOD face: sklearn.base.clone on every registered detector, fit and
predict taking arrays, paths and lists (genad.types.as_samples), and the PyOD adapter
(genad.pyod.GenadOD) in a PyOD-style benchmark loop on generated data with known anomalies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

import genad
from genad import registry
from genad.errors import GenadError
from genad.pyod import GenadOD
from genad.types import ImageSample, PointCloudSample, TimeSeriesSample, VideoSample, as_samples

BUILT_IN = [n for n in registry.available() if not n.startswith("test-")]  # not other tests' own


# -- data with known anomalies ---------------------------------------------------------------------
def _images(n: int, n_bad: int, seed: int, side: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """N greyscale textures (uint8 N x side x side); n_bad of them carry a bright square."""
    rng = np.random.default_rng(seed)
    x = rng.integers(80, 120, (n, side, side), dtype=np.uint8)
    y = np.zeros(n, dtype=int)
    bad = rng.choice(n, n_bad, replace=False)
    y[bad] = 1
    for i in bad:
        r, c = rng.integers(2, side - 8, 2)
        x[i, r : r + 6, c : c + 6] = 250
    return x, y


def _series(n: int, n_bad: int, seed: int, length: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """N noisy sine waves, one a row (tabular N x length); n_bad of them carry a spike."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    x = np.sin(2 * np.pi * t / 25)[None, :] + 0.1 * rng.normal(size=(n, length))
    y = np.zeros(n, dtype=int)
    bad = rng.choice(n, n_bad, replace=False)
    y[bad] = 1
    for i in bad:
        x[i, rng.integers(50, length - 20)] += 3.0
    return x, y


def _png(path: Path, a: np.ndarray) -> Path:
    Image.fromarray(a).save(path)
    return path


# -- 1. scikit-learn's clone ---------------------------------------------------------------------
@pytest.mark.parametrize("name", BUILT_IN)
def test_sklearn_clone_works_for_every_registered_detector(name):
    det = genad.create(name)
    copy = clone(det)
    assert type(copy) is type(det) and copy is not det
    assert copy.get_params() == det.get_params()
    assert not copy.fitted_ and copy.fit_info_ is None


def test_clone_of_a_fitted_detector_is_unfitted_and_keeps_converted_options():
    x, _ = _images(4, 0, seed=0)
    det = genad.create("baseline", grid=np.int64(16), shift="2", blur=0.5).fit(x)
    assert det.fitted_ and det.fit_info_ is not None
    copy = clone(det)
    assert copy.get_params() == det.get_params() and copy.get_params()["grid"] == 16
    assert not copy.fitted_ and copy.center_ is None and copy.fit_info_ is None


def test_clone_keeps_collections_and_nested_detectors():
    det = genad.create("video", image_detector="baseline", image_params={"grid": 16})
    copy = clone(det)
    assert copy.image_params == {"grid": 16} and copy.image_params is not det.image_params
    inner = genad.create("baseline", grid=16)
    hybrid = genad.create("lmm+embedded", embedded=inner, defect_types=["crack", "scratch"])
    assert hybrid.defect_types == ("crack", "scratch")
    deep = hybrid.get_params(deep=True)
    assert deep["embedded__grid"] == 16 and deep["embedded"] is inner
    copy2 = clone(hybrid)
    assert copy2.embedded is not inner and copy2.embedded.get_params() == inner.get_params()
    hybrid.set_params(embedded__grid=32)
    assert inner.grid == 32 and copy2.embedded.grid == 16
    with pytest.raises(GenadError, match="holds no estimator"):
        genad.create("baseline").set_params(grid__x=1)


# -- 2. fit and predict take arrays, paths and lists ------------------------------------------------
def test_predict_takes_arrays_paths_lists_and_samples(tmp_path):
    x, _ = _images(6, 0, seed=1)
    det = genad.create("baseline", grid=16).fit(x)  # an N x H x W array of references
    assert det.fit_info_ is not None and det.fit_info_["count"] == 6
    assert det.fit_info_["ids"] == [f"array-{i}" for i in range(6)]

    test, y = _images(4, 2, seed=2)
    rgb = np.repeat(test[..., None], 3, axis=3)
    stacked = det.predict(rgb)  # N x H x W x 3
    assert [r.sample_id for r in stacked] == ["array-0", "array-1", "array-2", "array-3"]
    scores = [r.score for r in stacked]
    assert all(r.ok for r in stacked)
    assert np.argmax(scores) in np.flatnonzero(y)

    assert det.predict(test[0])[0].score == pytest.approx(scores[0])  # one H x W image
    assert det.predict(rgb[1])[0].score == pytest.approx(scores[1])  # one H x W x 3 image
    assert [r.score for r in det.predict(list(test))] == pytest.approx(scores)  # a list of images
    as_float = det.predict(rgb.astype(np.float32) / 255.0)  # floats in 0..1 read as the same pixels
    assert [r.score for r in as_float] == pytest.approx(scores, abs=1e-3)
    one = ImageSample("mine", array=rgb[2])
    assert [(r.sample_id, r.score) for r in det.predict(one)] == [("mine", pytest.approx(scores[2]))]

    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = [_png(folder / f"t{i}.png", rgb[i]) for i in range(4)]
    by_path = det.predict(str(paths[0]))  # a path as text
    assert by_path[0].sample_id == "t0.png" and by_path[0].score == pytest.approx(scores[0])
    mixed = det.predict([paths[1], rgb[2], one, paths[1]])  # paths, arrays and samples together
    assert [r.sample_id for r in mixed] == ["t1.png", "array-0", "mine", "t1.png#2"]
    assert [r.score for r in det.predict(folder)] == pytest.approx(scores)  # a folder

    det.fit(paths)
    assert det.fit_info_["ids"] == ["t0.png", "t1.png", "t2.png", "t3.png"]  # type: ignore[index]


def test_series_and_other_modalities_read_arrays_by_their_own_shapes():
    x, y = _series(5, 1, seed=3)
    det = genad.create("ts-iforest")
    results = det.predict(x)  # (N, T): one series a row
    assert [r.sample_id for r in results] == [f"array-{i}" for i in range(5)] and all(r.ok for r in results)
    assert len(det.predict(x[0])) == 1  # (T,): one series

    series = as_samples([x[0], np.stack([x[1], x[2]], axis=1)], "timeseries")  # (T,) and (T, D) in a list
    assert [type(s) for s in series] == [TimeSeriesSample] * 2 and series[1].values.shape == (200, 2)  # type: ignore[attr-defined]
    clouds = as_samples(np.zeros((2, 50, 3)), "pointcloud")
    assert [type(s) for s in clouds] == [PointCloudSample] * 2
    video = as_samples(np.zeros((5, 16, 16, 3), np.uint8), "video")
    assert len(video) == 1 and isinstance(video[0], VideoSample) and video[0].frames.shape == (5, 16, 16, 3)  # type: ignore[union-attr]
    grey = as_samples(np.zeros((3, 8, 8), np.float64))  # N greyscale images, as uint8 RGB
    assert len(grey) == 3 and grey[0].array.shape == (8, 8, 3) and grey[0].array.dtype == np.uint8  # type: ignore[attr-defined]


def test_samples_pass_through_unchanged():
    mine = [
        ImageSample("a", array=np.zeros((8, 8, 3), np.uint8)),
        ImageSample("a", array=np.zeros((8, 8, 3), np.uint8)),
    ]
    out = as_samples(mine)
    assert out == mine and all(o is m for o, m in zip(out, mine)) and [s.id for s in mine] == ["a", "a"]
    assert as_samples(s for s in mine)[1] is mine[1]  # any iterable
    assert as_samples([]) == []


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros(10), "image detector reads arrays of shape"),
        (np.zeros((2, 3, 8, 8, 3)), "got one of shape (2, 3, 8, 8, 3)"),
        ("/no/such/file.png", "no such file or folder"),
        (42, "cannot read an int as samples"),
        ({"image": 1}, "cannot read a dict as samples"),
        ([np.zeros((4, 8, 8))], "arrays in a list of shape HxW or HxWxC"),
        ([ImageSample("a", array=np.zeros((8, 8, 3), np.uint8)), 3.5], "cannot read a float in a list"),
        (np.full((8, 8), 300.0), "float pixels must lie in 0..1"),
        (np.array([["a", "b"]]), "cannot be samples"),
    ],
)
def test_a_wrong_input_is_one_clear_error(bad, message):
    det = genad.create("baseline", grid=16)
    for call in (det.predict, det.fit):
        with pytest.raises(GenadError) as e:
            call(bad)
        assert message in str(e.value) and "\n" not in str(e.value)


def test_a_file_the_detector_does_not_read_is_refused(tmp_path):
    csv = tmp_path / "x.csv"
    csv.write_text("1\n2\n3\n")
    with pytest.raises(GenadError, match="is not a file that an image detector reads"):
        genad.create("baseline").predict(csv)
    assert len(genad.create("ts-iforest").predict(csv)) == 1  # a series detector reads it


# -- 3. the PyOD adapter ---------------------------------------------------------------------------
def _benchmark(od: GenadOD, x_train, x_test, y_test) -> float:
    """A PyOD benchmark loop, unchanged: fit on train, score test, ROC AUC."""
    od.fit(x_train)
    y_test_scores = od.decision_function(x_test)
    return roc_auc_score(y_test, y_test_scores)


def test_pyod_loop_on_images_with_a_bright_square():
    x_train, _ = _images(20, 0, seed=10)
    x_test, y_test = _images(30, 8, seed=11)
    od = GenadOD("baseline", contamination=0.1, grid=16)
    assert _benchmark(od, x_train, x_test, y_test) >= 0.95

    assert od.decision_scores_.shape == (20,) and od.labels_.dtype.kind == "i"
    assert set(od.labels_.tolist()) <= {0, 1}
    assert od.threshold_ == pytest.approx(np.percentile(od.decision_scores_, 90))
    assert od.labels_.tolist() == (od.decision_scores_ > od.threshold_).astype(int).tolist()
    pred = od.predict(x_test)
    assert pred.dtype.kind == "i" and set(pred.tolist()) <= {0, 1}
    assert (pred == (od.decision_function(x_test) > od.threshold_)).all()
    for method in ("normalized", "linear", "unify"):
        proba = od.predict_proba(x_test, method=method)
        assert proba.shape == (30, 2) and np.allclose(proba.sum(axis=1), 1.0)
        assert ((proba >= 0) & (proba <= 1)).all()
        assert roc_auc_score(y_test, proba[:, 1]) >= 0.9, method
    assert od.detector_.fitted_ and od.detector_.fit_info_["count"] == 20  # type: ignore[index]
    assert [r.sample_id for r in od.results(x_test[:2])] == ["array-0", "array-1"]


def test_pyod_loop_on_series_with_a_spike():
    x_train, _ = _series(10, 0, seed=20)
    x_test, y_test = _series(24, 6, seed=21)
    od = GenadOD("ts-matrix-profile", contamination=0.25, folds=2)
    assert _benchmark(od, x_train, x_test, y_test) >= 0.9  # 2-D tabular X: each row a series
    assert od.predict(x_test).sum() >= 3


def test_pyod_loop_with_the_embedded_engine_on_tiny_images():
    x_train, _ = _images(8, 0, seed=12, side=48)
    x_test, y_test = _images(12, 4, seed=13, side=48)
    od = GenadOD("embedded", contamination=0.1, folds=2, resolution=64, augment="none")
    assert _benchmark(od, x_train, x_test, y_test) >= 0.9
    assert clone(od.detector_).augment == "none"  # an option its converter reads from a null word


def test_training_scores_are_out_of_fold():
    # scored against references that include themselves, samples look more normal than they are
    x, y = _images(12, 2, seed=30)
    in_sample = GenadOD("baseline", folds=0, grid=16).fit(x)
    out_of_fold = GenadOD("baseline", folds=4, grid=16).fit(x)
    assert out_of_fold.decision_scores_.mean() > in_sample.decision_scores_.mean()
    assert roc_auc_score(y, out_of_fold.decision_scores_) >= 0.9
    assert out_of_fold.fit_predict(x).tolist() == out_of_fold.labels_.tolist()


def test_genad_own_boundary_with_contamination_none():
    x_train, _ = _images(10, 0, seed=40)
    x_test, y_test = _images(12, 4, seed=41)
    od = GenadOD("baseline", contamination=None, grid=16).fit(x_train)
    results = od.results(x_test)
    assert od.predict(x_test).tolist() == [int(bool(r.decision)) for r in results]
    assert np.isfinite(od.threshold_)


def test_the_adapter_is_a_clonable_sklearn_estimator():
    od = GenadOD("baseline", contamination=0.2, folds=3, grid=16, blur=0.5)
    assert od.get_params(deep=False) == {
        "detector": "baseline",
        "contamination": 0.2,
        "folds": 3,
        "grid": 16,
        "blur": 0.5,
    }
    x, _ = _images(6, 0, seed=50)
    od.fit(x)
    copy = clone(od)
    assert copy.get_params() == od.get_params() and not hasattr(copy, "detector_")
    assert copy.set_params(grid=32, contamination=0.1) is copy and copy.get_params()["grid"] == 32
    assert od.get_params()["grid"] == 16
    inner = GenadOD(genad.create("baseline", grid=16))
    assert inner.get_params(deep=True)["detector__grid"] == 16
    assert clone(inner).detector is not inner.detector
    assert "GenadOD(" in repr(od)


def test_the_adapter_says_what_is_wrong():
    x, _ = _images(4, 0, seed=60)
    with pytest.raises(GenadError, match="contamination must be in"):
        GenadOD("baseline", contamination=0.7).fit(x)
    with pytest.raises(GenadError, match="unknown option"):
        GenadOD("baseline", gird=16).fit(x)
    with pytest.raises(GenadError, match="not fitted yet"):
        GenadOD("baseline").decision_function(x)
    with pytest.raises(GenadError, match="use a series detector such as 'ts-iforest'"):
        GenadOD("baseline").fit(np.zeros((10, 20)))  # tabular X is not images
    with pytest.raises(GenadError, match="method must be"):
        GenadOD("baseline", grid=16).fit(x).predict_proba(x, method="softmax")
