"""Zero-shot scoring of an unlabeled batch by mutual scoring (after MuSc, Li et al. ICLR 2024).

Most of any batch is normal, and normal patches find close matches in other images while
anomalous ones do not. For each aggregation size r and each image i:
  1. for every other image j (or a random subset of `max_refs` of them when the batch is large),
     m_ij(p) = distance from patch p of i to its nearest patch in j;
  2. score_i(p) = mean of the smallest `fraction` of the m_ij(p) over j: a defect type repeated
     in a few images finds matches in those few, yet stays far from the majority (MSM);
the patch score is the mean over r. Each pair's similarity block is computed once and read
both ways (row max for i against j, column max for j against i), halving the work.

Image scores are then refined by their neighbours in global-feature space (RsCIN-like):
s'_i = (1 - w) s_i + w * mean(s_j over the k nearest images j).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from genad.engines.embedded.features import ImageFeatures
from genad.ops import check_min_batch


def _pairs(n: int, max_refs: int | None, seed: int) -> list[list[int]]:
    """partners[i] = images j > i compared with i (each pair once, used both ways)."""
    partners: list[set[int]] = [set() for _ in range(n)]
    if max_refs is None or n - 1 <= max_refs:
        return [list(range(i + 1, n)) for i in range(n)]
    rng = np.random.default_rng(seed)
    # Each image draws max_refs/2 partners; a pair counts for both sides, so every image ends up
    # with about max_refs references (at least max_refs/2).
    per = max(1, math.ceil(max_refs / 2))
    for i in range(n):
        others = rng.choice(n - 1, size=per, replace=False)
        for j in others:
            j = int(j) + (1 if j >= i else 0)
            a, b = min(i, j), max(i, j)
            partners[a].add(b)
    return [sorted(p) for p in partners]


def mutual_scores(
    feats: Sequence[ImageFeatures],
    fraction: float = 0.3,
    max_refs: int | None = 64,
    seed: int = 0,
    block_floats: int = 1 << 25,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[np.ndarray]:
    """Patch scores (h, w) per image, higher = more anomalous (mean Euclidean distance)."""
    n = len(feats)
    check_min_batch(n, "images")
    rs = sorted(feats[0].by_r)
    # Work in order of patch count, so that a chunk of consecutive partners pads to about the
    # same length (magnetic-tile-like batches mix many image sizes).
    sizes0 = [f.by_r[rs[0]].shape[0] for f in feats]
    order = sorted(range(n), key=lambda i: sizes0[i])
    fs = [feats[i] for i in order]
    partners = _pairs(n, max_refs, seed)
    n_refs = [0] * n
    for i, ps in enumerate(partners):
        n_refs[i] += len(ps)
        for j in ps:
            n_refs[j] += 1
    sizes = [sizes0[i] for i in order]
    pmax = max(sizes)
    out = [torch.zeros(s) for s in sizes]
    steps, done = len(rs) * n, 0
    for r in rs:
        d = fs[0].by_r[r].shape[1]
        # Padded (n, pmax, D+1). The extra coordinate is 1 on queries, 0 on real patches and -4
        # on padding, so padding scores a similarity of -4 and never wins a max (cosines >= -1).
        x = torch.zeros(n, pmax, d + 1)
        for i, f in enumerate(fs):
            x[i, : sizes[i], :d] = f.by_r[r]
            x[i, sizes[i] :, d] = -4.0
        # Max cosine similarity of each patch of i to image j: dist = sqrt(2 - 2 sim) (unit rows).
        sims = [torch.empty(sizes[i], n_refs[i]) for i in range(n)]
        filled = [0] * n
        for i in range(n):
            q = x[i, : sizes[i]].clone()
            q[:, d] = 1.0
            ps = partners[i]
            c0 = 0
            while c0 < len(ps):
                # Partners are sorted by size: grow the chunk while it fits the block.
                pc = sizes[ps[min(len(ps) - 1, c0)]]
                step = max(1, block_floats // (sizes[i] * max(pc, 1)))
                js = ps[c0 : c0 + step]
                pc = sizes[js[-1]]
                s = (q @ x[js, :pc].reshape(-1, d + 1).T).reshape(q.shape[0], len(js), pc)
                row = s.amax(dim=2)  # (Pi, c): i against each j
                col = s.amax(dim=0)  # (c, pc): each j against i
                k = row.shape[1]
                sims[i][:, filled[i] : filled[i] + k] = row
                filled[i] += k
                for t, j in enumerate(js):
                    sims[j][:, filled[j]] = col[t, : sizes[j]]
                    filled[j] += 1
                c0 += len(js)
            done += 1
            if on_progress is not None:
                on_progress(done, steps)
        for i in range(n):
            dist = (2.0 - 2.0 * sims[i]).clamp_min_(0).sqrt_()
            k = max(1, int(round(fraction * dist.shape[1])))
            low = dist.topk(k, dim=1, largest=False).values
            out[i] += low.mean(dim=1) / len(rs)
        del x, sims
    result: list[np.ndarray] = [np.zeros(0)] * n
    for pos, i in enumerate(order):
        result[i] = out[pos].reshape(feats[i].grid).numpy()
    return result


def neighbour_smooth(scores: np.ndarray, global_vecs: torch.Tensor, k: int = 5, weight: float = 0.5) -> np.ndarray:
    """RsCIN-like refinement: blend each image score with the mean score of its k most similar
    images (cosine of global features). Similar images should get similar verdicts, which damps
    one-off noise from a single odd patch."""
    n = len(scores)
    if n < 2 or k <= 0 or weight <= 0:
        return scores
    k = min(k, n - 1)
    g = torch.nn.functional.normalize(global_vecs, dim=1)
    sim = g @ g.T
    sim.fill_diagonal_(-float("inf"))
    nb = sim.topk(k, dim=1).indices.numpy()
    s = np.asarray(scores, dtype=np.float64)
    return (1.0 - weight) * s + weight * s[nb].mean(axis=1)
