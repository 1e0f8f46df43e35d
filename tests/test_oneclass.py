"""The trained one-class engine (-d oneclass): both methods find known defects on generated
textures, training is seeded and reproducible, stops on a plateau, reports progress, keeps a
boundary from held-out references, and saves and loads like any other model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import genad
from genad.engines.oneclass.train import fit_model
from genad.engines.progress import tracking
from genad.errors import GenadError
from genad.types import ImageSample

SIDE = 128
FAST = {"resolution": 128, "epochs": 6, "steps": 6, "batch": 8, "patience": 3, "width": 64, "crop": 8}


def texture(rng: np.random.Generator) -> np.ndarray:
    """A normal image: diagonal stripes with a random phase and mild noise."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    phase = rng.uniform(0, 2 * np.pi)
    base = 128 + 60 * np.sin((xx + yy) / 5.0 + phase) + rng.normal(0, 6, (SIDE, SIDE))
    return np.repeat(np.clip(base, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def with_defect(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A dark square blotch somewhere inside; returns the image and its mask."""
    out = img.copy()
    mask = np.zeros(img.shape[:2], dtype=bool)
    y, x = rng.integers(20, SIDE - 44, size=2)
    out[y : y + 24, x : x + 24] = 15
    mask[y : y + 24, x : x + 24] = True
    return out, mask


@pytest.fixture(scope="module")
def data() -> dict:
    rng = np.random.default_rng(0)
    normals = [ImageSample(id=f"n{i}", array=texture(rng)) for i in range(14)]
    test, labels, masks = [], [], []
    for i in range(12):
        img = texture(rng)
        if i % 2:
            img, m = with_defect(img, rng)
        else:
            m = np.zeros((SIDE, SIDE), dtype=bool)
        test.append(ImageSample(id=f"t{i}", array=img))
        labels.append(i % 2)
        masks.append(m)
    return {"normals": normals, "test": test, "labels": labels, "masks": masks}


@pytest.fixture(scope="module", params=["mae", "contrastive"])
def fitted(request, data) -> genad.Detector:
    return genad.create("oneclass", method=request.param, **FAST).fit(data["normals"])


def test_both_methods_find_known_defects(fitted, data) -> None:
    results = fitted.predict(data["test"])
    assert all(r.error is None for r in results)
    scores = [r.score for r in results]
    assert roc_auc_score(data["labels"], scores) >= 0.9
    # the map peaks on the defect: pixel AUROC over the anomalous images
    anomalous = [i for i, y in enumerate(data["labels"]) if y]
    maps = np.concatenate([results[i].anomaly_map.ravel() for i in anomalous])
    truth = np.concatenate([data["masks"][i].ravel() for i in anomalous])
    assert results[anomalous[0]].anomaly_map.shape == (SIDE, SIDE)
    assert roc_auc_score(truth, maps) >= 0.85
    # decisions come from the held-out references: the defects are flagged, most normals are not
    decided = [bool(r.decision) for r in results]
    assert sum(d for d, y in zip(decided, data["labels"]) if y) >= 5
    assert sum(d for d, y in zip(decided, data["labels"]) if not y) <= 2


def test_training_is_recorded_and_held_out_references_set_the_boundary(fitted) -> None:
    t = fitted.training_
    assert t["references"] == 14 and t["held_out"] == 3 and t["trained_on"] == 11
    assert 1 <= t["best_epoch"] <= t["epochs_run"] <= FAST["epochs"]
    assert len(t["val_losses"]) == t["epochs_run"]
    assert len(fitted.reference_scores_) == 3
    s = np.asarray(fitted.reference_scores_)
    sd = max(float(s.std(ddof=1)), 0.05 * abs(float(s.mean())))
    assert fitted.calibration_.threshold == pytest.approx(float(s.mean()) + 2.0 * sd)


def test_same_seed_same_scores_other_seed_other_weights(data) -> None:
    params = {"method": "mae", **FAST, "epochs": 2}
    a = genad.create("oneclass", **params).fit(data["normals"]).predict(data["test"][:4])
    b = genad.create("oneclass", **params).fit(data["normals"]).predict(data["test"][:4])
    c = genad.create("oneclass", seed=1, **params).fit(data["normals"]).predict(data["test"][:4])
    assert [r.score for r in a] == [r.score for r in b]
    assert [r.score for r in a] != [r.score for r in c]


def test_saved_model_scores_the_same(fitted, data, tmp_path) -> None:
    path = fitted.save(tmp_path / "oc.genad")
    loaded = genad.load(path)
    assert loaded.name == "oneclass" and loaded.method == fitted.method
    before = fitted.predict(data["test"][:4])
    after = loaded.predict(data["test"][:4])
    for x, y in zip(before, after):
        assert x.score == pytest.approx(y.score, rel=1e-6)
        assert x.decision == y.decision
    assert loaded.training_["epochs_run"] == fitted.training_["epochs_run"]


def test_progress_steps_report_each_epoch(data) -> None:
    seen: list[tuple[str, int, int | None]] = []
    with tracking(lambda what, done, total: seen.append((what, done, total))):
        genad.create("oneclass", method="contrastive", **{**FAST, "epochs": 3, "patience": 10}).fit(data["normals"])
    training = [s for s in seen if s[0] == "training"]
    assert [s[1] for s in training] == [0, 1, 2] and all(s[2] == 3 for s in training)
    assert any(s[0] == "features" for s in seen)


def test_too_few_references_is_one_clear_line(data) -> None:
    with pytest.raises(GenadError, match="at least 8 references"):
        genad.create("oneclass", **FAST).fit(data["normals"][:5])
    with pytest.raises(GenadError, match="must be trained first"):
        genad.create("oneclass").predict(data["test"][:1])


def test_early_stopping_on_a_plateau_keeps_the_best_epoch() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x = torch.randn(32, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    losses = iter([5.0, 3.0, 2.0, 2.5, 2.4, 2.3, 2.2, 1.0])  # best at epoch 3, then no gain

    def loss(m: torch.nn.Module, batch: object) -> torch.Tensor:
        return ((m(x) - y) ** 2).mean()

    seen_val: list[float] = []

    def val_loss(m: torch.nn.Module, batch: object) -> torch.Tensor:
        if m.training:
            return loss(m, batch)
        v = next(losses)
        seen_val.append(v)
        return torch.tensor(v)

    report = fit_model(model, lambda e: [None], [None], val_loss, epochs=8, lr=0.01, patience=3, progress=False)
    assert report.best_epoch == 3
    assert report.epochs_run == 6 and report.stopped_early
    assert seen_val == [5.0, 3.0, 2.0, 2.5, 2.4, 2.3]
    assert math.isclose(min(report.val_losses), 2.0)


def test_cli_fit_saves_a_trained_model_that_detect_uses(data, tmp_path, capsys) -> None:
    from PIL import Image

    from foundation_helpers import run_cli

    golden, parts = tmp_path / "golden", tmp_path / "parts"
    golden.mkdir()
    parts.mkdir()
    for s in data["normals"]:
        Image.fromarray(s.load()).save(golden / f"{s.id}.png")
    for s in data["test"][:4]:
        Image.fromarray(s.load()).save(parts / f"{s.id}.png")
    model = tmp_path / "oc.genad"
    opts = [x for k, v in {**FAST, "epochs": 2}.items() for x in ("-p", f"{k}={v}")]
    code, out, err = run_cli(["fit", golden, "-d", "oneclass", *opts, "--save", model], capsys)
    assert code == 0, err
    code, out, err = run_cli(["info", model], capsys)
    assert code == 0 and "oneclass" in out
    code, out, err = run_cli(["detect", parts, "--model", model, "--format", "jsonl", "--out", tmp_path / "o"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    by_id = {Path(r["id"]).stem: r for r in rows}
    expected = genad.load(model).predict(data["test"][:4])
    for r in expected:
        assert by_id[r.sample_id]["score"] == pytest.approx(r.score, rel=1e-5)


def test_the_time_limit_ends_training_and_keeps_the_best_epoch(data, monkeypatch) -> None:
    import time

    from genad.engines.oneclass import detector as mod

    real = mod.cosine_error

    def slow(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # each loss call: 0.25 s
        time.sleep(0.25)
        return real(pred, target)

    monkeypatch.setattr(mod, "cosine_error", slow)
    # an epoch: 6 steps + 2 held-out batches = 8 calls, >= 2 s; the limit: 6 s, so no 4th epoch
    det = genad.create("oneclass", **{**FAST, "epochs": 50, "patience": 50, "max_minutes": 0.1})
    det.fit(data["normals"])
    t = det.training_
    assert t["out_of_time"] and not t["stopped_early"]
    assert 1 <= t["epochs_run"] <= 3
    assert 1 <= t["best_epoch"] <= t["epochs_run"]


def test_one_small_reference_does_not_shrink_every_training_crop(data, monkeypatch) -> None:
    from genad.engines.oneclass import detector as mod

    seen: list[int] = []
    real = mod.random_split

    def spy(n: int, n_visible: int, g: torch.Generator, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(n)
        return real(n, n_visible, g, batch)

    monkeypatch.setattr(mod, "random_split", spy)
    rng = np.random.default_rng(3)
    small = [ImageSample(id=f"s{i}", array=texture(rng)[:24, :24]) for i in range(2)]
    crop = 12  # the references' grids are 16 x 16, the small ones' 8 x 8 (a 64 px floor)
    det = genad.create("oneclass", **{**FAST, "epochs": 2, "patience": 10, "crop": crop})
    det.fit([*data["normals"], *small])
    small_grids = [f.grid for _, f in det.embedder_.image_features(small, det.embedder_.scale_)]
    assert min(min(g) for g in small_grids) < crop, small_grids
    crop_tokens = crop**2
    assert crop_tokens in seen  # full crops from the large references
    assert all(n <= crop_tokens for n in seen)
