"""EmbeddedDetector ("embedded"): genad's default, training-free visual detector.

    det = create("embedded")                 # zero-shot: predict() scores a batch against itself
    det.predict(samples)                     # needs >= 3 images
    det = create("embedded").fit(normals)    # few-shot: memory bank of the normal references
    det.predict(samples)                     # any number of images, streamed

See docs/embedded.md for how it works and measured figures.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from genad.decision import MAP_BULK_K, Calibration, from_map_bulk, from_reference_scores
from genad.detector import Capabilities, Detector, param, raw_threshold_param, threshold_param
from genad.engines.embedded.backbones import (
    DEFAULT_BACKBONE,
    NORMALISATIONS,
    check_backbone,
    check_strides,
    default_strides,
    get_backbone,
    input_normalisation,
    weights_sha256,
    with_fine_grid,
)
from genad.engines.embedded.cache import AUTO_MIN_REFS, FeatureCache, file_digest, settings_key
from genad.engines.embedded.features import ImageFeatures, augment, extract
from genad.engines.embedded.few_shot import MemoryBank
from genad.engines.embedded.geometry import batch_scale, patch_map_to_image
from genad.engines.embedded.regions import propose_regions
from genad.engines.embedded.zero_shot import mutual_scores, neighbour_smooth
from genad.engines.progress import step
from genad.errors import GenadError
from genad.ops import MIN_ZERO_SHOT_BATCH, check_min_batch
from genad.types import ImageSample, Result, Sample


def _shape(s: Sample) -> tuple[int, int]:
    """(H, W) without decoding the pixels where possible."""
    if not isinstance(s, ImageSample):
        raise GenadError(f"the embedded detector reads images, got a {s.modality} sample ({s.id})")
    return s.size()


def _strides(value: object) -> object:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,)
    items = value.replace(" ", "").split(",") if isinstance(value, str) else value
    try:
        return tuple(int(x) for x in items)  # type: ignore[attr-defined]
    except (TypeError, ValueError) as e:
        raise GenadError(f"strides must be numbers such as 16 or 8,16; got {value!r}") from e


def _aggregation(value: tuple[int, ...]) -> tuple[int, ...]:
    if not value or any(r < 1 or r % 2 == 0 for r in value):
        raise GenadError(f"aggregation sizes must be odd and >= 1, e.g. (1, 3, 5); got {value}")
    return value


def _fraction(value: float) -> float:
    if not 0 < value <= 1:
        raise GenadError(f"fraction must be in (0, 1], got {value}")
    return value


def _augment(value: object) -> object:
    if value in (None, False) or (isinstance(value, str) and value.strip().lower() in ("none", "off", "false", "")):
        return "none"
    if isinstance(value, str):
        if value.strip() == "auto":
            return "auto"
        return tuple(a.strip() for a in value.split(",") if a.strip())
    if isinstance(value, (list, tuple)):
        return tuple(str(a) for a in value)
    raise GenadError(f"augment must be auto, none or a list such as hflip,vflip; got {value!r}")


def _content_id(s: Sample) -> str | None:
    """What identifies a sample's pixels for the feature cache: its file's SHA-256 (None for
    pixels given in memory or by a loader, and for an unreadable file)."""
    if not isinstance(s, ImageSample) or s.array is not None or s.loader is not None or s.path is None:
        return None
    try:
        return "sha256:" + file_digest(s.path)
    except OSError:
        return None


def _message(e: BaseException) -> str:
    """One sample's failure as its error text: a GenadError's own message (the readers say which
    file and why), anything else with its type."""
    return str(e) if isinstance(e, GenadError) else f"{type(e).__name__}: {e}"


def _view(load: Callable[[], np.ndarray], kind: str) -> np.ndarray:
    return augment(load(), [kind])[0]


def _view_shape(shape: tuple[int, int], kind: str) -> tuple[int, int]:
    return (shape[1], shape[0]) if kind == "rot90" else shape


def _feature_cache(value: object) -> object:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str):
        v = value.strip().lower()
        return {"true": "on", "yes": "on", "1": "on", "false": "off", "no": "off", "0": "off"}.get(v, v)
    return value


def _too_few_readable(n_ok: int, n: int) -> str:
    return (
        f"zero-shot compares the images with each other: only {n_ok} of the {n} could be read, "
        f"it needs >= {MIN_ZERO_SHOT_BATCH}; fix the unreadable files or give normal references"
    )


def _comparing(done: int, total: int) -> None:
    step("comparing", done, total)


#: auto normalisation: ImageNet's mean/std when at least this share of a typical image's pixels
#: is near-black (a scan's background), else the weights' own convention
DARK_SHARE = 0.10
#: near-black: luminance below this, on 0..1
DARK_LEVEL = 0.05


def choose_normalization(samples: Sequence[Sample], max_images: int = 16) -> str:
    """The input normalisation for images like `samples` when `normalization="auto"`: a rule on
    the images' own statistics, never on a data set's name.

    Measured (benchmarks/normalization.py, docs/embedded.md): ImageNet's mean/std beats
    EfficientNet-Lite's own (x - 0.5) / 0.5 on brain MRI at every shot count (4-shot image AUROC
    0.820 against 0.743) and loses on magnetic tiles (0.728 against 0.768). What separates them is
    the black background of a scan: the median share of near-black pixels is 0.48 on the MRI
    slices and 0 on the tiles. So: "imagenet" when the median share of pixels darker than
    DARK_LEVEL, over up to `max_images` images spread over `samples`, is at least DARK_SHARE;
    else "own". Images that cannot be read are passed over (their error comes later)."""
    images = [s for s in samples if isinstance(s, ImageSample)]
    if not images:
        return "own"
    pick = np.unique(np.linspace(0, len(images) - 1, min(max_images, len(images))).round().astype(int))
    shares = []
    for i in pick:
        try:
            a = np.asarray(images[int(i)].load(), dtype=np.float32)
        except Exception:
            continue
        grey = a.mean(axis=2) if a.ndim == 3 else a
        shares.append(float((grey < DARK_LEVEL * 255.0).mean()))
    if not shares:
        return "own"
    return "imagenet" if float(np.median(shares)) >= DARK_SHARE else "own"


def map_result(
    det: Detector,
    s: Sample,
    m: np.ndarray,
    score: float,
    calibration: Calibration,
    extra: dict,
    timings: dict[str, float],
    max_regions: int,
    min_area: float,
) -> Result:
    """The Result of an image scored by a map: decided by `det`'s calibration and threshold
    options, with up to `max_regions` region proposals (of at least `min_area` of the image)
    when anomalous."""
    r = Result(sample_id=s.id, score=score, anomaly_map=m, timings=timings, extra=extra)
    det.decide(r, calibration)
    if r.decision and r.threshold is not None:  # regions follow the decision
        r.regions = propose_regions(m, max_regions, min_area, threshold=r.threshold)
        if not r.regions:  # a smoothed image score can pass the boundary while no pixel does
            r.regions = propose_regions(m, max_regions, min_area)
    return r


#: few-shot: boundary = mean + this many sd of the references' leave-one-out scores (measured:
#: README, decisions table)
FEW_SHOT_K = 0.5


class EmbeddedDetector(Detector):
    """Patch features of a pretrained backbone; zero-shot mutual scoring or few-shot memory bank.

    Options (all optional; see each declaration's doc and docs/embedded.md):
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
      feature_cache   few-shot: keep the references' features on disk (cache.py) and reuse them
                      when the same files are fitted again: "auto" (default: from 32 references
                      read from files), "on", "off"
      sigma           Gaussian smoothing of the map, in working pixels
      image_score     "top1" (mean of the smoothed map's top 1% pixels, default) or "max"
      threshold       decision threshold on the normalised score (0.5 = the calibrated boundary)
      raw_threshold   decision boundary in raw score units (replaces the calibrated one)
      zero_shot_k     zero-shot boundary: typical map level + k * typical peak height
                      (genad.decision.from_map_bulk; holds for 0-90% defective batches)
      few_shot_k      few-shot boundary: mean + k * sd of the references' leave-one-out scores
      max_regions, min_area_frac   region proposals per anomalous image
      feature_batch (alias batch_size), threads, seed
    """

    name = "embedded"
    modalities = ("image",)
    zero_shot = True
    chunk_size = 32  # few-shot: images per predict() when a run streams them

    backbone: str = param(DEFAULT_BACKBONE, convert=check_backbone, doc="feature extractor (see backbones)")
    strides: tuple[int, ...] | str = param("auto", "any", convert=_strides, doc="feature strides, or auto")
    resolution: int = param(320, low=32, high=2048, doc="median image side the backbone sees")
    dims: int | None = param(None, "int", low=8, high=4096, doc="random projection to this many dimensions")
    aggregation: tuple[int, ...] | None = param(None, "ints", convert=_aggregation, doc="neighbourhood sizes (odd)")
    fraction: float = param(0.3, convert=_fraction, doc="zero-shot: share of closest distances averaged")
    max_refs: int | None = param(128, "int", low=2, doc="zero-shot: images each image is compared with")
    neighbours: int = param(3, low=0, high=1000, doc="zero-shot: image-score smoothing neighbours")
    neighbour_weight: float = param(0.3, low=0.0, high=1.0, doc="weight of the neighbours' mean")
    augment: str | tuple[str, ...] = param("auto", "any", convert=_augment, doc="few-shot augmentations")
    bank_cap: int = param(16384, low=16, doc="few-shot: coreset size per neighbourhood size")
    feature_cache: str = param(
        "auto",
        "any",
        convert=_feature_cache,
        choices=("auto", "on", "off"),
        doc=f"few-shot: reuse reference features from disk (auto: from {AUTO_MIN_REFS} references)",
    )
    normalization: str = param(
        "auto",
        choices=("auto", *NORMALISATIONS),
        doc="input normalisation: auto (chosen from the images, see choose_normalization), own, imagenet, half",
    )
    sigma: float = param(4.0, low=0.0, high=64.0, doc="map smoothing, in working pixels")
    image_score: str = param("top1", choices=("max", "top1"), doc="image score from the map")
    threshold: float = threshold_param()
    raw_threshold: float | None = raw_threshold_param()
    zero_shot_k: float = param(MAP_BULK_K, low=0.0, high=100.0, doc="zero-shot boundary: map level + k * peak height")
    few_shot_k: float = param(
        FEW_SHOT_K,
        low=-10.0,
        high=100.0,
        doc="few-shot boundary: mean + k * sd of the references' leave-one-out scores",
    )
    max_regions: int = param(5, low=0, high=100, doc="regions proposed per anomalous image")
    min_area_frac: float = param(0.0005, low=0.0, high=1.0, doc="smallest region, as a share of the image")
    feature_batch: int = param(8, low=1, high=512, aliases=("batch_size",), doc="images per backbone call")
    threads: int | None = param(None, "int", low=1, high=256, doc="CPU threads (default: the cores allowed)")
    seed: int = param(0, doc="random subsets and coreset")

    # fitted state (fit() sets it)
    bank_: MemoryBank | None = None
    calibration_: Calibration | None = None
    reference_scores_: list[float] = []
    n_refs_: int = 0
    scale_: float | None = None

    def _configure(self) -> None:
        # strides="auto" is resolved here (and again when backbone or resolution change);
        # get_params still says "auto"
        auto = self.strides == "auto" or (getattr(self, "_auto_strides", None) == self.strides)
        strides = default_strides(self.backbone, self.resolution) if auto else self.strides
        try:
            self.strides = check_strides(self.backbone, tuple(int(x) for x in strides))
        except (TypeError, ValueError) as e:
            raise GenadError(f"strides must be numbers such as 16 or 8,16; got {strides!r}") from e
        self._auto_strides = self.strides if auto else None
        # One 3x3 context (as PatchCore) in both modes: on magnetic_tile zero-shot, MuSc's
        # (1, 3, 5) gave the same AUROCs (0.736 / 0.666) at three times the cost.
        self._rs: tuple[int, ...] = self.aggregation or (3,)

    def get_params(self, deep: bool = False) -> dict:
        p = super().get_params(deep)
        if self._auto_strides is not None:
            p["strides"] = "auto"
        return p

    def capabilities(self) -> Capabilities:
        return self._compare_until_fitted(self.bank_ is not None)

    # -- saved models ---------------------------------------------------------------------------
    def weights(self) -> dict[str, str]:
        digest = weights_sha256(self.backbone)
        return {} if digest is None else {self.backbone: digest}

    @classmethod
    def weights_digest(cls, backbone: str) -> str | None:
        return weights_sha256(backbone)

    def preprocessing(self) -> dict:
        """What a saved model (and an ONNX export) needs to prepare an image as fit() did."""
        return {
            "input": "RGB uint8 HxWx3 (grey and RGBA images are converted)",
            "backbone": self.backbone,
            "strides": list(self.strides),
            "resolution": self.resolution,
            "working_scale": self.scale_,  # few-shot: every image is resized by this factor
            "pixels": "scaled to [0, 1], then normalised per channel",
            "normalization": self._norm(),
            "normalisation": input_normalisation(self.backbone, self._norm()),
            "aggregation": list(self._rs),
            "sigma": self.sigma,
            "image_score": self.image_score,
        }

    @classmethod
    def tuned(cls, params: dict, purpose: str) -> dict:
        if purpose == "proposals":
            # The finer stride-8+16 maps put their peaks on small defects more often than the
            # default 16+32 ones (whose broad blobs win pixel AUROC on large defects): on
            # magnetic_tile (benchmarks/look_twice_oracle.py) a proposal covered the defect in
            # 31 of 40 defective images instead of 19; a 90%-right verifier then reached image
            # AUROC 0.91, not 0.78.
            return with_fine_grid(params)
        if purpose == "depth_views":
            # Rendered depth views show small, sharp dents and cracks on smooth surfaces: the
            # fine stride-8+16 grid at 256 px localises them better than the image defaults
            # (synthetic benchmark, point AUROC 0.98-0.995 vs 0.96-0.98).
            return with_fine_grid(params, resolution=256)
        if purpose == "video_frames":
            # An event spans many consecutive frames that match each other; averaging each
            # patch's distances over all the other frames (not the closest 30%) keeps them from
            # hiding it (generated clip, 96 px: the event frames' median smoothed normalised
            # score 0.37 -> 0.69, the highest of the clip without it 0.53 -> 0.37).
            return {"fraction": 1.0, **params}
        return dict(params)

    # -- plumbing -----------------------------------------------------------------------------
    def _norm(self) -> str:
        """The input normalisation in use: the option when it names one; auto: what fit() chose
        from the references (normalization_), or what the zero-shot batch being scored chose."""
        if self.normalization != "auto":
            return self.normalization
        return getattr(self, "normalization_", None) or getattr(self, "_batch_norm", None) or "own"

    def _backbone(self):
        return get_backbone(self.backbone, self.threads, self.strides, self._norm())

    def _features(self, samples: Sequence[Sample], scale: float | None = None, cached: bool = False):
        """Yield (index, ImageFeatures | error message), batched by working size.

        The resize factor `scale` comes from the references in few-shot mode (test images
        then share their pixel scale); None: from the batch itself (zero-shot). `cached`: look
        images read from files up in the feature cache first (fit's references).

        A sample that cannot be read (a missing, empty, truncated or oversized file, not an
        image...) gives its error message and the others go on; each image done is a step
        ("features") of the run's progress, where a cancelled run stops."""
        shapes: list[tuple[int, int]] = []
        ok: list[int] = []
        n, done = len(samples), 0
        for i, s in enumerate(samples):
            try:
                shapes.append(_shape(s))
                ok.append(i)
            except Exception as e:  # every reader error is this sample's, never the batch's
                done += 1
                yield i, _message(e)
        loaders = [samples[i].load for i in ok]  # type: ignore[attr-defined]
        if scale is None:
            scale = batch_scale(shapes, self.resolution)
        keys = [_content_id(samples[i]) for i in ok] if cached else None
        for j, f in self._extract(loaders, shapes, scale, keys):
            done += 1
            step("features", done, n)
            yield ok[j], (_message(f) if isinstance(f, Exception) else f)

    def _extract(
        self,
        loaders: Sequence[Callable[[], np.ndarray]],
        shapes: Sequence[tuple[int, int]],
        scale: float,
        keys: Sequence[str | None] | None = None,
    ) -> Iterator[tuple[int, ImageFeatures | Exception]]:
        """Features with this detector's backbone and settings (see features.extract).

        `keys[i]`: what identifies image i's pixels (its file's SHA-256 and view, see
        `_content_id`), None where nothing does; with keys and a feature cache (`self._cache`,
        set by fit), images found there are not read, misses are computed and stored."""
        cache: FeatureCache | None = getattr(self, "_cache", None)
        digest = weights_sha256(self.backbone) if cache is not None and keys is not None else None
        if cache is None or keys is None or digest is None:
            yield from extract(
                self._backbone(), loaders, shapes, self.resolution, self._rs, self.feature_batch, scale, self.dims
            )
            return
        settings = settings_key(  # every setting the features depend on
            {
                "backbone": self.backbone,
                "weights_sha256": digest,
                "strides": list(self.strides),
                "resolution": self.resolution,
                "scale": repr(float(scale)),
                "aggregation": list(self._rs),
                "dims": self.dims,
                "normalization": self._norm(),
            }
        )
        entry: dict[int, str] = {}
        todo: list[int] = []
        for i, k in enumerate(keys):
            hit = None
            if k is not None:
                entry[i] = cache.key(k, settings)
                hit = cache.get(entry[i])
            if hit is not None:
                yield i, hit
            else:
                todo.append(i)
        if not todo:
            return
        sub = extract(
            self._backbone(),
            [loaders[i] for i in todo],
            [shapes[i] for i in todo],
            self.resolution,
            self._rs,
            self.feature_batch,
            scale,
            self.dims,
        )
        for j, f in sub:
            i = todo[j]
            if i in entry and isinstance(f, ImageFeatures):
                cache.put(entry[i], f)
            yield i, f

    def image_features(
        self, samples: Sequence[Sample], scale: float | None = None, cache: bool = False
    ) -> Iterator[tuple[int, ImageFeatures | str]]:
        """Patch features of `samples` with this detector's backbone and settings, for engines
        built on them (genad.engines.oneclass): (index, features or that sample's error
        message), batched by working size, each image a progress step. `scale`: the resize
        factor (None: from these images); `cache`: look images read from files up in the
        feature cache, and keep what is computed there."""
        self._cache = FeatureCache() if cache else None
        try:
            yield from self._features(samples, scale, cached=cache)
        finally:
            if self._cache is not None and self._cache.writes:
                self._cache.evict()
            self._cache = None

    def _augmentations(self, n_refs: int) -> list[str]:
        if self.augment == "auto":
            return ["hflip", "vflip"] if n_refs < 8 else []
        if self.augment == "none":
            return []
        return list(self.augment)

    def image_map(self, f: ImageFeatures, patch: np.ndarray) -> tuple[np.ndarray, float]:
        """Patch scores (h, w) of an image -> (its map at the input's size, image score), with
        this detector's `sigma` and `image_score`."""
        m = patch_map_to_image(patch, f.work, f.orig, self.sigma)
        if self.image_score == "max":
            score = float(m.max())
        else:
            flat = m.ravel()
            k = max(1, flat.size // 100)
            score = float(np.partition(flat, flat.size - k)[-k:].mean())
        return m, score

    def _result(
        self, s: Sample, m: np.ndarray, score: float, calibration: Calibration, mode: str, t: dict[str, float]
    ) -> Result:
        extra = {"mode": mode, "backbone": self.backbone}
        return map_result(self, s, m, score, calibration, extra, t, self.max_regions, self.min_area_frac)

    # -- few-shot -----------------------------------------------------------------------------
    def fit(self, normal_samples: Sequence[Sample]) -> EmbeddedDetector:
        """Build the memory bank from normal references (1 or more images)."""
        normal_samples = list(normal_samples)
        if not normal_samples:
            raise GenadError("fit() needs at least one normal reference image")
        feats: list[ImageFeatures] = []
        shapes0: list[tuple[int, int]] = []
        for s in normal_samples:
            try:
                shapes0.append(_shape(s))
            except GenadError as e:
                raise GenadError(f"cannot use normal reference {s.id}: {e}") from e
        scale = batch_scale(shapes0, self.resolution)
        self.normalization_ = (
            self.normalization if self.normalization != "auto" else choose_normalization(normal_samples)
        )
        use_cache = self.feature_cache == "on" or (
            self.feature_cache == "auto" and len(normal_samples) >= AUTO_MIN_REFS
        )
        self._cache = FeatureCache() if use_cache else None
        try:
            got: dict[int, ImageFeatures] = {}
            for i, f in self._features(normal_samples, scale, cached=use_cache):
                if isinstance(f, str):
                    raise GenadError(f"cannot use normal reference {normal_samples[i].id}: {f}")
                got[i] = f
            # references in the order extract() computes them (grouped by working size, as
            # before the cache, whose hits come first): it decides which 8 calibrate
            first: dict[tuple[int, int], int] = {}
            for i in range(len(normal_samples)):
                first.setdefault(got[i].work, i)
            order = sorted(got, key=lambda i: (first[got[i].work], i))
            feats = [got[i] for i in order]
            kinds = self._augmentations(len(feats))
            aug_feats: list[list[ImageFeatures]] = [[] for _ in feats]
            if kinds or len(feats) == 1:
                views = kinds or ["hflip", "vflip"]  # one reference: views are needed for its threshold
                for p, i in enumerate(order):
                    step("augmenting", p, len(order))
                    s = normal_samples[i]
                    load = functools.lru_cache(maxsize=1)(s.load)  # type: ignore[attr-defined]
                    loaders = [functools.partial(_view, load, v) for v in views]
                    shapes = [_view_shape(shapes0[i], v) for v in views]
                    cid = _content_id(s) if use_cache else None
                    keys = [None if cid is None else f"{cid}#{v}" for v in views] if use_cache else None
                    by_view: dict[int, ImageFeatures] = {}
                    for j, f in self._extract(loaders, shapes, scale, keys):
                        if isinstance(f, Exception):
                            raise GenadError(f"cannot use normal reference {s.id}: {f}")
                        by_view[j] = f
                    aug_feats[p] = [by_view[j] for j in range(len(views))]
        finally:
            if self._cache is not None and self._cache.writes:
                self._cache.evict()
        step("memory bank", 0, None)
        bank_feats = list(feats)
        sources = list(range(len(feats)))
        if kinds:
            bank_feats += [f for fs in aug_feats for f in fs]
            sources += [i for i, fs in enumerate(aug_feats) for _ in fs]
        self.bank_ = MemoryBank(self.bank_cap, self.seed).build(bank_feats, sources)
        self.scale_ = scale
        self.n_refs_ = len(feats)
        step("calibrating", 0, None)
        self.reference_scores_ = self._reference_scores(feats, aug_feats)
        if len(feats) == 1:
            # flipped views of the one reference score lower than a new normal image: start
            # from the highest of them
            top = max(self.reference_scores_)
            self.calibration_ = from_reference_scores([top], self.few_shot_k, "one reference: its flipped views")
        else:
            self.calibration_ = from_reference_scores(self.reference_scores_, self.few_shot_k)
        self.fitted_ = True
        return self

    def _reference_scores(self, feats: list[ImageFeatures], aug_feats: list[list[ImageFeatures]]) -> list[float]:
        """Scores of normal images the bank has not seen, for the decision boundary.

        >= 2 references: each reference (up to 8) is scored against the bank without its own
        patches and those of its augmented views (leave-one-out by masking the rows it gave:
        one bank, one coreset). Below `bank_cap` patches this is exactly a bank of the others;
        above it, the coreset was chosen with the held-out image present, so its neighbours in
        feature space may be a little thinner than in a coreset of the others alone. Leaving
        one out makes the bank smaller than the real one, so these run a little higher than a
        new normal image's score.
        1 reference: its flipped views are scored against the reference itself.
        """
        scores: list[float] = []
        if len(feats) >= 2:
            assert self.bank_ is not None
            for i in range(min(len(feats), 8)):
                scores.append(self.image_map(feats[i], self.bank_.score(feats[i], exclude=i))[1])
        else:
            bank = MemoryBank(self.bank_cap, self.seed).build(feats)
            scores = [self.image_map(a, bank.score(a))[1] for a in aug_feats[0]]
        return [float(v) for v in scores]

    # -- predict ------------------------------------------------------------------------------
    def predict(self, samples: Sequence[Sample]) -> list[Result]:
        samples = list(samples)
        if self.bank_ is not None:
            return self._predict_few_shot(samples)
        return self._predict_zero_shot(samples)

    def _predict_few_shot(self, samples: list[Sample]) -> list[Result]:
        assert self.bank_ is not None and self.calibration_ is not None
        calibration = self.calibration_
        results: list[Result | None] = [None] * len(samples)
        t0 = time.perf_counter()
        for i, f in self._features(samples, self.scale_):
            if isinstance(f, str):
                results[i] = Result(samples[i].id, error=f)
                continue
            t1 = time.perf_counter()
            m, score = self.image_map(f, self.bank_.score(f))
            t2 = time.perf_counter()
            results[i] = self._result(
                samples[i],
                m,
                score,
                calibration,
                "few-shot",
                {"features": t1 - t0, "scoring": t2 - t1},
            )
            t0 = time.perf_counter()
        return [r if r is not None else Result(s.id, error="not scored") for r, s in zip(results, samples)]

    def _predict_zero_shot(self, samples: list[Sample]) -> list[Result]:
        check_min_batch(len(samples), "images")
        if self.normalization == "auto":  # chosen from this batch (not fitted state: per call)
            self._batch_norm = choose_normalization(samples)
        t0 = time.perf_counter()
        feats: dict[int, ImageFeatures] = {}
        errors: dict[int, str] = {}
        for i, f in self._features(samples):
            if isinstance(f, str):
                errors[i] = f
            else:
                feats[i] = f
        if errors and len(feats) < MIN_ZERO_SHOT_BATCH:
            # too few left to compare: each readable image fails with the reason, not the run
            why = _too_few_readable(len(feats), len(samples))
            return [Result(x.id, error=errors.get(i, why)) for i, x in enumerate(samples)]
        order = sorted(feats)
        t1 = time.perf_counter()
        fl = [feats[i] for i in order]
        patches = mutual_scores(fl, self.fraction, self.max_refs, self.seed, on_progress=_comparing)
        maps, raw = [], []
        for k, (f, p) in enumerate(zip(fl, patches)):
            step("maps", k, len(fl))
            m, s = self.image_map(f, p)
            maps.append(m)
            raw.append(s)
        scores = neighbour_smooth(
            np.asarray(raw), torch.stack([f.global_vec for f in fl]), self.neighbours, self.neighbour_weight
        )
        calibration = from_map_bulk(maps, scores, self.zero_shot_k) if maps else None
        t2 = time.perf_counter()
        n = max(1, len(order))
        per = {"features": (t1 - t0) / n, "scoring": (t2 - t1) / n}
        results: list[Result] = []
        pos = {i: k for k, i in enumerate(order)}
        for i, sample in enumerate(samples):
            if i in errors:
                results.append(Result(sample.id, error=errors[i]))
                continue
            k = pos[i]
            assert calibration is not None
            r = self._result(sample, maps[k], float(scores[k]), calibration, "zero-shot", dict(per))
            r.extra["raw_score"] = float(raw[k])
            results.append(r)
        return results
