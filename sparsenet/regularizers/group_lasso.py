"""Group lasso (Yuan & Lin 2006; Scardapane et al. 2017; SSL, Wen et al. 2016).

    R_GL(W) = sum_g c_g * ||w_g||_2,   c_g = sqrt(|g|) if sqrt_weighting else 1

Groups (docs/methods.md#group-structures; `_groups.py`, `_coupled.py`):
  out      W[o, ...]        a neuron's / filter's incoming weights        Linear, Conv2d
  in       W[:, i, ...]     an input unit's / channel's outgoing weights   Linear, Conv2d
  shape    W[:, c, y, x]    SSL filter shape                               Conv2d only
  layer    W                SSL depth                                      any
  coupled  one prunable unit of the graph: its row, the consumers' columns, residual
           partners (+ BatchNorm entries with include_batchnorm)          any graph
[known] Scardapane and paper A use `in` groups weighted by sqrt(|g|); SSL uses c_g = 1.
[choice] For `coupled`, |g| is the number of weights in the whole coupled group, and a
group's layer multiplier is that of its root layer (the layer whose units it removes);
`coupled` needs `bind(model, example_input)` (the pipeline calls it before each stage).
Group lasso is applied to every Conv2d/Linear layer unless `layers` says otherwise; the
network's input pixels are groups only under `in` (paper A's feature selection).
[choice] Scardapane et al. also put one group on each layer's bias unit (the biases as the
outgoing weights of a constant input); biases are not regularized here (not unless a config
says so, docs/methods.md#notation), so those groups are left out.

Proximal option ([choice], off by default): after each optimizer step apply group
soft-thresholding w_g <- w_g * max(0, 1 - lr * strength * m_l * c_g / ||w_g||), the exact
proximal operator of lr * strength * R_GL, so dead groups reach exact zeros instead of
oscillating around zero under the subgradient.
Cost-aware weights (`cost`, base.py): every structure's group g gets the factor k_g of its
cost (out: its unit's; in: the producing unit's, shared among the columns it owns; shape: the
MACs of the kernel position in the alive filters; layer: the layer's; coupled: its unit's),
R_GL = sum_g k_g c_g ||w_g||_2, and the prox thresholds by tau * k_g * c_g.
Method and sources: docs/methods.md#group-lasso, docs/methods.md#cost-aware-weights.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import torch
from torch import nn

from sparsenet.errors import ConfigError
from sparsenet.regularizers._coupled import CoupledGroups
from sparsenet.regularizers._groups import (
    STRUCTURES,
    group_matrix,
    group_penalty,
    group_size,
    group_soft_threshold,
    ungroup,
)
from sparsenet.regularizers.base import Regularizer

GROUP_STRUCTURES = (*STRUCTURES, "coupled")
COUPLED = "<coupled>"  # the costs of the coupled groups, beside the layers' in `costs`


class GroupLasso(Regularizer):
    cost_aware = True

    def __init__(
        self,
        strength: float = 1e-4,
        structure: str = "out",
        sqrt_weighting: bool = True,
        proximal: bool = False,
        layers: Mapping[str, float | None] | None = None,
        include_batchnorm: bool = False,
        cost: str | None = None,
    ) -> None:
        super().__init__(strength=strength, layers=layers, proximal=proximal, cost=cost)
        if structure not in GROUP_STRUCTURES:  # check_structure's list lacks `coupled`
            raise ConfigError(
                "structure", structure, "is not a group structure", ", ".join(GROUP_STRUCTURES)
            )
        self.structure = structure
        self.sqrt_weighting = bool(sqrt_weighting)
        self.include_batchnorm = bool(include_batchnorm)
        if self.include_batchnorm and structure != "coupled":
            raise ConfigError(
                "include_batchnorm", True, f"needs structure 'coupled', not '{structure}'", "false"
            )
        self._coupled: CoupledGroups | None = None

    def applies_to(self, module: nn.Module) -> bool:
        return self.structure != "shape" or isinstance(module, nn.Conv2d)

    def bind(self, model: nn.Module, example_input: torch.Tensor) -> None:
        if self.structure == "coupled":  # before the base binds the costs, which read it
            self._coupled = CoupledGroups(
                model, example_input, self._scale_for, self.include_batchnorm
            )
        super().bind(model, example_input)

    def cost_structures(self, module: nn.Module) -> tuple[str, ...]:
        return () if self.structure == "coupled" else (self.structure,)

    def raw_costs(self, model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
        raw = super().raw_costs(model)
        if self.structure == "coupled":
            units = self._unit_costs
            raw[COUPLED] = {
                "coupled": torch.cat([units.group(root) for root, _, _ in self._bound().roots])
            }
        return raw

    def _group_weight(self, weight: torch.Tensor) -> float:
        return math.sqrt(group_size(weight, self.structure)) if self.sqrt_weighting else 1.0

    def layer_penalty(self, weight: torch.Tensor, cost=None) -> torch.Tensor:
        coef = self._group_weight(weight)
        if cost is not None:
            coef = coef * cost[self.structure]
        return group_penalty(weight, self.structure, coef)

    def layer_prox(self, weight: torch.Tensor, tau: float, cost=None) -> torch.Tensor:
        rows = group_matrix(weight, self.structure)
        threshold = tau * self._group_weight(weight)
        if cost is not None:
            threshold = threshold * cost[self.structure].reshape(-1, 1)
        return ungroup(group_soft_threshold(rows, threshold), weight.shape, self.structure)

    # --- coupled groups -----------------------------------------------------------------
    def _bound(self) -> CoupledGroups:
        if self._coupled is None:
            raise RuntimeError(
                "regularizer.structure='coupled' needs bind(model, example_input) before use "
                "(the pipeline calls it before each training stage)"
            )
        return self._coupled

    def _coupled_weights(self, groups: CoupledGroups) -> torch.Tensor:
        """m_l * c_g (times the cost factor k_g with `cost`) for every coupled group."""
        weights = groups.scales * (groups.sizes.sqrt() if self.sqrt_weighting else 1.0)
        cost = self.layer_cost(COUPLED)
        return weights if cost is None else weights * cost["coupled"]

    def group_lasso_penalty(self, model: nn.Module) -> torch.Tensor:
        """R_GL without the strength (sum over layers for the layer-wise structures)."""
        if self.structure != "coupled":
            return super().penalty(model)
        groups = self._bound()
        return (self._coupled_weights(groups) * groups.norms()).sum()

    def penalty(self, model: nn.Module) -> torch.Tensor:
        if self.proximal:
            return torch.zeros(())
        return self.group_lasso_penalty(model)

    @torch.no_grad()
    def group_prox_(self, model: nn.Module, tau: float) -> None:
        """In place: W <- prox of tau * R_GL (tau already holds lr * strength)."""
        if self.structure != "coupled":
            prox = functools.partial(GroupLasso.layer_prox, self)  # not a subclass's override
            for name, module, scale in self.targets(model):
                module.weight.copy_(self._layer_call(prox, name, module.weight, tau * scale))
            return
        groups = self._bound()
        norms = groups.norms()
        thresholds = tau * self._coupled_weights(groups)
        groups.scale_(torch.clamp(1 - thresholds / norms.clamp_min(1e-12), min=0.0))

    @torch.no_grad()
    def after_step(self, model: nn.Module, lr: float) -> None:
        if self.proximal and self.active:
            self.group_prox_(model, lr * self.strength)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "structure": self.structure,
            "sqrt_weighting": self.sqrt_weighting,
            "include_batchnorm": self.include_batchnorm,
        }
