"""The `coupled` group structure: one regularizer group per prunable unit of the network.

The groups are the pruner's unit groups (`sparsenet.pruning.groups`, where a unit and its
norm are defined): a unit's incoming rows, its consumers' input columns and its residual
partners' rows, and, only with `include_batchnorm`, its BatchNorm weight and bias entries.
So what is regularized is exactly what pruning can remove. This module only adds what the
regularizer needs on top: the layer multipliers m_l of the root layer (a root with multiplier
`null` or 0 contributes no groups) and the choice of slice kinds. Per group g (one unit):
    ||w_g||^2 = sum over slices s of g of ||s||^2,   ||w_g|| = sqrt(.) (0 for an all-zero g)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from sparsenet.pruning.groups import KINDS, SliceIndex, unit_groups


class CoupledGroups(SliceIndex):
    """Index tensors of the coupled groups of one model (rebuilt by `bind` after pruning):
    `norms()`, `squared_norms()`, `scale_(factors)`, `sizes` (|g|), `scales` (m_l of each
    group's root layer) and `roots` ((root layer, first group id, units) per unit group)."""

    def __init__(
        self,
        model: nn.Module,
        example_input: torch.Tensor,
        scale_for: Callable[[str, bool], float | None],
        include_batchnorm: bool = False,
    ) -> None:
        selected, scales = [], []
        for group in unit_groups(model, example_input):
            scale = scale_for(group.name, False)  # the output layer is never a root
            if scale is None or scale == 0:
                continue
            selected.append(group)
            scales += [float(scale)] * group.size
        device = next(model.parameters()).device
        super().__init__(selected, KINDS if include_batchnorm else ("out", "in"), device)
        self.num_groups = self.num_units
        self.roots = [
            (g.name, first, g.size) for g, first in zip(self.groups, self.offsets, strict=True)
        ]
        self.scales = torch.tensor(scales, dtype=torch.float32, device=device)
