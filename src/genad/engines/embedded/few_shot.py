"""Few-shot scoring against a memory bank of normal patches (PatchCore-like).

The bank holds, for each aggregation size r, the patch features of the k normal references
(optionally also of flipped / slightly rotated copies, which helps most at 1-4 shots). When it
grows past `bank_cap` patches per r it is reduced by greedy coreset selection. A patch scores
its distance to the nearest bank patch; the patch score is the mean over r.
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

    def build(self, feats: Sequence[ImageFeatures]) -> MemoryBank:
        rs = sorted(feats[0].by_r)
        self.banks = {}
        for r in rs:
            allf = torch.cat([f.by_r[r] for f in feats], dim=0)
            if allf.shape[0] > self.bank_cap:
                allf = allf[greedy_coreset(allf, self.bank_cap, seed=self.seed)].contiguous()
            self.banks[r] = allf
        return self

    @property
    def size(self) -> int:
        return 0 if not self.banks else int(next(iter(self.banks.values())).shape[0])

    def score(self, f: ImageFeatures) -> np.ndarray:
        """Patch scores (h, w) of one image."""
        total = torch.zeros(f.grid[0] * f.grid[1])
        for r, bank in self.banks.items():
            d = nn_distance_unit(f.by_r[r], bank)
            total += d / len(self.banks)
        return total.reshape(f.grid).numpy()
