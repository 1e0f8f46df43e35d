"""method="mae": a memory-augmented masked autoencoder of patch features (after MemMC-MAE).

Tokens are an image's frozen patch features (unit vectors of D dimensions on an h x w grid,
see genad.engines.embedded.features). Most of them are masked; a small transformer encodes the
visible ones, a decoder fills in the masked ones, and the loss is the cosine distance between
each masked token's prediction and its true feature. Every attention layer (encoder and
decoder) attends over the tokens *and* a learned memory of `memory` slots (MemMC-MAE's
memory-augmented self-attention): what the model can write into a masked position is built
from the visible context and from prototypes it learned on normal images, so a defect, which
neither predicts, is reconstructed badly. A patch's anomaly score is its reconstruction error
(1 - cosine), averaged over `passes` deterministic masks in which each patch is masked in
all but one (so every patch is predicted from several different contexts).

Positions are 2-D sine-cosine embeddings of each token's *relative* place in its image
(row / h, col / w), so a crop of the grid (training) and the whole grid (scoring) share one
code, and images of other sizes (brain slices from 150 to 1900 px) line up by anatomy.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def positions(rows: torch.Tensor, cols: torch.Tensor, grid: tuple[int, int], width: int) -> torch.Tensor:
    """(n,) row and column indices on an h x w grid -> (n, width) sine-cosine codes of their
    relative position (row + 0.5) / h, (col + 0.5) / w."""
    h, w = grid
    quarter = width // 4
    freqs = torch.exp(torch.arange(quarter, dtype=torch.float32) * (-math.log(64.0) / max(1, quarter)))
    y = ((rows.float() + 0.5) / h * 2 * math.pi)[:, None] * freqs[None, :] * 8
    x = ((cols.float() + 0.5) / w * 2 * math.pi)[:, None] * freqs[None, :] * 8
    code = torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=1)
    if code.shape[1] < width:
        code = F.pad(code, (0, width - code.shape[1]))
    return code


class MemoryBlock(nn.Module):
    """Pre-norm transformer block whose attention keys and values are the tokens followed by a
    learned memory of `slots` prototypes (memory-augmented self-attention)."""

    def __init__(self, width: int, heads: int, slots: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.memory = nn.Parameter(torch.randn(slots, width) * 0.02) if slots > 0 else None
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.norm1(x)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        if self.memory is not None:
            _, mk, mv = self.qkv(self.memory).chunk(3, dim=-1)
            k = torch.cat([k, mk.expand(b, -1, -1)], dim=1)
            v = torch.cat([v, mv.expand(b, -1, -1)], dim=1)
        hd = c // self.heads
        q = q.reshape(b, n, self.heads, hd).transpose(1, 2)
        k = k.reshape(b, k.shape[1], self.heads, hd).transpose(1, 2)
        v = v.reshape(b, v.shape[1], self.heads, hd).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.norm2(x))


class MemoryMAE(nn.Module):
    """Encoder on the visible tokens, decoder on all of them, both memory-augmented."""

    def __init__(
        self,
        in_dim: int,
        width: int = 128,
        depth: int = 2,
        decoder_depth: int = 2,
        heads: int = 4,
        memory: int = 64,
    ) -> None:
        super().__init__()
        self.width = width
        self.embed = nn.Linear(in_dim, width)
        self.encoder = nn.ModuleList([MemoryBlock(width, heads, memory) for _ in range(depth)])
        self.enc_norm = nn.LayerNorm(width)
        self.mask_token = nn.Parameter(torch.zeros(width))
        self.decoder = nn.ModuleList([MemoryBlock(width, heads, memory) for _ in range(decoder_depth)])
        self.dec_norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, in_dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, visible: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """x (B, n, D) tokens, pos (B, n, width) their position codes, visible (B, nv) and
        masked (B, nm) indices into n -> predictions (B, nm, D) for the masked tokens."""
        b = x.shape[0]
        ar = torch.arange(b)[:, None]
        z = self.embed(x[ar, visible]) + pos[ar, visible]
        for blk in self.encoder:
            z = blk(z)
        z = self.enc_norm(z)
        n = x.shape[1]
        full = self.mask_token.expand(b, n, -1).clone()
        full[ar, visible] = z
        full = full + pos
        for blk in self.decoder:
            full = blk(full)
        return self.head(self.dec_norm(full[ar, masked]))


def cosine_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity along the last dimension."""
    return 1.0 - F.cosine_similarity(pred, target, dim=-1)


def random_split(n: int, n_visible: int, g: torch.Generator, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(visible (B, nv), masked (B, n - nv)) indices: a random permutation per row."""
    perm = torch.argsort(torch.rand(batch, n, generator=g), dim=1)
    return perm[:, :n_visible], perm[:, n_visible:]


def n_visible(n: int, mask_ratio: float) -> int:
    return min(n - 1, max(1, int(round(n * (1.0 - mask_ratio)))))


@torch.no_grad()
def patch_errors(
    model: MemoryMAE,
    tokens: torch.Tensor,
    grid: tuple[int, int],
    mask_ratio: float,
    passes: int,
    seed: int,
) -> torch.Tensor:
    """(n,) reconstruction error of each token of one image: its mean cosine error over the
    passes in which it is masked. The masks are fixed by `seed` (the same image scores the
    same every time): the tokens are shuffled once and cut into `passes` groups; pass k shows
    a random `1 - mask_ratio` share of the tokens drawn from outside group k, so that every
    token is predicted at least once."""
    n = tokens.shape[0]
    h, w = grid
    idx = torch.arange(n)
    pos = positions(idx // w, idx % w, grid, model.width)[None]
    g = torch.Generator().manual_seed(seed)
    nv = n_visible(n, mask_ratio)
    total = torch.zeros(n)
    count = torch.zeros(n)
    order = torch.randperm(n, generator=g)
    groups = order.chunk(max(1, passes))
    for grp in groups:
        hidden = torch.zeros(n, dtype=torch.bool)
        hidden[grp] = True
        rest = idx[~hidden]
        rest = rest[torch.randperm(rest.numel(), generator=g)]
        vis = rest[: min(nv, rest.numel())]
        msk = torch.ones(n, dtype=torch.bool)
        msk[vis] = False
        masked = idx[msk]
        pred = model(tokens[None], pos, vis[None], masked[None])[0]
        err = cosine_error(pred, tokens[masked])
        total[masked] += err
        count[masked] += 1
    return total / count.clamp_min(1)
