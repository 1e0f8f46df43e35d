"""A sanity baseline: per-position colour statistics, no backbone.

This is NOT the product; it exists so that the whole path (loading, scoring, maps, metrics,
reports) runs end to end in a second with nothing to download, and to give every real
detector a floor to beat. How it works:

* every image is resized to a fixed `grid` x `grid`, lightly blurred, and standardised per
  channel (its own mean and std), so global brightness changes do not read as defects;
* few-shot (`fit`): the per-position mean and spread of the normal references;
  zero-shot (no `fit`): the per-position median and MAD of the batch being scored;
* a position's distance is |pixel - centre| / spread in units of the spread, taking the best
  match within +-`shift` cells so that small misalignments are forgiven;
* the image score is the map's maximum; the map is resized back to the image's resolution.

The decision boundary (genad.decision) comes from the references' leave-one-out scores when
there are at least two (mean + `few_shot_k` sd), from the batch's maps in zero-shot mode
(map level + 2 x peak height, as the embedded engine), else `default_threshold`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from genad.decision import Calibration, from_map_bulk, from_reference_scores
from genad.detector import Capabilities, Detector, param, raw_threshold_param, threshold_param
from genad.errors import GenadError
from genad.ops import MIN_ZERO_SHOT_BATCH, check_min_batch, label_regions, resize_map
from genad.types import ImageSample, Region, Result, Sample


class BaselineDetector(Detector):
    """Per-position colour statistics vs normal references (or the batch median)."""

    name = "baseline"
    modalities = ("image",)
    zero_shot = True

    grid: int = param(64, low=8, high=1024, doc="cells a side of the comparison grid")
    shift: int = param(1, low=0, high=8, doc="forgive misalignments of up to this many cells")
    blur: float = param(1.0, low=0.0, high=32.0, doc="Gaussian blur before comparing, in cells")
    threshold: float = threshold_param()
    raw_threshold: float | None = raw_threshold_param()
    few_shot_k: float = param(1.0, low=-10.0, high=100.0, doc="boundary: mean + k sd of the leave-one-out scores")
    default_threshold: float = param(6.0, doc="raw boundary after fit() on a single reference")
    max_regions: int = param(3, low=0, high=100, doc="regions listed per anomalous image")

    # fitted state (fit() sets it)
    center_: np.ndarray | None = None
    spread_: np.ndarray | None = None
    calibration_: Calibration | None = None

    def capabilities(self) -> Capabilities:
        return self._compare_until_fitted(self.center_ is not None)

    # -- features -------------------------------------------------------------------------
    def _features(self, image: np.ndarray) -> np.ndarray:
        im = Image.fromarray(image).resize((self.grid, self.grid), Image.Resampling.BILINEAR)
        a = np.asarray(im, dtype=np.float32) / 255.0
        if self.blur > 0:
            a = ndimage.gaussian_filter(a, sigma=(self.blur, self.blur, 0))
        mean = a.mean(axis=(0, 1), keepdims=True)
        std = a.std(axis=(0, 1), keepdims=True)
        return (a - mean) / np.maximum(std, 1e-3)

    def _load_all(
        self, samples: Sequence[Sample]
    ) -> tuple[list[tuple[int, int] | None], list[np.ndarray | None], list[str | None]]:
        # Only each image's size is kept, not its pixels: a zero-shot batch can be large.
        shapes: list[tuple[int, int] | None] = []
        feats: list[np.ndarray | None] = []
        errors: list[str | None] = []
        for s in samples:
            try:
                if not isinstance(s, ImageSample):
                    raise GenadError(f"the baseline reads images only, got a {s.modality} sample")
                img = s.load()
                shapes.append(img.shape[:2])
                feats.append(self._features(img))
                errors.append(None)
            except Exception as e:  # every reader error is this sample's, never the batch's
                shapes.append(None)
                feats.append(None)
                errors.append(str(e) if isinstance(e, GenadError) else f"{type(e).__name__}: {e}")
        return shapes, feats, errors

    # -- statistics -----------------------------------------------------------------------
    @staticmethod
    def _floor(spread: np.ndarray) -> np.ndarray:
        # A spread of ~0 (one reference, a flat area) would make any change infinite.
        floor = max(float(np.median(spread)), 0.1)
        return np.sqrt(spread**2 + floor**2).astype(np.float32)

    def _distance(self, x: np.ndarray, center: np.ndarray, spread: np.ndarray) -> np.ndarray:
        """x (N,G,G,3), center (G,G,3), spread (G,G) -> distance maps (N,G,G)."""
        s = self.shift
        cpad = np.pad(center, ((s, s), (s, s), (0, 0)), mode="edge")
        spad = np.pad(spread, ((s, s), (s, s)), mode="edge")
        g = self.grid
        best = np.full(x.shape[:3], np.inf, np.float32)
        for dy in range(2 * s + 1):
            for dx in range(2 * s + 1):
                c = cpad[dy : dy + g, dx : dx + g]
                sp = spad[dy : dy + g, dx : dx + g]
                d = np.sqrt(((x - c) ** 2).mean(axis=-1)) / sp
                np.minimum(best, d, out=best)
        return best

    def _stats(self, feats: np.ndarray, robust: bool) -> tuple[np.ndarray, np.ndarray]:
        if robust:
            center = np.median(feats, axis=0)
            spread = 1.4826 * np.median(np.abs(feats - center), axis=0)
        else:
            center = feats.mean(axis=0)
            spread = feats.std(axis=0)
        spread = np.sqrt((spread**2).mean(axis=-1))  # one spread per position
        return center.astype(np.float32), self._floor(spread)

    # -- the contract ---------------------------------------------------------------------
    def fit(self, normal_samples: Sequence[Sample]) -> BaselineDetector:
        _, feats, errors = self._load_all(normal_samples)
        good = [f for f in feats if f is not None]
        if not good:
            bad = next((e for e in errors if e), "no samples given")
            raise GenadError(f"no usable normal reference: {bad}")
        stack = np.stack(good)
        self.center_, self.spread_ = self._stats(stack, robust=False)
        self.calibration_ = Calibration(self.default_threshold, 1.0, "one reference: default_threshold")
        if len(good) >= 2:
            # Leave-one-out: how far does each normal image sit from the others?
            loo = []
            for i in range(len(good)):
                rest = np.delete(stack, i, axis=0)
                c, sp = self._stats(rest, robust=False)
                loo.append(float(self._distance(stack[i : i + 1], c, sp).max()))
            self.calibration_ = from_reference_scores(loo, self.few_shot_k)
        self.fitted_ = True
        return self

    def predict(self, samples: Sequence[Sample]) -> list[Result]:
        t0 = time.perf_counter()
        shapes, feats, errors = self._load_all(samples)
        ok = [i for i, f in enumerate(feats) if f is not None]
        results = [Result(s.id, error=errors[i]) for i, s in enumerate(samples)]
        if not ok:
            return results
        x = np.stack([f for f in feats if f is not None])
        if self.center_ is not None and self.spread_ is not None:
            center, spread = self.center_, self.spread_
        else:
            if len(ok) < MIN_ZERO_SHOT_BATCH <= len(samples):
                # too few readable images left to compare: each fails with the reason, not the run
                why = (
                    f"zero-shot compares the images with each other: only {len(ok)} of the {len(samples)} "
                    f"could be read, it needs >= {MIN_ZERO_SHOT_BATCH}; fix the unreadable files or give "
                    "normal references"
                )
                return [r if r.error else Result(r.sample_id, error=why) for r in results]
            check_min_batch(len(ok), "images")
            center, spread = self._stats(x, robust=True)
        maps = self._distance(x, center, spread)
        scores = maps.reshape(len(ok), -1).max(axis=1)
        calibration = self.calibration_ if self.calibration_ is not None else from_map_bulk(list(maps), scores)
        per_sample = (time.perf_counter() - t0) / len(samples)
        for j, i in enumerate(ok):
            shape = shapes[i]
            assert shape is not None
            amap = resize_map(maps[j], shape)
            r = self.decide(
                Result(samples[i].id, score=float(scores[j]), anomaly_map=amap, timings={"seconds": per_sample}),
                calibration,
            )
            if r.decision and r.threshold is not None:
                r.regions = self._regions(amap, r.threshold)
            results[i] = r
        return results

    def _regions(self, amap: np.ndarray, threshold: float) -> list[Region]:
        """Connected areas above the threshold, strongest first, numbered 1..n."""
        return label_regions(amap, threshold, self.max_regions)
