"""Full-shot fitting of the embedded engine: fast coreset, leave-one-out by masking, the feature
cache, and saved models of banks that record where their rows came from (small, generated)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import genad
import genad.engines.embedded.detector as detector_module
from genad.engines.embedded.cache import FeatureCache
from genad.engines.embedded.detector import EmbeddedDetector
from genad.engines.embedded.features import ImageFeatures
from genad.engines.embedded.few_shot import MemoryBank
from genad.engines.embedded.search import coverage_radius, greedy_coreset
from genad.types import ImageSample

RES = 96  # small working resolution keeps these tests fast


@pytest.fixture(autouse=True)
def _own_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never touch the real ~/.cache: every test gets its own feature cache folder."""
    root = tmp_path / "genad-cache"
    monkeypatch.setenv("GENAD_CACHE_DIR", str(root))
    monkeypatch.delenv("GENAD_FEATURE_CACHE_MB", raising=False)
    return root / "features"


# -- coreset ------------------------------------------------------------------------------------
def plain_greedy(features: torch.Tensor, size: int, proj_dim: int = 128, seed: int = 0) -> torch.Tensor:
    """The plain farthest-point loop the fast one replaced (one pass over all rows per pick)."""
    n, d = features.shape
    g = torch.Generator().manual_seed(seed)
    x = features
    if d > proj_dim:
        x = features @ (torch.randn(d, proj_dim, generator=g) / proj_dim**0.5)
    start = int(torch.randint(n, (1,), generator=g))
    chosen = [start]
    mind = ((x - x[start]) ** 2).sum(1)
    for _ in range(1, size):
        i = int(torch.argmax(mind))
        chosen.append(i)
        mind = torch.minimum(mind, ((x - x[i]) ** 2).sum(1))
    return torch.tensor(chosen)


