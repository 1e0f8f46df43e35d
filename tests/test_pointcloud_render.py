"""Multi-view rendering, z-buffer occlusion, back-projection to points, synthetic defects."""

import numpy as np
import pytest
from scipy import ndimage

from genad.errors import GenadError
from genad.modalities.pointcloud.render import (
    colorize_points,
    normalise,
    project_to_points,
    render_view,
    render_views,
    view_rotations,
)
from genad.modalities.pointcloud.synth import DEFECTS, SHAPES, make_dataset, make_shape


def _two_planes(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-1, 1, (2 * n, 2))
    z = np.r_[np.full(n, 0.3), np.full(n, -0.3)]
    return np.column_stack([xy, z])  # first n points: the upper plane


def test_rotations_are_orthonormal_and_the_first_top_view_looks_down():
    for layout in ("top", "sphere"):
        rots = view_rotations(9, layout)
        assert len(rots) == 9
        for r in rots:
            np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-9)
            assert np.linalg.det(r) == pytest.approx(1.0)
    np.testing.assert_allclose(view_rotations(6, "top")[0][2], [0, 0, 1])
    with pytest.raises(GenadError, match="layout"):
        view_rotations(3, "cube")


def test_zbuffer_shows_the_front_surface_and_hides_the_back():
    pts = _two_planes()
    norm, _, _ = normalise(pts)
    top = render_view(norm, view_rotations(1, "top")[0], size=96)
    shown = top.index_map[top.index_map >= 0]
    assert shown.size > 0.3 * 96 * 96
    assert (shown < 3000).mean() > 0.99  # pixels show the upper plane
    assert top.visible[:3000].mean() > 0.97 and top.visible[3000:].mean() < 0.03
    # seen from below, the lower plane is in front
    below = render_view(norm, np.diag([1.0, -1.0, -1.0]), size=96)
    assert below.visible[3000:].mean() > 0.97 and below.visible[:3000].mean() < 0.03
    assert top.image.dtype == np.uint8 and top.image.shape == (96, 96, 3)
    assert (top.image[top.index_map < 0] == 0).all()


def test_project_to_points_mean_over_visible_views_and_nearest_fill_for_hidden():
    pts = _two_planes(n=1500)
    norm, _, _ = normalise(pts)
    views = [render_view(norm, view_rotations(1)[0], size=64)]  # only the top view
    score = project_to_points(views, [np.full((64, 64), 2.0)], norm)
    np.testing.assert_allclose(score, 2.0)  # hidden lower points take their neighbour's value
    # a map that grows left to right gives points scores that grow with x
    ramp = np.tile(np.linspace(0, 1, 64), (64, 1))
    s = project_to_points(views, [ramp], norm)
    upper = slice(0, 1500)
    assert np.corrcoef(norm[upper, 0], s[upper])[0, 1] > 0.99
    # two views, one failed (None): the other alone decides; max vs mean
    both = project_to_points(views * 2, [np.full((64, 64), 1.0), np.full((64, 64), 3.0)], norm)
    np.testing.assert_allclose(both[upper], 2.0)
    mx = project_to_points(views * 2, [np.full((64, 64), 1.0), np.full((64, 64), 3.0)], norm, reduce="max")
    np.testing.assert_allclose(mx[upper], 3.0)
    np.testing.assert_allclose(project_to_points(views * 2, [None, np.full((64, 64), 5.0)], norm), 5.0)
    with pytest.raises(GenadError, match="no point"):
        project_to_points(views, [None], norm)


def test_synthetic_defects_have_labels_where_the_surface_moved():
    for kind in SHAPES:
        good = make_shape(kind, None, n_points=3000, seed=1)
        assert good.truth.label == 0 and not good.truth.point_labels.any()
        for d in DEFECTS:
            s = make_shape(kind, d, n_points=3000, seed=1)
            lab = s.truth.point_labels
            assert s.truth.label == 1 and s.truth.defect_type == d
            assert 0.001 < lab.mean() < 0.1, (kind, d, lab.mean())
            assert lab.shape == (len(s.points),)
    # a bump on a plane: labelled points stand off the plane fitted to the others
    s = make_shape("plane", "bump", n_points=4000, seed=2, noise=0.0)
    lab = s.truth.point_labels
    rest = s.points[~lab]
    normal = np.linalg.svd(rest - rest.mean(0))[2][2]
    off = np.abs((s.points - rest.mean(0)) @ normal)
    assert off[lab].max() > 0.05 and off[~lab].max() < 0.02
    train, test = make_dataset("sphere", n_train=2, n_normal=3, n_defective=4, n_points=1000)
    assert len(train) == 2 and [t.truth.label for t in test] == [0, 0, 0, 1, 1, 1, 1]
    assert len({t.id for t in train + test}) == 9


def test_a_bump_changes_the_render_only_near_it():
    good = make_shape("plane", None, n_points=6000, seed=5, noise=0.0).points
    d2 = ((good[:, :2] - [0.3, 0.3]) ** 2).sum(1)
    bumped = good.copy()
    bumped[:, 2] += 0.08 * np.exp(-d2 / (2 * 0.06**2))
    labels = d2 < 0.12**2
    vg = render_views(good, 1, 128)[0]
    vb = render_views(bumped, 1, 128)[0]
    diff = np.abs(vg.image[..., 0].astype(int) - vb.image[..., 0].astype(int))
    lab_pix = np.zeros(128 * 128, bool)
    lab_pix[vb.point_pixel[labels]] = True
    near = ndimage.binary_dilation(lab_pix.reshape(128, 128), iterations=3)
    assert diff[near].mean() > 10 * max(diff[~near].mean(), 0.1)


def test_colorize_and_bad_inputs():
    pts = _two_planes(500)
    views = render_views(pts, 2, 48)
    col = colorize_points(views, pts[:, 0])
    assert len(col) == 2 and col[0].shape == (48, 48, 3)
    with pytest.raises(GenadError, match="NaN"):
        normalise(np.array([[0, 0, np.nan], [1, 1, 1]]))
    with pytest.raises(GenadError, match="same place"):
        normalise(np.ones((5, 3)))


def test_pointcloud_metrics_match_scikit_learn():
    from sklearn.metrics import roc_auc_score

    from genad.modalities.pointcloud.metrics import pointcloud_metrics
    from genad.types import GroundTruth, PointCloudSample, Result

    rng = np.random.default_rng(0)
    samples, results = [], []
    for i in range(6):
        lab = np.zeros(50, bool)
        if i >= 3:
            lab[:5] = True
        amap = rng.random(50).astype(np.float32) + lab
        samples.append(
            PointCloudSample(
                id=str(i), points=rng.random((50, 3)), truth=GroundTruth(label=int(i >= 3), point_labels=lab)
            )
        )
        results.append(Result(str(i), score=float(i % 4), anomaly_map=amap))
    results.append(Result("bad", error="boom"))
    samples.append(PointCloudSample(id="bad", points=np.zeros((1, 3)), truth=GroundTruth(label=1)))
    m = pointcloud_metrics(samples, results)
    assert m["object_auroc"] == pytest.approx(roc_auc_score([0, 0, 0, 1, 1, 1], [0, 1, 2, 3, 0, 1]))
    pl = np.concatenate([s.truth.point_labels for s in samples[:6]])
    ps = np.concatenate([r.anomaly_map for r in results[:6]])
    assert m["point_auroc"] == pytest.approx(roc_auc_score(pl, ps))
    assert m["point_auroc_defective"] == pytest.approx(roc_auc_score(pl[150:], ps[150:]))
    assert m["n_failed"] == 1 and m["n_clouds"] == 7
