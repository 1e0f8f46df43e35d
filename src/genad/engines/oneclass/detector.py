"""OneClassDetector ("oneclass"): a one-class model trained on the CPU over frozen patch features.

    det = create("oneclass").fit(normals)          # tens to hundreds of normal images
    det = create("oneclass", method="contrastive")
    det.predict(samples)                           # maps at the input's size, decisions
    det.save("station.genad")                      # a model file like any other

The patch features are the embedded engine's (same backbone, strides, resolution, input
normalisation and feature cache: an inner EmbeddedDetector computes them), so the two engines
differ only in what they learn from the references: the embedded engine keeps them in a memory
bank, this one trains a small network on them:

* method="mae" (default, mae.py, after MemMC-MAE): masked patch features are reconstructed by a
  transformer whose attention reads a learned memory of normal prototypes; a patch scores by
  how badly it is reconstructed;
* method="contrastive" (contrastive.py, after UniCon-HA): a staged projection head concentrates
  normal features and disperses augmented virtual outliers; a patch scores by its distance to
  the normal concentration.

Training (train.py) is seeded and reproducible, reports each epoch as a progress step, holds
out a share of the references (`val_share`) whose loss stops it on a plateau, and whose image
scores (never trained on) set the decision boundary: mean + k sd. See docs/oneclass.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from genad.decision import Calibration, from_reference_scores
from genad.detector import Capabilities, Detector, param, raw_threshold_param, threshold_param
from genad.engines.embedded.backbones import DEFAULT_BACKBONE, NORMALISATIONS, check_backbone, weights_sha256
from genad.engines.embedded.cache import AUTO_MIN_REFS
from genad.engines.embedded.detector import EmbeddedDetector, _strides, choose_normalization, map_result
from genad.engines.embedded.features import ImageFeatures
from genad.engines.embedded.geometry import batch_scale
from genad.engines.oneclass.contrastive import StagedHead, contrastive_loss
from genad.engines.oneclass.mae import MemoryMAE, cosine_error, n_visible, patch_errors, positions, random_split
from genad.engines.oneclass.train import TrainReport, fit_model, seeded
from genad.engines.progress import step
from genad.errors import GenadError
from genad.types import ImageSample, Result, Sample

#: fewest references fit() accepts: some are held out to stop training and set the boundary
MIN_REFS = 8
#: held-out references: at least this many, at most MAX_VAL
MIN_VAL, MAX_VAL = 3, 48
#: the aggregation (neighbourhood size) of the features the model learns
R = 3


def _split(n: int, share: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) indices of n references: a seeded random share held out."""
    n_val = min(MAX_VAL, max(MIN_VAL, round(n * share)), n - MIN_VAL)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7)).tolist()
    return sorted(perm[n_val:]), sorted(perm[:n_val])


