"""Group lasso (Yuan & Lin 2006; Scardapane et al. 2017; SSL, Wen et al. 2016).

    R_GL(W) = sum_g c_g * ||w_g||_2,   c_g = sqrt(|g|) if sqrt_weighting else 1

with groups given by `structure` (see `_groups.py`): `out` (neurons / filters), `in`
(input units / channels, Scardapane and paper A), `shape` and `layer` (SSL).
Scardapane and paper A weight by sqrt(|g|); SSL does not.

Proximal option (documented choice, off by default): after each optimizer step apply
group soft-thresholding w_g <- w_g * max(0, 1 - lr * strength * c_g / ||w_g||), the exact
proximal operator of lr * strength * R_GL, so dead groups reach exact zeros instead of
oscillating around zero under the subgradient.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from sparsenet.regularizers._groups import check_structure, group_matrix
from sparsenet.regularizers.base import Regularizer


class GroupLasso(Regularizer):
    def __init__(
        self,
        strength: float = 1e-4,
        structure: str = "out",
        sqrt_weighting: bool = True,
        proximal: bool = False,
        layers: Mapping[str, float | None] | None = None,
    ) -> None:
        super().__init__(strength=strength, layers=layers)
        self.structure = check_structure(structure)
        self.sqrt_weighting = bool(sqrt_weighting)
        self.proximal = bool(proximal)

    def targets(self, model: nn.Module):
        targets = super().targets(model)
        if self.structure == "shape":  # filter shapes exist only for convolutions
            targets = [t for t in targets if isinstance(t[1], nn.Conv2d)]
        return targets

    def _group_weight(self, rows: torch.Tensor) -> float:
        return math.sqrt(rows.shape[1]) if self.sqrt_weighting else 1.0

    def layer_penalty(self, weight: torch.Tensor) -> torch.Tensor:
        rows = group_matrix(weight, self.structure)
        return self._group_weight(rows) * torch.linalg.vector_norm(rows, ord=2, dim=1).sum()

    def penalty(self, model: nn.Module) -> torch.Tensor:
        # Bypass the proximal case: the smooth part of the loss then carries no R_GL term.
        if self.proximal:
            return torch.zeros(())
        return super().penalty(model)

    @torch.no_grad()
    def after_step(self, model: nn.Module, lr: float) -> None:
        if not (self.proximal and self.active):
            return
        for _, module, scale in self.targets(model):
            rows = group_matrix(module.weight, self.structure)
            tau = lr * self.strength * scale * self._group_weight(rows)
            norms = torch.linalg.vector_norm(rows, ord=2, dim=1, keepdim=True)
            shrink = torch.clamp(1 - tau / norms.clamp_min(1e-12), min=0.0)
            shrunk = rows * shrink
            # write back through the same view layout
            if self.structure == "in":
                module.weight.copy_(
                    shrunk.reshape(
                        module.weight.shape[1], module.weight.shape[0], *module.weight.shape[2:]
                    ).transpose(0, 1)
                )
            elif self.structure == "shape":
                module.weight.copy_(shrunk.t().reshape(module.weight.shape))
            else:
                module.weight.copy_(shrunk.reshape(module.weight.shape))

    def describe(self) -> dict:
        return {
            **super().describe(),
            "structure": self.structure,
            "sqrt_weighting": self.sqrt_weighting,
            "proximal": self.proximal,
        }
