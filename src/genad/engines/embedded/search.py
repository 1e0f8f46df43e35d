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


#: greedy_coreset: points whose distances are kept exact at each step (see there)
CORESET_CANDIDATES = 1024
#: greedy_coreset: floats per distance block when bounds are refreshed (2 Mi floats = 8 MB)
CORESET_BLOCK_FLOATS = 1 << 21


def greedy_coreset(
    features: torch.Tensor,
    size: int,
    proj_dim: int = 128,
    seed: int = 0,
    candidates: int = CORESET_CANDIDATES,
    block_floats: int = CORESET_BLOCK_FLOATS,
) -> torch.Tensor:
    """Indices of `size` distinct rows chosen by greedy k-center (farthest point) selection, as
    PatchCore.

    Distances are computed on a random projection to `proj_dim` dimensions (Johnson-Lindenstrauss;
    the caller keeps the full features). The first point is random (seeded); every next one is
    the row farthest from all chosen so far, so outlying (rare but normal) patches are kept.

    The plain loop costs one pass over all n rows per chosen row (n = 200k, size = 16k: about 20
    minutes on 2 cores, memory bound). This one gives the same selection (up to ties and float
    rounding) far faster, in two ways:

    * lazy bounds: each row keeps an upper bound of its squared distance to the chosen set, exact
      against the rows chosen before its last refresh. Only rows whose bound is among the largest
      are ever refreshed (one matrix product against the rows chosen since, in blocks of at most
      `block_floats` floats), and most rows drop far below the frontier early;
    * blocks of picks: once the `candidates` rows with the largest bounds are exact, the next
      picks are made among them alone (a candidates x proj_dim update each) for as long as the
      best of them stays at or above the largest bound outside, so it is the true farthest row.

    Deterministic for a given seed, input and thread count.
    """
    n, d = features.shape
    if size >= n:
        return torch.arange(n)
    if size <= 0:
        return torch.zeros(0, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    x = features.float()
    if d > proj_dim:
        p = torch.randn(d, proj_dim, generator=g) / proj_dim**0.5
        x = x @ p
    x = x.contiguous()
    start = int(torch.randint(n, (1,), generator=g))
    xn = (x * x).sum(1)
    chosen = torch.empty(size, dtype=torch.long)
    chosen[0] = start
    cx = torch.empty(size, x.shape[1])  # the chosen rows, contiguous (no gather per refresh)
    cxn = torch.empty(size)
    cx[0], cxn[0] = x[start], xn[start]
    k = 1
    # bound[i] >= squared distance of row i to the chosen set, exact against chosen[:fresh[i]];
    # chosen rows hold -1 so that they are never picked again (duplicate rows can be picked)
    bound = torch.addmv(xn + xn[start], x, x[start], alpha=-2.0).clamp_min_(0)
    bound[start] = -1.0
    fresh = torch.ones(n, dtype=torch.long)
    t = max(1, min(candidates, n - 1))
    pool = min(n, 2 * t)
    while k < size:
        # make the t largest bounds exact: refresh stale rows among the 2t largest, repeat
        while True:
            vals, cand = torch.topk(bound, t + 1)
            if bool((fresh[cand[:t]] == k).all()):
                break
            _, top = torch.topk(bound, pool, sorted=False)
            top = torch.cat([cand[:t], top])  # (ties may leave a candidate out of `top`)
            stale = torch.unique(top[fresh[top] < k])
            since = fresh[stale]
            for f0 in torch.unique(since).tolist():
                rows = stale[since == f0]
                step = max(1, block_floats // rows.numel())
                xr, xrn = x[rows], xn[rows, None]
                best = bound[rows]
                for c0 in range(f0, k, step):
                    c1 = min(k, c0 + step)
                    d2 = torch.addmm(cxn[None, c0:c1], xr, cx[c0:c1].T, alpha=-2.0).add_(xrn)
                    best = torch.minimum(best, d2.amin(1).clamp_min_(0))
                bound[rows] = best
            fresh[stale] = k
        # pick among the t candidates while the best of them beats every bound outside
        outside = float(vals[t])
        c = cand[:t]
        cv = vals[:t].clone()
        xc, xcn = x[c], xn[c]
        while k < size:
            j = int(torch.argmax(cv))
            if float(cv[j]) < max(outside, 0.0):  # (chosen rows hold -1)
                break
            i = int(c[j])
            chosen[k] = i
            cx[k], cxn[k] = x[i], xn[i]
            k += 1
            torch.minimum(cv, torch.addmv(xcn + xn[i], xc, x[i], alpha=-2.0).clamp_min_(0), out=cv)
            cv[j] = -1.0
        bound[c] = cv
        fresh[c] = k
    return chosen


def coverage_radius(features: torch.Tensor, chosen: torch.Tensor) -> float:
    """k-center radius: the largest distance from a row of `features` to its nearest chosen row."""
    return float(nn_distance(features, features[chosen])[0].max())
