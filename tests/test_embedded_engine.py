"""The embedded engine on generated images with known anomalies (small, fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from genad import registry
from genad.engines.embedded.backbones import get_backbone
from genad.engines.embedded.detector import EmbeddedDetector
from genad.engines.embedded.features import ImageFeatures
from genad.engines.embedded.geometry import work_size
from genad.engines.embedded.regions import propose_regions
from genad.engines.embedded.search import greedy_coreset, nn_distance, nn_distance_unit
from genad.engines.embedded.zero_shot import mutual_scores
from genad.errors import GenadError
from genad.types import ImageSample

RES = 128  # small working resolution keeps these tests fast


def texture(seed: int, h: int = 128, w: int = 128) -> np.ndarray:
    """A regular woven-looking texture with mild noise; every seed is a normal sample."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    phase = rng.uniform(0, 2 * np.pi, 2)
    base = 128 + 40 * np.sin(x / 3.0 + phase[0]) * np.sin(y / 3.0 + phase[1])
    base = base + rng.normal(0, 6, (h, w))
    return np.repeat(np.clip(base, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def with_defect(img: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Paste a bright flat patch (a 'stain') at box = (x0, y0, x1, y1)."""
    out = img.copy()
    x0, y0, x1, y1 = box
    out[y0:y1, x0:x1] = (250, 40, 40)
    return out


def samples(arrays: list[np.ndarray], prefix: str = "s") -> list[ImageSample]:
    return [ImageSample(id=f"{prefix}{i}", array=a) for i, a in enumerate(arrays)]


@pytest.fixture(scope="module")
def fitted() -> EmbeddedDetector:
    return EmbeddedDetector(resolution=RES).fit(samples([texture(s) for s in range(4)], "ref"))


def test_few_shot_localises_a_pasted_defect(fitted: EmbeddedDetector) -> None:
    box = (70, 30, 90, 50)
    test = samples([texture(10), texture(11), with_defect(texture(12), box)])
    res = fitted.predict(test)
    assert [r.sample_id for r in res] == ["s0", "s1", "s2"]
    assert all(r.ok for r in res)
    normals, bad = res[:2], res[2]
    assert bad.score > max(r.score for r in normals)
    m = bad.anomaly_map
    assert m.shape == (128, 128) and m.dtype == np.float32
    y, x = np.unravel_index(int(np.argmax(m)), m.shape)
    x0, y0, x1, y1 = box
    assert x0 - 4 <= x < x1 + 4 and y0 - 4 <= y < y1 + 4
    # The threshold from the references flags the defect and not the normals.
    assert bad.decision is True and bad.threshold == fitted.calibration_.threshold
    assert not any(r.decision for r in normals)
    assert bad.regions and bad.regions[0].index == 1
    rx0, ry0, rx1, ry1 = bad.regions[0].box
    assert rx0 <= x1 and rx1 >= x0 and ry0 <= y1 and ry1 >= y0  # overlaps the defect
    assert bad.regions[0].mask.shape == m.shape


def test_zero_shot_ranks_the_anomalous_image_first() -> None:
    imgs = [texture(s) for s in range(7)]
    imgs[4] = with_defect(imgs[4], (20, 80, 44, 100))
    det = registry.create("embedded", resolution=RES)
    res = det.predict(samples(imgs))
    scores = [r.score for r in res]
    assert int(np.argmax(scores)) == 4
    assert res[4].decision is True
    assert sum(r.decision for r in res) == 1
    y, x = np.unravel_index(int(np.argmax(res[4].anomaly_map)), (128, 128))
    assert 16 <= x < 48 and 76 <= y < 104


def test_zero_shot_needs_three_images() -> None:
    det = EmbeddedDetector(resolution=RES)
    with pytest.raises(GenadError, match="few-shot"):
        det.predict(samples([texture(0), texture(1)]))


def test_mixed_sizes_elongated_tiny_and_grey(tmp_path, fitted: EmbeddedDetector) -> None:
    grey = tmp_path / "grey.png"
    Image.fromarray(texture(20, 90, 70)[:, :, 0], mode="L").save(grey)
    test = [
        ImageSample(id="strip", array=texture(21, 60, 300)),  # 1:5 strip
        ImageSample(id="tiny", array=texture(22, 24, 20)),
        ImageSample(id="grey", path=grey),
        ImageSample(id="big", array=texture(23, 200, 150)),
        ImageSample(id="missing", path=tmp_path / "nope.png"),
    ]
    for det in (fitted, EmbeddedDetector(resolution=RES)):
        res = det.predict(test)
        shapes = {r.sample_id: None if r.anomaly_map is None else r.anomaly_map.shape for r in res}
        assert shapes == {"strip": (60, 300), "tiny": (24, 20), "grey": (90, 70), "big": (200, 150), "missing": None}
        assert res[-1].error and "no such file" in res[-1].error.lower() and res[-1].score is None
        assert all(np.isfinite(r.anomaly_map).all() for r in res[:-1])


def test_references_of_another_size_and_mode() -> None:
    refs = [ImageSample(id="r0", array=np.repeat(texture(0, 200, 260)[:, :, :1], 3, axis=2))]
    det = EmbeddedDetector(resolution=RES).fit(refs)  # one reference: threshold from its flips
    assert det.calibration_ is not None and det.calibration_.threshold > 0
    assert len(det.reference_scores_) == 2  # its two flipped views
    res = det.predict(samples([texture(5, 100, 100), with_defect(texture(6, 100, 100), (40, 40, 60, 60))]))
    assert res[1].score > res[0].score


def test_geometry_keeps_aspect_and_multiples() -> None:
    h, w = work_size(500, 1250, scale=0.4, multiple=32, resolution=256)
    assert h % 32 == 0 and w % 32 == 0
    assert abs(w / h - 2.5) < 0.35
    assert min(work_size(10, 12, scale=1.0, multiple=14, resolution=256)) >= 28


def test_chunked_nn_equals_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    q, b = torch.randn(37, 9, generator=g), torch.randn(101, 9, generator=g)
    d, i = nn_distance(q, b, block_floats=64)  # forces many tiny blocks
    full = torch.cdist(q, b)
    assert torch.allclose(d, full.min(1).values, atol=1e-4)
    assert torch.equal(i, full.argmin(1))
    qn, bn = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(b, dim=1)
    assert torch.allclose(nn_distance_unit(qn, bn, block_floats=50), torch.cdist(qn, bn).min(1).values, atol=1e-4)


def test_mutual_scoring_equals_brute_force() -> None:
    rng = np.random.default_rng(1)
    feats, grids = [], [(3, 4), (2, 2), (4, 5), (3, 3), (1, 6)]
    for h, w in grids:
        v = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(h * w, 6)).astype(np.float32)), dim=1)
        feats.append(ImageFeatures((h, w), (h, w), (h, w), {1: v}, v.mean(0)))
    got = mutual_scores(feats, fraction=0.5, max_refs=None, block_floats=7)
    n = len(feats)
    for i in range(n):
        per_j = np.stack(
            [torch.cdist(feats[i].by_r[1], feats[j].by_r[1]).min(1).values.numpy() for j in range(n) if j != i], 1
        )
        k = int(round(0.5 * (n - 1)))
        want = np.sort(per_j, axis=1)[:, :k].mean(1).reshape(grids[i])
        np.testing.assert_allclose(got[i], want, atol=1e-4)


def test_coreset_keeps_size_and_far_points() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 16, generator=g) * 0.1
    x[123] += 50.0  # an outlier far from the rest
    x[321] -= 50.0
    idx = greedy_coreset(x, 20, proj_dim=8)
    assert len(idx) == 20 and len(set(idx.tolist())) == 20
    assert 123 in idx.tolist() and 321 in idx.tolist()


def test_propose_regions_orders_and_boxes() -> None:
    m = np.zeros((100, 120), np.float32)
    m[10:20, 30:50] = 1.0
    m[60:80, 70:75] = 2.0
    m[90:91, 0:1] = 3.0  # a single pixel: below the minimum area
    regs = propose_regions(m, max_regions=5, min_area_frac=0.001, threshold=0.5)
    assert [r.index for r in regs] == [1, 2]
    assert regs[0].box == (70, 60, 75, 80) and regs[0].score == 2.0
    assert regs[1].box == (30, 10, 50, 20) and int(regs[1].mask.sum()) == 200
    assert propose_regions(np.zeros((10, 10), np.float32)) == []


def test_bad_options_are_user_errors() -> None:
    with pytest.raises(GenadError, match="backbone"):
        registry.create("embedded", backbone="resnet50")
    with pytest.raises(GenadError, match="aggregation"):
        EmbeddedDetector(aggregation=(2,))
    with pytest.raises(GenadError, match="bad option"):
        registry.create("embedded", nonsense=1)


def test_dinov2_backbone_takes_non_square_inputs() -> None:
    bb = get_backbone("dinov2-s")
    maps = bb(np.random.default_rng(0).random((1, 3, 112, 196), dtype=np.float32))
    assert len(maps) == 3 and all(m.shape == (1, 384, 8, 14) for m in maps)


def test_strides_auto_keeps_a_fine_enough_patch_grid() -> None:
    # At the default resolution strides 16 and 32; small working sizes use 8 and 16.
    assert EmbeddedDetector().strides == (16, 32)
    assert EmbeddedDetector(resolution=128).strides == (8, 16)
    assert EmbeddedDetector(strides="8,32").strides == (8, 32)  # as --param strides=8,32 gives it
    assert get_backbone("effnet-lite0", 1, (16,)).stride == 16
    assert get_backbone("effnet-lite0", 1, (8, 16)).stride == 8
    for bad in ("4", "x", ()):
        with pytest.raises(GenadError, match="stride"):
            EmbeddedDetector(strides=bad)
    with pytest.raises(GenadError, match="14"):
        EmbeddedDetector(backbone="dinov2-s", strides=(8,))


def test_default_stride_16_zero_shot_localises_a_defect() -> None:
    imgs = [texture(s, 160, 160) for s in range(6)]
    box = (100, 40, 124, 64)
    imgs[2] = with_defect(imgs[2], box)
    res = registry.create("embedded", resolution=256).predict(samples(imgs))
    assert int(np.argmax([r.score for r in res])) == 2
    y, x = np.unravel_index(int(np.argmax(res[2].anomaly_map)), res[2].anomaly_map.shape)
    x0, y0, x1, y1 = box
    assert x0 - 8 <= x < x1 + 8 and y0 - 8 <= y < y1 + 8


def test_projection_keeps_distances_and_is_fixed() -> None:
    from genad.engines.embedded.features import project

    torch.manual_seed(1)
    x = torch.nn.functional.normalize(torch.randn(2, 432, 6, 5), dim=1)
    y = project(x, 128)
    assert y.shape == (2, 128, 6, 5)
    assert torch.equal(y, project(x, 128))  # the same matrix every call
    assert project(x, None) is x and project(x, 500) is x
    a, b = x.flatten(2).transpose(1, 2).reshape(-1, 432), y.flatten(2).transpose(1, 2).reshape(-1, 128)
    da, db = torch.cdist(a, a), torch.cdist(b, b)
    # an orthonormal projection to 128 of 432 dims keeps about sqrt(128/432) of each distance
    ratio = (db / da.clamp_min(1e-6))[da > 0]
    assert abs(float(ratio.mean()) - (128 / 432) ** 0.5) < 0.05 and float(ratio.std()) < 0.1
    with pytest.raises(GenadError, match="dims"):
        EmbeddedDetector(dims=2)
