"""Chunked nearest-neighbour search: never a full query x bank distance matrix in memory."""

from __future__ import annotations

import torch

#: floats per distance block (64 Mi floats = 256 MB)
BLOCK_FLOATS = 1 << 26


def nn_distance(
    query: torch.Tensor, bank: torch.Tensor, block_floats: int = BLOCK_FLOATS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance from each query row to its nearest bank row, and that row's index.

    query (n, D), bank (m, D) float32. Uses |q|^2 + |b|^2 - 2 q.b on blocks of the bank so that
    memory stays at about `block_floats` floats whatever n and m are.
    """
    n, m = query.shape[0], bank.shape[0]
    qn = (query * query).sum(1, keepdim=True)
    best = torch.full((n,), float("inf"))
    arg = torch.zeros(n, dtype=torch.long)
    qstep = max(1, min(n, block_floats // max(1, min(m, 8192))))
    bstep = max(1, block_floats // max(1, min(n, qstep)))
    for q0 in range(0, n, qstep):
        q = query[q0 : q0 + qstep]
        for b0 in range(0, m, bstep):
            b = bank[b0 : b0 + bstep]
            d2 = torch.addmm((b * b).sum(1)[None, :], q, b.T, alpha=-2.0).add_(qn[q0 : q0 + qstep])
            v, i = d2.min(dim=1)
            sl = slice(q0, q0 + q.shape[0])
            better = v < best[sl]
            best[sl] = torch.where(better, v, best[sl])
            arg[sl] = torch.where(better, i + b0, arg[sl])
    return best.clamp_min_(0).sqrt_(), arg


def nn_distance_unit(query: torch.Tensor, bank: torch.Tensor, block_floats: int = BLOCK_FLOATS) -> torch.Tensor:
    """`nn_distance` for unit-length rows: sqrt(2 - 2 max cosine), one matmul per bank block."""
    n, m = query.shape[0], bank.shape[0]
    best = torch.full((n,), -2.0)
    step = max(1, block_floats // max(1, n))
    for b0 in range(0, m, step):
        torch.maximum(best, (query @ bank[b0 : b0 + step].T).amax(dim=1), out=best)
    return (2.0 - 2.0 * best).clamp_min_(0).sqrt_()


def greedy_coreset(features: torch.Tensor, size: int, proj_dim: int = 128, seed: int = 0) -> torch.Tensor:
    """Indices of `size` rows chosen by greedy k-center (farthest point) selection, as PatchCore.

    Distances are computed on a random projection to `proj_dim` dimensions (Johnson-Lindenstrauss)
    to keep the O(size * n) loop cheap. The first point is random (seeded); every next one is the
    row farthest from all chosen so far, so outlying (rare but normal) patches are kept.
    """
    n, d = features.shape
    if size >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    x = features
    if d > proj_dim:
        p = torch.randn(d, proj_dim, generator=g) / proj_dim**0.5
        x = features @ p
    start = int(torch.randint(n, (1,), generator=g))
    chosen = torch.empty(size, dtype=torch.long)
    chosen[0] = start
    mind = ((x - x[start]) ** 2).sum(1)
    for k in range(1, size):
        i = int(torch.argmax(mind))
        chosen[k] = i
        mind = torch.minimum(mind, ((x - x[i]) ** 2).sum(1))
    return chosen
