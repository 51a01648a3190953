"""The l1/l2 pseudo-norm on filters (paper C: Berthelier et al., ICPR Workshops 2020,
arXiv 2007.10022).

    ratio(x) = ||x||_1 / ||x||_2     scale-invariant, in [1, sqrt(n)], smallest when a single
                                     entry of x is non-zero

[known] A sparsity term built on this ratio over filter coefficients; irrelevant filters are
then removed, with no iterative retraining. [choice] The exact per-filter definition is not
available; three modes, per regularized layer l (the penalty sums the layers' terms, each
times its multiplier m_l):
  filter_norms (default)  ratio(v_l), v_l = (||W_l[f]||_2)_f the vector of filter norms: the
                          energy of the layer concentrates in few filters and the others shrink
                          to zero, ready to be removed (cf. DeepHoyer's Group-HS, the squared
                          version). Note ||v_l||_2 = ||W_l||_F.
  per_filter              sum_f ratio(W_l[f]): sparse coefficients inside every filter
  layer                   ratio(W_l): over all coefficients of the layer
A "filter" is a group of `structure` (`out` by default: a conv filter, or a Linear neuron's
incoming weights; `in` and `shape` are allowed).
Numerically safe [choice]: the denominator is sqrt(||x||_2^2 + eps^2), so an all-zero filter
or layer gives ratio 0 with a finite (zero) gradient instead of 0/0; for any x with
||x||_2 >> eps the value is the ratio itself.
Cost-aware weights (`cost`, base.py) [choice]: the filters' cost factors k_f (of `structure`;
`layer` mode: the layer's) weight the sum that makes the penalty, the numerator of
filter_norms, the filters of per_filter, the layer's ratio of layer:
  filter_norms  sum_f k_f ||W_l[f]||_2 / ||v_l||_2
  per_filter    sum_f k_f ratio(W_l[f])
  layer         k_l ratio(W_l)
so an expensive filter gains less from staying large than a cheap one.
Method and sources: docs/methods.md#l1-over-l2-pseudo-norm.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from sparsenet.config.checks import Choice, Number
from sparsenet.regularizers._groups import group_dims
from sparsenet.regularizers.base import Regularizer

MODES = ("filter_norms", "per_filter", "layer")


class L1L2(Regularizer):
    cost_aware = True

    def __init__(
        self,
        strength: float = 1e-1,
        mode: str = "filter_norms",
        structure: str = "out",
        eps: float = 1e-8,
        layers: Mapping[str, float | None] | None = None,
        proximal: bool = False,
        cost: str | None = None,
    ) -> None:
        # no closed-form prox: proximal=true is refused by the base class with that reason
        super().__init__(strength=strength, layers=layers, proximal=proximal, cost=cost)
        self.mode = Choice(MODES)("mode", mode)
        self.structure = Choice(("out", "in", "shape"))("structure", structure)
        self.eps = Number(above=0)("eps", eps)

    def applies_to(self, module: nn.Module) -> bool:
        return self.structure != "shape" or isinstance(module, nn.Conv2d)

    def _safe_l2(self, squares: torch.Tensor) -> torch.Tensor:
        return (squares + self.eps**2).sqrt()

    def cost_structures(self, module: nn.Module) -> tuple[str, ...]:
        return ("layer",) if self.mode == "layer" else (self.structure,)

    def layer_penalty(self, weight: torch.Tensor, cost=None) -> torch.Tensor:
        if self.mode == "layer":
            ratio = weight.abs().sum() / self._safe_l2(weight.square().sum())
            return ratio if cost is None else cost["layer"].reshape(()) * ratio
        dims = group_dims(weight, self.structure)
        if self.mode == "per_filter":
            ratios = weight.abs().sum(dims) / self._safe_l2(weight.square().sum(dims))
            return _weighted_sum(ratios, cost, self.structure)
        norms = torch.linalg.vector_norm(weight, ord=2, dim=dims)
        # ||W||_F^2 = sum_f ||W[f]||^2: from the few filter norms, not another pass over W
        return _weighted_sum(norms, cost, self.structure) / self._safe_l2(norms.square().sum())

    def describe(self) -> dict:
        return {
            **super().describe(),
            "mode": self.mode,
            "structure": self.structure,
            "eps": self.eps,
        }


def _weighted_sum(values: torch.Tensor, cost, structure: str) -> torch.Tensor:
    """sum_f values[f], each times its filter's cost factor when `cost` is given."""
    if cost is None:
        return values.sum()
    return (cost[structure].reshape(values.shape) * values).sum()