def clustered(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Unit rows in a few tight clusters of very different sizes plus scattered outliers (rare
    but normal patches, which a coreset must keep)."""
    g = torch.Generator().manual_seed(seed)
    sizes = [n // 2, n // 4, n // 8]
    sizes.append(n - sum(sizes) - 20)
    parts = [torch.randn(1, d, generator=g) + 0.15 * torch.randn(m, d, generator=g) for m in sizes]
    parts.append(torch.randn(20, d, generator=g))  # outliers
    return torch.nn.functional.normalize(torch.cat(parts), dim=1)


def test_fast_coreset_selects_distinct_rows_deterministically() -> None:
    x = clustered(3000, 160)
    a = greedy_coreset(x, 300, seed=3)
    b = greedy_coreset(x, 300, seed=3)
    assert a.shape == (300,) and a.dtype == torch.long
    assert len(set(a.tolist())) == 300
    assert torch.equal(a, b)
    assert not torch.equal(a, greedy_coreset(x, 300, seed=4))
    assert torch.equal(greedy_coreset(x, 5000), torch.arange(3000))  # nothing to reduce


def test_fast_coreset_matches_the_plain_loop_and_covers_better_than_random() -> None:
    x = clustered(2500, 160, seed=1)
    fast = greedy_coreset(x, 250)
    plain = plain_greedy(x, 250)
    overlap = len(set(fast.tolist()) & set(plain.tolist())) / 250
    assert overlap >= 0.95  # the same greedy; only float rounding at near-ties may differ
    r_fast, r_plain = coverage_radius(x, fast), coverage_radius(x, plain)
    assert r_fast <= 1.02 * r_plain
    g = torch.Generator().manual_seed(0)
    r_random = min(coverage_radius(x, torch.randperm(2500, generator=g)[:250]) for _ in range(5))
    assert r_fast < r_random
    all_outliers = set(range(2480, 2500))
    assert all_outliers <= set(fast.tolist())  # far points are kept


def test_fast_coreset_blocks_and_candidates_do_not_change_the_choice() -> None:
    x = clustered(1500, 64, seed=2)
    ref = greedy_coreset(x, 200)
    for candidates, block in ((7, 1000), (64, 64), (4096, 1 << 20)):
        other = greedy_coreset(x, 200, candidates=candidates, block_floats=block)
        assert len(set(other.tolist()) & set(ref.tolist())) >= 190
        assert coverage_radius(x, other) <= 1.02 * coverage_radius(x, ref)


def test_fast_coreset_with_duplicate_rows_still_picks_distinct_indices() -> None:
    x = torch.nn.functional.normalize(torch.randn(5, 16), dim=1).repeat(40, 1)  # 200 rows, 5 distinct
    idx = greedy_coreset(x, 50)
    assert len(set(idx.tolist())) == 50
    assert len({tuple(x[i].tolist()) for i in idx[:5].tolist()}) == 5  # the 5 distinct ones first


# -- leave-one-out by masking -------------------------------------------------------------------
def fake_features(
    seed: int, grid: tuple[int, int] = (6, 5), d: int = 24, rs: tuple[int, ...] = (1, 3)
) -> ImageFeatures:
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    by_r = {r: torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1) for r in rs}
    return ImageFeatures(
        orig=(grid[0] * 16, grid[1] * 16),
        work=(grid[0] * 16, grid[1] * 16),
        grid=grid,
        by_r=by_r,
        global_vec=torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0),
    )


def test_masked_leave_one_out_equals_an_explicit_bank_of_the_others() -> None:
    feats = [fake_features(s) for s in range(5)]
    views = [[fake_features(100 + 2 * s), fake_features(101 + 2 * s)] for s in range(5)]
    bank_feats = feats + [v for vs in views for v in vs]
    sources = list(range(5)) + [i for i in range(5) for _ in range(2)]
    bank = MemoryBank(10_000, 0).build(bank_feats, sources)
    assert bank.size == 15 * 30 and set(bank.sources) == {1, 3}
    for i in range(5):
        others = [f for j, f in enumerate(feats) if j != i] + [v for j, vs in enumerate(views) if j != i for v in vs]
        explicit = MemoryBank(10_000, 0).build(others).score(feats[i])
        np.testing.assert_array_equal(bank.score(feats[i], exclude=i), explicit)
    # nothing excluded: the plain score
    np.testing.assert_array_equal(bank.score(feats[0], exclude=None), bank.score(feats[0]))


def test_coreset_bank_keeps_each_rows_source() -> None:
    feats = [fake_features(s) for s in range(6)]
    bank = MemoryBank(40, 0).build(feats)
    for r, rows in bank.banks.items():
        src = bank.sources[r]
        assert rows.shape[0] == 40 and src.shape == (40,) and src.dtype == torch.int32
        for row, s in zip(rows, src.tolist()):  # every kept row is one of its source's patches
            assert bool((feats[s].by_r[r] == row).all(dim=1).any())
    assert bank.score(feats[2], exclude=2).shape == (6, 5)
    assert MemoryBank(40, 0).banks == {}  # old construction still works


def texture(seed: int, h: int = 96, w: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    phase = rng.uniform(0, 2 * np.pi, 2)
    base = 128 + 40 * np.sin(x / 3.0 + phase[0]) * np.sin(y / 3.0 + phase[1]) + rng.normal(0, 6, (h, w))
    return np.repeat(np.clip(base, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def write_images(folder: Path, seeds: list[int], sizes: list[tuple[int, int]] | None = None) -> list[ImageSample]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k, s in enumerate(seeds):
        h, w = sizes[k] if sizes else (96, 96)
        p = folder / f"img{s}.png"
        Image.fromarray(texture(s, h, w)).save(p)
        out.append(ImageSample(id=p.stem, path=p))
    return out


def test_detector_reference_scores_are_explicit_leave_one_out(tmp_path: Path) -> None:
    # three references of two working sizes (their order in the bank differs from the input's)
    refs = write_images(tmp_path / "refs", [1, 2, 3], [(96, 96), (128, 96), (96, 96)])
    det = EmbeddedDetector(resolution=RES, feature_cache="off").fit(refs)
    feats = {i: f for i, f in det._features(refs, det.scale_)}
    order = [0, 2, 1]  # as extract() batches them: the 96x96 pair first
    assert [feats[i].work for i in order] == [feats[0].work, feats[0].work, feats[1].work]
    views = {}
    for i, s in enumerate(refs):
        arrs = [s.load()[:, ::-1].copy(), s.load()[::-1].copy()]
        views[i] = [f for _, f in det._extract([lambda a=a: a for a in arrs], [a.shape[:2] for a in arrs], det.scale_)]
    expected = []
    for i in order:
        others = [feats[j] for j in order if j != i] + [v for j in order if j != i for v in views[j]]
        bank = MemoryBank(det.bank_cap, det.seed).build(others)
        expected.append(det.image_map(feats[i], bank.score(feats[i]))[1])
    np.testing.assert_allclose(det.reference_scores_, expected, rtol=1e-6)


# -- feature cache ------------------------------------------------------------------------------
class CountingBackbone:
    def __init__(self, inner) -> None:
        self.inner = inner
        self.name, self.multiple, self.stride = inner.name, inner.multiple, inner.stride
        self.images = 0

    def __call__(self, batch: np.ndarray):
        self.images += int(batch.shape[0])
        return self.inner(batch)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> list[CountingBackbone]:
    """Every backbone the detector asks for is wrapped; the list holds them in order."""
    made: list[CountingBackbone] = []
    real = detector_module.get_backbone

    def get(*a, **k):
        b = CountingBackbone(real(*a, **k))
        made.append(b)
        return b

    monkeypatch.setattr(detector_module, "get_backbone", get)
    return made


def computed(made: list[CountingBackbone]) -> int:
    n = sum(b.images for b in made)
    made.clear()
    return n


def entries(root: Path) -> list[Path]:
    return sorted(root.glob("*/*.npz")) if root.exists() else []


def test_feature_cache_hits_on_refit_and_misses_on_changes(
    tmp_path: Path, counting: list[CountingBackbone], _own_cache_dir: Path
) -> None:
    refs = write_images(tmp_path / "refs", [1, 2, 3, 4, 5, 6, 7, 8, 9])
    probe = [ImageSample(id="p", array=texture(50))]
    det = EmbeddedDetector(resolution=RES, feature_cache="on").fit(refs)
    assert computed(counting) == 9
    assert len(entries(_own_cache_dir)) == 9  # 9 references, no augmentation from 8 up
    again = EmbeddedDetector(resolution=RES, feature_cache="on").fit(refs)
    assert computed(counting) == 0  # all from the cache
    assert again._cache is not None and again._cache.hits == 9
    assert again.reference_scores_ == det.reference_scores_
    assert again.predict(probe)[0].score == det.predict(probe)[0].score
    computed(counting)
    # another setting the features depend on: all recomputed
    EmbeddedDetector(resolution=RES, aggregation=(1, 3), feature_cache="on").fit(refs)
    assert computed(counting) == 9
    EmbeddedDetector(resolution=RES + 32, feature_cache="on").fit(refs)
    assert computed(counting) == 9
    # one file changes: only it is recomputed
    Image.fromarray(texture(99)).save(refs[4].path)
    changed = EmbeddedDetector(resolution=RES, feature_cache="on").fit(refs)
    assert computed(counting) == 1
    assert changed.reference_scores_ != det.reference_scores_
    # options that do not change the features reuse them
    EmbeddedDetector(resolution=RES, feature_cache="on", bank_cap=64, few_shot_k=1.0, sigma=2.0).fit(refs)
    assert computed(counting) == 0


def test_feature_cache_keeps_augmented_views(
    tmp_path: Path, counting: list[CountingBackbone], _own_cache_dir: Path
) -> None:
    refs = write_images(tmp_path / "refs", [1, 2])
    a = EmbeddedDetector(resolution=RES, feature_cache="on").fit(refs)
    assert computed(counting) == 6  # 2 references + 2 x (hflip, vflip)
    assert len(entries(_own_cache_dir)) == 6
    b = EmbeddedDetector(resolution=RES, feature_cache="on").fit(refs)
    assert computed(counting) == 0
    assert b.reference_scores_ == a.reference_scores_
    one = EmbeddedDetector(resolution=RES, feature_cache="on").fit(refs[:1])  # same size, same scale
    assert computed(counting) == 0
    assert len(one.reference_scores_) == 2  # its flipped views, from the cache too
    bigger = write_images(tmp_path / "big", [1], [(128, 128)])  # another file (and scale): new entries
    EmbeddedDetector(resolution=RES, feature_cache="on").fit(bigger)
    assert computed(counting) == 3
    EmbeddedDetector(resolution=RES, feature_cache="on").fit(bigger)
    assert computed(counting) == 0


def test_feature_cache_off_auto_and_in_memory_images(
    tmp_path: Path, counting: list[CountingBackbone], _own_cache_dir: Path
) -> None:
    refs = write_images(tmp_path / "refs", [1, 2, 3])
    EmbeddedDetector(resolution=RES, feature_cache="off").fit(refs)
    EmbeddedDetector(resolution=RES).fit(refs)  # auto: too few references to bother
    assert EmbeddedDetector(resolution=RES, feature_cache=False).feature_cache == "off"
    assert EmbeddedDetector(resolution=RES, feature_cache="true").feature_cache == "on"
    arrays = [ImageSample(id=f"a{i}", array=texture(i)) for i in range(3)]
    EmbeddedDetector(resolution=RES, feature_cache="on").fit(arrays)  # no file: nothing to key on
    assert not entries(_own_cache_dir)
    with pytest.raises(genad.GenadError):
        EmbeddedDetector(feature_cache="sometimes")


def test_feature_cache_eviction_and_bad_entries(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "c", limit_bytes=10**9)
    f = fake_features(0)
    keys = [FeatureCache.key(f"sha256:{i}", "settings") for i in range(4)]
    for k in keys:
        cache.put(k, f)
    got = cache.get(keys[0])
    assert got is not None and got.grid == f.grid and got.work == f.work and got.orig == f.orig
    assert all(torch.equal(got.by_r[r], f.by_r[r]) for r in f.by_r)
    assert torch.equal(got.global_vec, f.global_vec)
    paths = {k: cache._path(k) for k in keys}
    for age, k in enumerate(keys):  # keys[0] oldest ... keys[3] newest
        t = 1_000_000 + 10 * age
        os.utime(paths[k], (t, t))
    one = paths[keys[0]].stat().st_size
    cache.limit_bytes = 2 * one
    assert cache.evict() == 2
    assert [paths[k].exists() for k in keys] == [False, False, True, True]
    paths[keys[3]].write_bytes(b"not an npz")  # a torn or foreign file is a miss, and removed
    assert cache.get(keys[3]) is None and not paths[keys[3]].exists()
    assert cache.get("0" * 64) is None


def test_cache_dir_follows_genad_cache_dir(_own_cache_dir: Path) -> None:
    assert FeatureCache().root == _own_cache_dir


# -- saved models -------------------------------------------------------------------------------
def test_saved_model_with_sources_scores_the_same(tmp_path: Path) -> None:
    refs = write_images(tmp_path / "refs", list(range(1, 10)))
    det = EmbeddedDetector(resolution=RES, bank_cap=200, feature_cache="on").fit(refs)
    assert det.bank_ is not None and det.bank_.size == 200 and det.bank_.sources
    back = genad.load(det.save(tmp_path / "m.genad"))
    assert isinstance(back, EmbeddedDetector) and back.bank_ is not None
    for r in det.bank_.banks:
        assert torch.equal(back.bank_.sources[r], det.bank_.sources[r])
    assert back.reference_scores_ == det.reference_scores_
    test = [ImageSample(id=f"t{i}", array=texture(40 + i)) for i in range(3)]
    a, b = det.predict(test), back.predict(test)
    assert [r.score for r in a] == [r.score for r in b]
    assert all(np.array_equal(x.anomaly_map, y.anomaly_map) for x, y in zip(a, b))
    assert [x.decision for x in a] == [y.decision for y in b]
