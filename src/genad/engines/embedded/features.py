"""Multi-layer patch features with neighbourhood aggregation (MuSc's LNAMD).

Each image becomes, for every aggregation size r, a (h*w, D) matrix of unit vectors: the
backbone's layers are upsampled to the finest grid and concatenated, optionally projected to
fewer dimensions (`project`), then averaged over r x r neighbourhoods (r = 1 keeps single
patches; larger r see wider context, which catches larger defects and tolerates
misalignment), then L2-normalised again.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from genad.engines.embedded.backbones import Backbone, combine_layers
from genad.engines.embedded.geometry import batch_scale, resize_image, work_size


@dataclass
class ImageFeatures:
    """Patch features of one image."""

    orig: tuple[int, int]  # input H, W
    work: tuple[int, int]  # H, W the backbone saw
    grid: tuple[int, int]  # h, w of the patch grid
    by_r: dict[int, torch.Tensor]  # r -> (h*w, D) float32, rows unit length
    global_vec: torch.Tensor  # (D,) unit length: the image's mean feature, for image neighbours


def aggregate(fmap: torch.Tensor, r: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, h*w, C): r x r local mean (edges use the valid part), unit rows."""
    if r > 1:
        fmap = F.avg_pool2d(fmap, kernel_size=r, stride=1, padding=r // 2, count_include_pad=False)
    b, c = fmap.shape[:2]
    return F.normalize(fmap.reshape(b, c, -1).transpose(1, 2), dim=-1).contiguous()


@functools.lru_cache(maxsize=8)
def projection(channels: int, dims: int) -> torch.Tensor:
    """A fixed random orthonormal (channels, dims) matrix (seed 0, so features never depend on the
    detector's seed). Distances between unit vectors survive a random projection nearly intact
    (Johnson-Lindenstrauss), while every distance then costs dims instead of channels."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(channels, dims, generator=g))
    return q.contiguous()


def project(fmap: torch.Tensor, dims: int | None) -> torch.Tensor:
    """(B, C, h, w) -> (B, dims, h, w) when C > dims; unchanged otherwise or when dims is None."""
    c = fmap.shape[1]
    if dims is None or c <= dims:
        return fmap
    return torch.einsum("bchw,cd->bdhw", fmap, projection(c, dims)).contiguous()


def extract(
    backbone: Backbone,
    loaders: Sequence[Callable[[], np.ndarray]],
    shapes: Sequence[tuple[int, int]],
    resolution: int,
    rs: Sequence[int] = (1, 3, 5),
    batch_size: int = 8,
    scale: float | None = None,
    dims: int | None = None,
) -> Iterator[tuple[int, ImageFeatures | Exception]]:
    """Features of each image, yielded as (index, features) in an order that batches images of
    the same working size together (on CPU the backbone forward is most of the time).

    `loaders[i]()` returns image i (uint8 HxWx3) and `shapes[i]` is its (H, W); `scale` is the
    resize factor (default: `batch_scale` of these shapes); `dims` projects wider features to
    that many dimensions (see `project`). Images are read
    one batch at a time so that memory does not grow with the number of images. A loader that
    raises yields (index, exception) and the rest go on.
    """
    if scale is None:
        scale = batch_scale(shapes, resolution)
    sizes = [work_size(h, w, scale, backbone.multiple, resolution) for h, w in shapes]
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, s in enumerate(sizes):
        groups[s].append(i)
    for size, idx in groups.items():
        for k in range(0, len(idx), batch_size):
            chunk, arrays = [], []
            for i in idx[k : k + batch_size]:
                try:
                    im = loaders[i]()
                except Exception as e:
                    yield i, e
                    continue
                chunk.append(i)
                arrays.append((im.shape[0], im.shape[1], resize_image(im, size)))
            if not chunk:
                continue
            fmap = project(combine_layers(backbone(np.stack([a[2] for a in arrays]))), dims)
            gvec = F.normalize(fmap.mean(dim=(2, 3)), dim=-1)
            per_r = {r: aggregate(fmap, r) for r in rs}
            grid = (int(fmap.shape[2]), int(fmap.shape[3]))
            for j, i in enumerate(chunk):
                yield (
                    i,
                    ImageFeatures(
                        orig=(int(arrays[j][0]), int(arrays[j][1])),
                        work=size,
                        grid=grid,
                        by_r={r: per_r[r][j].clone() for r in rs},
                        global_vec=gvec[j].clone(),
                    ),
                )


def augment(image: np.ndarray, kinds: Sequence[str]) -> list[np.ndarray]:
    """Label-preserving variants of a normal reference: 'hflip', 'vflip', 'rot90', 'rot±k' (small
    rotations in degrees, edges filled by reflection so that no black corners appear)."""
    from scipy.ndimage import rotate

    outs = []
    for kind in kinds:
        if kind == "hflip":
            outs.append(image[:, ::-1].copy())
        elif kind == "vflip":
            outs.append(image[::-1].copy())
        elif kind == "rot90":
            outs.append(np.rot90(image).copy())
        elif kind.startswith("rot"):
            deg = float(kind[3:])
            outs.append(rotate(image, deg, axes=(1, 0), reshape=False, order=1, mode="reflect"))
        else:
            from genad.errors import GenadError

            raise GenadError(f"unknown augmentation {kind!r}: use hflip, vflip, rot90 or rot<degrees>")
    return outs
