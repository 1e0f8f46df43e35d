"""method="contrastive": a projection head that concentrates normal patch features and
disperses augmented virtual outliers (after UniCon-HA).

The head maps each frozen patch feature (a unit vector of D dimensions) through `stages`
blocks; after each block a small linear probe puts it in its own `out` dimensional space.
Training, per stage l:

* **concentration of inliers**: the squared distance of each normal patch's probe output to
  that stage's centre c_l (the mean of the initial outputs, fixed, as Deep SVDD), each patch
  re-weighted by its deviation: w = exp(-d / mean(d)) over the batch, so the normal patches that
  sit far out (rare structures, label noise) pull less than the typical ones (UniCon-HA's
  inlier re-weighting);
* **dispersion of virtual outliers**: augmented copies of the same patches are pushed away from
  c_l with the hypersphere-classifier loss -log(1 - exp(-d)). The augmentation is hierarchical:
  stage 1 sees weak ones (a patch blended a little with a patch from elsewhere, small noise),
  each deeper stage stronger ones (blended more, then replaced by a shuffled patch with noise),
  so the shallow stages learn a tight boundary against near-normal changes and the deep ones
  against gross ones.

A patch's anomaly score is the sum over stages of its squared distance to the centre.
Augmentations act on the features (no extra backbone pass): what they perturb is exactly what
the head sees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StagedHead(nn.Module):
    """`stages` residual MLP blocks of `width`, each followed by a linear probe to `out` dims."""

    centres: torch.Tensor

    def __init__(self, in_dim: int, width: int = 256, out: int = 64, stages: int = 3) -> None:
        super().__init__()
        self.inp = nn.Linear(in_dim, width)
        self.blocks = nn.ModuleList(
            [nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU()) for _ in range(stages)]
        )
        # no bias in the probes: a bias lets every output sit on the centre (Deep SVDD's collapse)
        self.probes = nn.ModuleList([nn.Linear(width, out, bias=False) for _ in range(stages)])
        self.register_buffer("centres", torch.zeros(stages, out))

    def forward(self, x: torch.Tensor, stages: int | None = None) -> list[torch.Tensor]:
        """(n, D) -> one (n, out) tensor per stage (the first `stages` only, when given)."""
        h = self.inp(x)
        outs = []
        for blk, probe in list(zip(self.blocks, self.probes))[:stages]:
            h = h + blk(h)
            outs.append(probe(h))
        return outs

    def distances(self, x: torch.Tensor, stages: int | None = None) -> list[torch.Tensor]:
        """(n, D) -> per stage (n,) squared distance to that stage's centre."""
        return [((z - c) ** 2).sum(dim=1) for z, c in zip(self(x, stages), self.centres)]

    @torch.no_grad()
    def set_centres(self, x: torch.Tensor) -> None:
        """Centres = the mean output of each stage over the normal features `x`, nudged off zero
        (a centre at the origin is reachable by shrinking every weight)."""
        for i, z in enumerate(self(x)):
            c = z.mean(dim=0)
            c[(c.abs() < 0.01) & (c >= 0)] = 0.01
            c[(c.abs() < 0.01) & (c < 0)] = -0.01
            self.centres[i] = c

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> torch.Tensor:
        """(n, D) -> (n,) anomaly score: the sum of the stages' squared distances."""
        return torch.stack(self.distances(x)).sum(dim=0)


#: per stage (weak to strong): the share range of another patch blended in, and the noise's
#: norm relative to the feature's (1): half-and-half blends stay furthest from either patch
STRENGTHS = ((0.1, 0.3, 0.1), (0.3, 0.5, 0.3), (0.4, 0.6, 0.6))


def virtual_outliers(x: torch.Tensor, stage: int, stages: int, g: torch.Generator) -> torch.Tensor:
    """Augmented copies of the unit features `x` (n, D) at the strength of `stage` (0-based):
    each blended with another patch of the batch (a random pairing) and Gaussian noise of a
    given norm, then re-normalised. Deeper stages blend more and add more noise."""
    level = STRENGTHS[min(len(STRENGTHS) - 1, round(stage * (len(STRENGTHS) - 1) / max(1, stages - 1)))]
    lo, hi, noise = level
    n = x.shape[0]
    other = x[torch.randperm(n, generator=g)]
    a = lo + (hi - lo) * torch.rand(n, 1, generator=g)
    y = (1 - a) * x + a * other + noise * F.normalize(torch.randn(x.shape, generator=g), dim=1)
    return F.normalize(y, dim=1)


def contrastive_loss(head: StagedHead, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The training loss of one batch of normal patch features `x` (n, D); see the module doc."""
    stages = len(head.probes)
    total = x.new_zeros(())
    d_in = head.distances(x)
    for s in range(stages):
        d = d_in[s]
        w = torch.exp(-d.detach() / d.detach().mean().clamp_min(1e-6))
        inlier = (w * d).sum() / w.sum()
        d_out = head.distances(virtual_outliers(x, s, stages, g), s + 1)[s]  # stage s needs no deeper one
        outlier = -torch.log(-torch.expm1(-d_out.clamp_min(1e-6))).mean()
        total = total + inlier + outlier
    return total / stages
