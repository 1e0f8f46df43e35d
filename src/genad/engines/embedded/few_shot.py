"""Few-shot scoring against a memory bank of normal patches (PatchCore-like).

The bank holds, for each aggregation size r, the patch features of the k normal references
(optionally also of flipped / slightly rotated copies, which helps most at 1-4 shots). When it
grows past `bank_cap` patches per r it is reduced by greedy coreset selection. A patch scores
its distance to the nearest bank patch; the patch score is the mean over r.

Each bank row remembers which reference it came from (`sources`), so that a reference can be
scored against the bank without its own patches (leave-one-out by masking: one bank, one
coreset, instead of one bank per held-out reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from genad.engines.embedded.features import ImageFeatures
from genad.engines.embedded.search import greedy_coreset, nn_distance_unit


@dataclass
class MemoryBank:
    bank_cap: int = 16384
    seed: int = 0
    banks: dict[int, torch.Tensor] = field(default_factory=dict)
    #: r -> (rows,) int32: the reference each bank row came from (empty: not recorded)
    sources: dict[int, torch.Tensor] = field(default_factory=dict)

    def build(self, feats: Sequence[ImageFeatures], sources: Sequence[int] | None = None) -> MemoryBank:
        """Bank of `feats`; `sources[i]` names the reference feats[i] came from (default: i; an
        augmented view carries its original's number)."""
        if sources is None:
            sources = range(len(feats))
        if len(sources) != len(feats):
            raise ValueError(f"{len(sources)} sources for {len(feats)} feature sets")
        rs = sorted(feats[0].by_r)
        self.banks, self.sources = {}, {}
        for r in rs:
            allf = torch.cat([f.by_r[r] for f in feats], dim=0)
            src = torch.cat(
                [torch.full((f.by_r[r].shape[0],), int(s), dtype=torch.int32) for f, s in zip(feats, sources)]
            )
            if allf.shape[0] > self.bank_cap:
                keep = greedy_coreset(allf, self.bank_cap, seed=self.seed)
                allf, src = allf[keep].contiguous(), src[keep].contiguous()
            self.banks[r] = allf
            self.sources[r] = src
        return self

    @property
    def size(self) -> int:
        return 0 if not self.banks else int(next(iter(self.banks.values())).shape[0])

    def score(self, f: ImageFeatures, exclude: int | None = None) -> np.ndarray:
        """Patch scores (h, w) of one image; `exclude`: leave out the rows of that reference."""
        total = torch.zeros(f.grid[0] * f.grid[1])
        for r, bank in self.banks.items():
            if exclude is not None:
                src = self.sources.get(r)
                if src is None or src.shape[0] != bank.shape[0]:
                    raise ValueError("this memory bank does not record where its rows came from")
                bank = bank[src != exclude]
                if bank.shape[0] == 0:
                    raise ValueError(f"nothing left in the memory bank without reference {exclude}")
            d = nn_distance_unit(f.by_r[r], bank)
            total += d / len(self.banks)
        return total.reshape(f.grid).numpy()
