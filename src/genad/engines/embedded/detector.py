"""EmbeddedDetector ("embedded"): genad's default, training-free visual detector.

    det = create("embedded")                 # zero-shot: predict() scores a batch against itself
    det.predict(samples)                     # needs >= 3 images
    det = create("embedded").fit(normals)    # few-shot: memory bank of the normal references
    det.predict(samples)                     # any number of images, streamed

See docs/embedded.md for how it works and measured figures.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from genad.detector import Detector
from genad.engines.embedded.backbones import (
    DEFAULT_BACKBONE,
    check_backbone,
    check_strides,
    default_strides,
    get_backbone,
)
from genad.engines.embedded.features import ImageFeatures, augment, extract
from genad.engines.embedded.few_shot import MemoryBank
from genad.engines.embedded.geometry import batch_scale, patch_map_to_image
from genad.engines.embedded.regions import propose_regions
from genad.engines.embedded.zero_shot import MIN_BATCH, mutual_scores, neighbour_smooth
from genad.errors import GenadError
from genad.types import ImageSample, Result, Sample


def _shape(s: Sample) -> tuple[int, int]:
    """(H, W) without decoding the pixels where possible."""
    if not isinstance(s, ImageSample):
        raise GenadError(f"the embedded detector reads images, got a {s.modality} sample ({s.id})")
    if s.array is not None:
        return int(s.array.shape[0]), int(s.array.shape[1])
    if s.path is None:
        raise GenadError(f"sample {s.id!r} has neither pixels nor a path")
    from genad.io.images import image_size

    w, h = image_size(s.path)
    return h, w


def robust_threshold(scores: np.ndarray, k: float) -> float:
    """median + k * MAD (scaled to a standard deviation for normal data)."""
    s = np.asarray(scores, dtype=np.float64)
    med = float(np.median(s))
    mad = 1.4826 * float(np.median(np.abs(s - med)))
    return med + k * max(mad, 1e-6 * max(abs(med), 1.0))


class EmbeddedDetector(Detector):
    """Patch features of a pretrained backbone; zero-shot mutual scoring or few-shot memory bank.

    Parameters (all optional):
      backbone        "effnet-lite0" (default), "effnet-lite1", "effnet-lite2", "dinov2-s", or
                      "onnx:PATH[#OUT,...]" for your own ONNX model (backbones.OnnxBackbone)
      strides         feature strides of an EfficientNet (8, 16, 32). "auto" (default): 16 and 32
                      (32 adds context for large defects); 8 and 16 when resolution < 256, so
                      that the patch grid keeps >= 16 cells a side
      dims            project wider features to this many dimensions (fixed random orthonormal
                      projection) for a faster search; None (default) = off. 128 is 3x faster
                      but cost brain_mri zero-shot 0.07 image AUROC (0.797 -> 0.723)
      resolution      one resize factor per batch (few-shot: per reference set) brings the
                      median image side to this; aspect ratios are kept
      aggregation     neighbourhood sizes r averaged over (LNAMD); default (3,)
      fraction        zero-shot: mean of this smallest fraction of per-image distances (MSM)
      max_refs        zero-shot: compare each image with about this many others (None = all)
      neighbours      zero-shot: image-score smoothing over this many nearest images (0 = off)
      neighbour_weight  weight of the neighbours' mean in that smoothing
      augment         few-shot reference augmentations; "auto" = flips when fewer than 8 refs
      bank_cap        few-shot: coreset-reduce the memory bank beyond this many patches per r
      sigma           Gaussian smoothing of the map, in working pixels
      image_score     "top1" (mean of the smoothed map's top 1% pixels, default) or "max"
      threshold       fixed decision threshold (overrides the automatic one)
      mad_k           zero-shot automatic threshold: median + mad_k * MAD of the batch scores
      max_regions, min_area_frac   region proposals per anomalous image
      batch_size, threads, seed
    """

    modalities = ("image",)
    zero_shot = True
    batch_size = None

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        strides: Sequence[int] | str = "auto",
        resolution: int = 320,
        dims: int | None = None,
        aggregation: Sequence[int] | None = None,
        fraction: float = 0.3,
        max_refs: int | None = 128,
        neighbours: int = 3,
        neighbour_weight: float = 0.3,
        augment: str | Sequence[str] = "auto",
        bank_cap: int = 16384,
        sigma: float = 4.0,
        image_score: str = "top1",
        threshold: float | None = None,
        mad_k: float = 3.0,
        max_regions: int = 5,
        min_area_frac: float = 0.0005,
        batch_size: int = 8,
        threads: int | None = None,
        seed: int = 0,
    ) -> None:
        check_backbone(backbone)
        if isinstance(aggregation, int):
            aggregation = (aggregation,)
        if isinstance(aggregation, str):  # from the CLI: --param aggregation=1,3,5
            aggregation = tuple(x for x in aggregation.replace(" ", "").split(",") if x)
        if aggregation is not None:
            try:
                aggregation = tuple(int(r) for r in aggregation)
            except (TypeError, ValueError) as e:
                raise GenadError(f"aggregation must be odd sizes such as 1,3,5; got {aggregation!r}") from e
        if aggregation is not None and (not aggregation or any(r < 1 or r % 2 == 0 for r in aggregation)):
            raise GenadError(f"aggregation sizes must be odd and >= 1, e.g. (1, 3, 5); got {aggregation}")
        if not 32 <= int(resolution) <= 2048:
            raise GenadError(f"resolution must be between 32 and 2048 pixels, got {resolution}")
        if strides == "auto":
            strides = default_strides(backbone, int(resolution))
        if isinstance(strides, (int, str)):  # from the CLI: --param strides=8,16
            strides = tuple(x for x in str(strides).replace(" ", "").split(",") if x)
        try:
            strides = check_strides(backbone, tuple(int(x) for x in strides))
        except (TypeError, ValueError) as e:
            raise GenadError(f"strides must be numbers such as 16 or 8,16; got {strides!r}") from e
        if dims is not None and not 8 <= int(dims) <= 4096:
            raise GenadError(f"dims must be between 8 and 4096 (or None for no projection), got {dims}")
        if not 0 < float(fraction) <= 1:
            raise GenadError(f"fraction must be in (0, 1], got {fraction}")
        if max_refs is not None and int(max_refs) < 2:
            raise GenadError(f"max_refs must be at least 2 (or None for all), got {max_refs}")
        if image_score not in ("max", "top1"):
            raise GenadError(f"image_score must be 'max' or 'top1', got {image_score!r}")
        super().__init__(
            backbone=backbone, strides=strides, resolution=int(resolution),
            dims=None if dims is None else int(dims), aggregation=aggregation,
            fraction=float(fraction), max_refs=max_refs, neighbours=int(neighbours),
            neighbour_weight=float(neighbour_weight), augment=augment, bank_cap=int(bank_cap),
            sigma=float(sigma), image_score=image_score, threshold=threshold, mad_k=float(mad_k),
            max_regions=int(max_regions), min_area_frac=float(min_area_frac),
            batch_size=int(batch_size), threads=threads, seed=int(seed),
        )
        self.backbone_name = backbone
        self.strides = strides
        self.dims = None if dims is None else int(dims)
        self.resolution = int(resolution)
        # One 3x3 context (as PatchCore) in both modes: on magnetic_tile zero-shot, MuSc's
        # (1, 3, 5) gave the same AUROCs (0.736 / 0.666) at three times the cost.
        self.rs_zero = aggregation or (3,)
        self.rs_few = aggregation or (3,)
        self.fraction = float(fraction)
        self.max_refs = None if max_refs is None else int(max_refs)
        self.neighbours = int(neighbours)
        self.neighbour_weight = float(neighbour_weight)
        self.augment = augment
        self.bank_cap = int(bank_cap)
        self.sigma = float(sigma)
        self.image_score = image_score
        self.fixed_threshold = None if threshold is None else float(threshold)
        self.mad_k = float(mad_k)
        self.max_regions = int(max_regions)
        self.min_area_frac = float(min_area_frac)
        self.feature_batch = int(batch_size)
        self.threads = threads
        self.seed = int(seed)
        self.bank_: MemoryBank | None = None
        self.threshold_: float | None = None
        self.n_refs_: int = 0
        self.scale_: float | None = None

    # -- plumbing -----------------------------------------------------------------------------
    def _backbone(self):  # noqa: ANN202
        return get_backbone(self.backbone_name, self.threads, self.strides)

    def _features(self, samples: Sequence[Sample], rs: Sequence[int], fix_scale: bool = False):  # noqa: ANN202
        """Yield (index, ImageFeatures | error message), batched by working size.

        The resize factor comes from the references in few-shot mode (test images then share
        their pixel scale) and from the batch itself in zero-shot mode."""
        shapes: list[tuple[int, int]] = []
        ok: list[int] = []
        for i, s in enumerate(samples):
            try:
                shapes.append(_shape(s))
                ok.append(i)
            except GenadError as e:
                yield i, str(e)
        loaders = [samples[i].load for i in ok]  # type: ignore[attr-defined]
        if fix_scale or self.scale_ is None:
            self.scale_ = batch_scale(shapes, self.resolution)
        for j, f in extract(
            self._backbone(), loaders, shapes, self.resolution, rs, self.feature_batch, self.scale_,
            self.dims,
        ):
            yield ok[j], (str(f) if isinstance(f, Exception) else f)

    def _augmentations(self, n_refs: int) -> list[str]:
        if self.augment == "auto":
            return ["hflip", "vflip"] if n_refs < 8 else []
        if self.augment in (None, "none", False):
            return []
        if isinstance(self.augment, str):
            return [a.strip() for a in self.augment.split(",") if a.strip()]
        return list(self.augment)

    def _finish(self, f: ImageFeatures, patch: np.ndarray) -> tuple[np.ndarray, float]:
        """Patch scores -> (map at the input's size, image score)."""
        m = patch_map_to_image(patch, f.work, f.orig, self.sigma)
        if self.image_score == "max":
            score = float(m.max())
        else:
            flat = m.ravel()
            k = max(1, flat.size // 100)
            score = float(np.partition(flat, flat.size - k)[-k:].mean())
        return m, score

    def _result(self, s: Sample, m: np.ndarray, score: float, thr: float, mode: str, t: dict[str, float]) -> Result:
        decision = bool(score > thr)
        regions = []
        if decision:
            regions = propose_regions(m, self.max_regions, self.min_area_frac, threshold=thr)
            if not regions:  # a smoothed image score can pass thr while no pixel does
                regions = propose_regions(m, self.max_regions, self.min_area_frac)
        return Result(
            sample_id=s.id, score=score, decision=decision, anomaly_map=m, regions=regions,
            threshold=thr, timings=t, extra={"mode": mode, "backbone": self.backbone_name},
        )

    # -- few-shot -----------------------------------------------------------------------------
    def fit(self, normal_samples: Sequence[Sample]) -> EmbeddedDetector:
        """Build the memory bank from normal references (1 or more images)."""
        normal_samples = list(normal_samples)
        if not normal_samples:
            raise GenadError("fit() needs at least one normal reference image")
        feats: list[ImageFeatures] = []
        originals: list[np.ndarray] = []
        for i, f in self._features(normal_samples, self.rs_few, fix_scale=True):
            if isinstance(f, str):
                raise GenadError(f"cannot use normal reference {normal_samples[i].id}: {f}")
            feats.append(f)
        kinds = self._augmentations(len(feats))
        aug_feats: list[list[ImageFeatures]] = [[] for _ in feats]
        if kinds or len(feats) == 1:
            originals = [s.load() for s in normal_samples]  # type: ignore[attr-defined]
            views = kinds or ["hflip", "vflip"]  # one reference: views are needed for its threshold
            for i, im in enumerate(originals):
                arrs = augment(im, views)
                loaders = [(lambda a=a: a) for a in arrs]
                shapes = [a.shape[:2] for a in arrs]
                for _, f in extract(
                    self._backbone(), loaders, shapes, self.resolution, self.rs_few, self.feature_batch,
                    self.scale_, self.dims,
                ):
                    aug_feats[i].append(f)  # type: ignore[arg-type]
        bank_feats = list(feats)
        if kinds:
            bank_feats += [f for fs in aug_feats for f in fs]
        self.bank_ = MemoryBank(self.bank_cap, self.seed).build(bank_feats)
        self.n_refs_ = len(feats)
        self.threshold_ = self._reference_threshold(feats, aug_feats)
        self.fitted_ = True
        return self

    def _reference_threshold(self, feats: list[ImageFeatures], aug_feats: list[list[ImageFeatures]]) -> float:
        """Decision threshold from the references themselves.

        >= 2 references: each reference (up to 8) is scored against a bank of the others
        (leave-one-out); the threshold is the highest such score. Leaving one out makes the bank
        smaller than the real one, so this errs on the side of fewer false alarms.
        1 reference: its flipped views are scored against the reference itself.
        """
        scores: list[float] = []
        if len(feats) >= 2:
            for i in range(min(len(feats), 8)):
                others = [f for j, f in enumerate(feats) if j != i]
                others += [a for j, fs in enumerate(aug_feats) if j != i for a in fs]
                bank = MemoryBank(self.bank_cap, self.seed).build(others)
                scores.append(self._finish(feats[i], bank.score(feats[i]))[1])
        else:
            bank = MemoryBank(self.bank_cap, self.seed).build(feats)
            scores = [self._finish(a, bank.score(a))[1] for a in aug_feats[0]]
        return float(max(scores))

    # -- predict ------------------------------------------------------------------------------
    def predict(self, samples: Sequence[Sample]) -> list[Result]:
        samples = list(samples)
        if self.bank_ is not None:
            return self._predict_few_shot(samples)
        return self._predict_zero_shot(samples)

    def _predict_few_shot(self, samples: list[Sample]) -> list[Result]:
        assert self.bank_ is not None and self.threshold_ is not None
        thr = self.fixed_threshold if self.fixed_threshold is not None else self.threshold_
        results: list[Result | None] = [None] * len(samples)
        t0 = time.perf_counter()
        for i, f in self._features(samples, self.rs_few):
            if isinstance(f, str):
                results[i] = Result(samples[i].id, error=f)
                continue
            t1 = time.perf_counter()
            m, score = self._finish(f, self.bank_.score(f))
            t2 = time.perf_counter()
            results[i] = self._result(
                samples[i], m, score, thr, "few-shot",
                {"features": t1 - t0, "scoring": t2 - t1},
            )
            t0 = time.perf_counter()
        return [r if r is not None else Result(s.id, error="not scored") for r, s in zip(results, samples)]

    def _predict_zero_shot(self, samples: list[Sample]) -> list[Result]:
        if len(samples) < MIN_BATCH:
            raise GenadError(
                f"zero-shot needs a batch of at least {MIN_BATCH} images to compare with each other, "
                f"got {len(samples)}: give normal references for few-shot (--normal DIR, or fit())"
            )
        t0 = time.perf_counter()
        feats: dict[int, ImageFeatures] = {}
        errors: dict[int, str] = {}
        for i, f in self._features(samples, self.rs_zero, fix_scale=True):
            if isinstance(f, str):
                errors[i] = f
            else:
                feats[i] = f
        order = sorted(feats)
        t1 = time.perf_counter()
        fl = [feats[i] for i in order]
        patches = mutual_scores(fl, self.fraction, self.max_refs, self.seed)
        maps, raw = [], []
        for f, p in zip(fl, patches):
            m, s = self._finish(f, p)
            maps.append(m)
            raw.append(s)
        scores = neighbour_smooth(
            np.asarray(raw), torch.stack([f.global_vec for f in fl]), self.neighbours, self.neighbour_weight
        )
        thr = self.fixed_threshold if self.fixed_threshold is not None else robust_threshold(scores, self.mad_k)
        self.threshold_ = thr
        t2 = time.perf_counter()
        n = max(1, len(order))
        per = {"features": (t1 - t0) / n, "scoring": (t2 - t1) / n}
        results: list[Result] = []
        pos = {i: k for k, i in enumerate(order)}
        for i, s in enumerate(samples):
            if i in errors:
                results.append(Result(s.id, error=errors[i]))
                continue
            k = pos[i]
            r = self._result(s, maps[k], float(scores[k]), thr, "zero-shot", dict(per))
            r.extra["raw_score"] = float(raw[k])
            results.append(r)
        return results