class OneClassDetector(Detector):
    """A trained one-class engine on frozen patch features (see the module doc).

    Options:
      method          "mae" (default) or "contrastive"
      backbone, strides, resolution, normalization, feature_batch, threads: the features, as
                      the embedded engine's
      epochs, patience, lr, batch: training (AdamW, cosine schedule; stops after `patience`
                      epochs without a better held-out loss, keeping the best epoch)
      steps           optimiser steps per epoch (each a batch of `batch` crops)
      width, depth, memory, mask_ratio, passes, crop: the masked autoencoder
      heads_out, stages: the contrastive head
      max_minutes     a guard: no epoch starts after this long (30; defaults finish in a few)
      val_share       share of the references held out (>= 3, <= 48)
      k               boundary = mean + k sd of the held-out references' image scores
      sigma, image_score, threshold, raw_threshold, max_regions, min_area_frac: maps and decisions
      seed            model initialisation, crops, masks, the held-out draw
    """

    name = "oneclass"
    modalities = ("image",)
    zero_shot = False
    chunk_size = 32

    method: str = param("mae", choices=("mae", "contrastive"), doc="what is trained (see docs/oneclass.md)")
    backbone: str = param(DEFAULT_BACKBONE, convert=check_backbone, doc="feature extractor (see backbones)")
    strides: tuple[int, ...] | str = param("auto", "any", convert=_strides, doc="feature strides, or auto")
    resolution: int = param(320, low=32, high=2048, doc="median image side the backbone sees")
    normalization: str = param(
        "auto", choices=("auto", *NORMALISATIONS), doc="input normalisation (as the embedded engine's)"
    )
    epochs: int = param(40, low=1, high=1000, doc="most training epochs")
    patience: int = param(6, low=1, high=1000, doc="epochs without a better held-out loss before stopping")
    steps: int = param(24, low=1, high=1000, doc="optimiser steps per epoch")
    lr: float = param(1e-3, low=1e-6, high=1.0, doc="peak learning rate (AdamW)")
    batch: int = param(12, low=1, high=256, doc="crops per step")
    width: int = param(128, low=16, high=512, doc="mae: transformer width")
    depth: int = param(2, low=1, high=8, doc="mae: encoder and decoder blocks each")
    memory: int = param(64, low=0, high=1024, doc="mae: learned normal prototypes per block")
    mask_ratio: float = param(0.75, low=0.05, high=0.95, doc="mae: share of patches masked")
    passes: int = param(4, low=1, high=16, doc="mae: masks per image when scoring")
    crop: int = param(24, low=4, high=64, doc="mae: training crop of the patch grid, in patches a side")
    heads_out: int = param(64, low=4, high=512, doc="contrastive: output dimensions per stage")
    stages: int = param(3, low=1, high=8, doc="contrastive: stages (weak to strong outliers)")
    max_minutes: float = param(30.0, low=0.05, high=720.0, doc="training stops (best epoch kept) after this long")
    val_share: float = param(0.15, low=0.05, high=0.5, doc="share of references held out")
    k: float = param(2.0, low=-10.0, high=100.0, doc="boundary: mean + k sd of held-out scores")
    sigma: float = param(4.0, low=0.0, high=64.0, doc="map smoothing, in working pixels")
    image_score: str = param("top1", choices=("max", "top1"), doc="image score from the map")
    threshold: float = threshold_param()
    raw_threshold: float | None = raw_threshold_param()
    max_regions: int = param(5, low=0, high=100, doc="regions proposed per anomalous image")
    min_area_frac: float = param(0.0005, low=0.0, high=1.0, doc="smallest region, as a share of the image")
    feature_batch: int = param(8, low=1, high=512, doc="images per backbone call")
    threads: int | None = param(None, "int", low=1, high=256, doc="CPU threads (default: the cores allowed)")
    progress: bool = param(False, doc="a training progress bar on stderr")
    seed: int = param(0, doc="initialisation, crops, masks, held-out draw")

    # fitted state (fit() sets it)
    embedder_: EmbeddedDetector | None = None
    model_config_: dict[str, Any] | None = None
    model_state_: dict[str, torch.Tensor] | None = None
    calibration_: Calibration | None = None
    reference_scores_: list[float] = []
    training_: dict[str, Any] | None = None
    n_refs_: int = 0

    def capabilities(self) -> Capabilities:
        return Capabilities(tuple(self.modalities), False, False, 1, self.chunk_size)

    # -- saved models ---------------------------------------------------------------------------
    @classmethod
    def weights_digest(cls, backbone: str) -> str | None:
        return weights_sha256(backbone)

    def preprocessing(self) -> dict:
        return self.embedder_.preprocessing() if self.embedder_ is not None else {}

    # -- plumbing -------------------------------------------------------------------------------
    def _embedder(self, normalization: str) -> EmbeddedDetector:
        return EmbeddedDetector(
            backbone=self.backbone,
            strides=self.strides,
            resolution=self.resolution,
            aggregation=(R,),
            normalization=normalization,
            sigma=self.sigma,
            image_score=self.image_score,
            feature_batch=self.feature_batch,
            threads=self.threads,
        )

    def _build(self, in_dim: int) -> torch.nn.Module:
        if self.method == "mae":
            heads = 4 if self.width % 4 == 0 else 1
            return MemoryMAE(in_dim, self.width, self.depth, self.depth, heads, self.memory)
        return StagedHead(in_dim, 2 * self.width, self.heads_out, self.stages)

    def _model(self) -> torch.nn.Module:
        """The trained network, rebuilt from its saved configuration and weights once."""
        model = getattr(self, "_net", None)
        if model is None:
            assert self.model_config_ is not None and self.model_state_ is not None
            with seeded(0):
                model = self._build(int(self.model_config_["in_dim"]))
            model.load_state_dict(self.model_state_)
            model.eval()
            self._net = model
        return model

    def _patch_scores(self, model: torch.nn.Module, f: ImageFeatures) -> np.ndarray:
        """Patch scores (h, w) of one image."""
        tokens = f.by_r[R]
        with torch.no_grad():
            if isinstance(model, MemoryMAE):
                s = patch_errors(model, tokens, f.grid, self.mask_ratio, self.passes, self.seed)
            else:
                assert isinstance(model, StagedHead)
                s = model.score(tokens)
        return s.reshape(f.grid).numpy()

    # -- fit ------------------------------------------------------------------------------------
    def fit(self, normal_samples: Sequence[Sample]) -> OneClassDetector:
        """Train on normal references (at least MIN_REFS images; tens to hundreds)."""
        samples = list(normal_samples)
        if len(samples) < MIN_REFS:
            raise GenadError(
                f"the one-class engine trains on normal images: it needs at least {MIN_REFS} references, "
                f"got {len(samples)} (for fewer, use the embedded engine: -d embedded)"
            )
        shapes = []
        for s in samples:
            if not isinstance(s, ImageSample):
                raise GenadError(f"the one-class engine reads images, got a {s.modality} sample ({s.id})")
            try:
                shapes.append(s.size())
            except GenadError as e:
                raise GenadError(f"cannot use normal reference {s.id}: {e}") from e
        norm = self.normalization if self.normalization != "auto" else choose_normalization(samples)
        emb = self._embedder(norm)
        scale = batch_scale(shapes, self.resolution)
        feats: dict[int, ImageFeatures] = {}
        for i, f in emb.image_features(samples, scale, cache=len(samples) >= AUTO_MIN_REFS):
            if isinstance(f, str):
                raise GenadError(f"cannot use normal reference {samples[i].id}: {f}")
            feats[i] = f
        emb.normalization_ = norm
        emb.scale_ = scale
        train_idx, val_idx = _split(len(samples), self.val_share, self.seed)
        train = [feats[i] for i in train_idx]
        val = [feats[i] for i in val_idx]
        in_dim = int(train[0].by_r[R].shape[1])
        with seeded(self.seed):
            model = self._build(in_dim)
        report = self._train(model, train, val)
        self._net = model
        self.embedder_ = emb
        self.model_config_ = {"method": self.method, "in_dim": in_dim}
        self.model_state_ = {k: v.detach().clone() for k, v in model.state_dict().items()}
        step("calibrating", 0, None)
        self.reference_scores_ = [emb.image_map(f, self._patch_scores(model, f))[1] for f in val]
        self.calibration_ = from_reference_scores(
            self.reference_scores_, self.k, f"held-out references: mean + {self.k:g} sd of their scores"
        )
        self.training_ = {
            **report.as_dict(),
            "references": len(samples),
            "trained_on": len(train),
            "held_out": len(val),
        }
        self.n_refs_ = len(samples)
        self.fitted_ = True
        return self

    def _train(self, model: torch.nn.Module, train: list[ImageFeatures], val: list[ImageFeatures]) -> TrainReport:
        g = torch.Generator().manual_seed(self.seed)
        gv = torch.Generator().manual_seed(self.seed + 1)
        common = dict(
            epochs=self.epochs,
            lr=self.lr,
            patience=self.patience,
            progress=self.progress,
            desc=f"training ({self.method})",
            time_limit=60.0 * self.max_minutes,
        )
        if isinstance(model, MemoryMAE):

            def mae_batch(feats: list[ImageFeatures], gen: torch.Generator) -> tuple[torch.Tensor, ...]:
                # the crop's shape follows a lead image (up to crop x crop, within its grid), and
                # the batch is drawn from the images that hold that shape: one small image does not
                # shrink every crop (magnetic_tile's grids run from 8 to 40 patches a side)
                lead = feats[int(torch.randint(len(feats), (1,), generator=gen))]
                ch, cw = min(self.crop, lead.grid[0]), min(self.crop, lead.grid[1])
                fits = [f for f in feats if f.grid[0] >= ch and f.grid[1] >= cw]
                pick = torch.randint(len(fits), (self.batch,), generator=gen).tolist()
                xs, ps = [], []
                for i in pick:
                    f = fits[i]
                    h, w = f.grid
                    r0 = int(torch.randint(h - ch + 1, (1,), generator=gen))
                    c0 = int(torch.randint(w - cw + 1, (1,), generator=gen))
                    rows = torch.arange(r0, r0 + ch).repeat_interleave(cw)
                    cols = torch.arange(c0, c0 + cw).repeat(ch)
                    xs.append(f.by_r[R][rows * w + cols])
                    ps.append(positions(rows, cols, f.grid, model.width))
                vis, msk = random_split(ch * cw, n_visible(ch * cw, self.mask_ratio), gen, self.batch)
                return torch.stack(xs), torch.stack(ps), vis, msk

            def mae_loss(m: torch.nn.Module, b: tuple[torch.Tensor, ...]) -> torch.Tensor:
                x, pos, vis, msk = b
                ar = torch.arange(x.shape[0])[:, None]
                return cosine_error(m(x, pos, vis, msk), x[ar, msk]).mean()

            val_batches = [mae_batch(val, gv) for _ in range(max(2, len(val) // 2))]
            return fit_model(
                model,
                lambda epoch: (mae_batch(train, g) for _ in range(self.steps)),
                val_batches,
                mae_loss,
                **common,  # type: ignore[arg-type]
            )
        assert isinstance(model, StagedHead)
        per_image = 128  # patches drawn per image and step

        def patches(feats: list[ImageFeatures], gen: torch.Generator) -> torch.Tensor:
            pick = torch.randint(len(feats), (self.batch,), generator=gen).tolist()
            out = []
            for i in pick:
                t = feats[i].by_r[R]
                out.append(t[torch.randint(t.shape[0], (min(per_image, t.shape[0]),), generator=gen)])
            return torch.cat(out)

        model.set_centres(torch.cat([f.by_r[R] for f in train[:64]]))

        def con_loss(m: torch.nn.Module, b: tuple[torch.Tensor, int]) -> torch.Tensor:
            x, seed = b
            gen = g if seed < 0 else torch.Generator().manual_seed(seed)
            return contrastive_loss(m, x, gen)  # type: ignore[arg-type]

        held_out = [(patches(val, gv), self.seed + 100 + i) for i in range(max(2, len(val) // 2))]
        return fit_model(
            model,
            lambda epoch: ((patches(train, g), -1) for _ in range(self.steps)),
            held_out,
            con_loss,
            **common,  # type: ignore[arg-type]
        )

    # -- predict --------------------------------------------------------------------------------
    def predict(self, samples: Sequence[Sample]) -> list[Result]:
        if self.embedder_ is None or self.calibration_ is None:
            raise GenadError("the one-class engine must be trained first: fit(normal images), or genad fit")
        samples = list(samples)
        model = self._model()
        emb = self.embedder_
        results: list[Result | None] = [None] * len(samples)
        t0 = time.perf_counter()
        for i, f in self._features(samples):
            if isinstance(f, str):
                results[i] = Result(samples[i].id, error=f)
                continue
            t1 = time.perf_counter()
            m, score = emb.image_map(f, self._patch_scores(model, f))
            t2 = time.perf_counter()
            extra = {"mode": "one-class", "method": self.method, "backbone": self.backbone}
            timings = {"features": t1 - t0, "scoring": t2 - t1}
            results[i] = map_result(
                self, samples[i], m, score, self.calibration_, extra, timings, self.max_regions, self.min_area_frac
            )
            t0 = time.perf_counter()
        return [r if r is not None else Result(s.id, error="not scored") for r, s in zip(results, samples)]

    def _features(self, samples: list[Sample]) -> Iterator[tuple[int, ImageFeatures | str]]:
        assert self.embedder_ is not None
        return self.embedder_.image_features(samples, self.embedder_.scale_)  # the references' pixel scale
