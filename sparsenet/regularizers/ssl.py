"""Structured Sparsity Learning (Wen, Wu, Wang, Chen & Li, NeurIPS 2016).

    E(W) = E_D(W) + lambda * R(W) + sum_t lambda_t * sum_l sum_{g in t(W_l)} ||w_g||_2

with no sqrt(|g|) factor [known], one strength per group type t [known]:
  type      groups                      layers
  filter    `out`:   W[o, :, :, :]      Conv2d
  channel   `in`:    W[:, c, :, :]      Conv2d
  shape     `shape`: W[:, c, y, x]      Conv2d
  depth     `layer`: W                  Conv2d and Linear
  neuron    `in` (or `out`) rows of a Linear weight    Linear
Here lambda_t = strength * group_types[t]; a type with 0 is off. `lambda * R(W)` is the
optimizer's weight decay (or compose with `l2`).
[choice] `neuron` groups default to the unit's outgoing weights (`in`, the columns of a
Linear weight), the grouping that matches SSL's LeNet-300-100 counts (434-174-78 are the
input units left in each fc layer); `neuron_structure: out` uses incoming weights instead.
[choice] filter/channel/shape groups are for convolutions only and neuron groups for Linear
layers only, as in the paper's use of them.

[known] After every update, weights with |w| < 1e-4 are set to zero (`zero_threshold`,
0 disables). [choice] The zeroing applies to the layers SSL regularizes (`layers` map).
[not done here] SSL then fine-tunes with the zero groups frozen; the pipeline's fine-tune
stage does not freeze weights (see the report of this change).

Proximal option ([choice], off by default): group soft-thresholding by
lr * lambda_t * m_l, one group type after another in the order of the table. Exact for a
single group type; for overlapping types (filter and channel share weights) it is the usual
sequential approximation of the proximal operator of their sum.
Cost-aware weights (`cost`, base.py): each group is multiplied by the cost factor of its
structure: filter and `out` neuron groups their unit's, channel and `in` neuron groups the
producing unit's, shape groups their kernel position's, depth groups their layer's; the
factors are normalised per structure, so each group type keeps its strength's scale.
Method and sources: docs/methods.md#ssl, docs/methods.md#cost-aware-weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from sparsenet.config.checks import Choice, Number
from sparsenet.regularizers._groups import (
    group_matrix,
    group_penalty,
    group_soft_threshold,
    ungroup,
)
from sparsenet.regularizers.base import Regularizer

GROUP_TYPES = ("filter", "channel", "shape", "depth", "neuron")
_CONV_STRUCTURE = {"filter": "out", "channel": "in", "shape": "shape", "depth": "layer"}


class SSL(Regularizer):
    cost_aware = True

    def __init__(
        self,
        strength: float = 3e-3,
        group_types: Mapping[str, float] | None = None,
        neuron_structure: str = "in",
        zero_threshold: float = 1e-4,
        proximal: bool = False,
        layers: Mapping[str, float | None] | None = None,
        cost: str | None = None,
    ) -> None:
        super().__init__(strength=strength, layers=layers, proximal=proximal, cost=cost)
        given = dict(group_types if group_types is not None else {"filter": 1.0, "channel": 1.0})
        for name in given:
            Choice(GROUP_TYPES)("group_types", name)
        self.group_types = {
            name: Number(low=0)(f"group_types.{name}", given.get(name, 0.0)) for name in GROUP_TYPES
        }
        self.neuron_structure = Choice(("in", "out"))("neuron_structure", neuron_structure)
        self.zero_threshold = Number(low=0)("zero_threshold", zero_threshold or 0.0)

    def _structures(self, conv: bool) -> list[tuple[str, float]]:
        """(structure, lambda_t / strength) of the active group types of a layer."""
        if conv:
            types = [(_CONV_STRUCTURE[t], t) for t in ("filter", "channel", "shape", "depth")]
        else:
            types = [(self.neuron_structure, "neuron"), ("layer", "depth")]
        return [(s, self.group_types[t]) for s, t in types if self.group_types[t] > 0]

    def applies_to(self, module: nn.Module) -> bool:
        return bool(self._structures(isinstance(module, nn.Conv2d)))

    def cost_structures(self, module: nn.Module) -> tuple[str, ...]:
        return tuple(s for s, _ in self._structures(isinstance(module, nn.Conv2d)))

    def _coefficients(self, weight: torch.Tensor, cost) -> list[tuple[str, float | torch.Tensor]]:
        """(structure, lambda_t / strength, times the groups' cost factors with `cost`)."""
        types = self._structures(weight.dim() == 4)
        return types if cost is None else [(s, lam * cost[s]) for s, lam in types]

    def layer_penalty(self, weight: torch.Tensor, cost=None) -> torch.Tensor:
        terms = [group_penalty(weight, s, lam) for s, lam in self._coefficients(weight, cost)]
        return torch.stack(terms).sum() if terms else weight.new_zeros(())

    def layer_prox(self, weight: torch.Tensor, tau: float, cost=None) -> torch.Tensor:
        for s, lam in self._coefficients(weight, cost):
            if isinstance(lam, torch.Tensor):
                lam = lam.reshape(-1, 1)  # one threshold per row of the group matrix
            weight = ungroup(
                group_soft_threshold(group_matrix(weight, s), tau * lam), weight.shape, s
            )
        return weight

    def zero_small_(self, weight: torch.Tensor) -> None:
        if self.zero_threshold > 0:  # hardshrink: w if |w| > t else 0 (|w| = t: measure zero)
            weight.copy_(F.hardshrink(weight, self.zero_threshold))

    @torch.no_grad()
    def after_step(self, model: nn.Module, lr: float) -> None:
        if not self.active:
            return
        super().after_step(model, lr)  # the proximal step, if on
        for _, module, _ in self.targets(model):
            self.zero_small_(module.weight)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "group_types": dict(self.group_types),
            "neuron_structure": self.neuron_structure,
            "zero_threshold": self.zero_threshold,
        }
