"""Unstructured penalties on every weight: l1 (lasso) and l2 (ridge) as explicit loss terms.

    L1:  R(W) = ||W||_1 = sum |w|
    L2:  R(W) = 1/2 ||W||_2^2 = 1/2 sum w^2

[known] The l1 and l2 penalties themselves. [choice] L2 carries the factor 1/2 so that its
gradient is strength * w: `regularizer=l2 regularizer.strength=x` acts like the optimizer's
`weight_decay=x` under plain SGD, but as an explicit term of the loss (it is logged in `reg`,
it scales with `layers` and it is not decoupled by AdamW). Neither penalty is structured:
whole units die only when all of their weights do.

Proximal option (off by default): L1 -> soft-thresholding sign(w) max(|w| - tau, 0), which
gives exact zeros; L2 -> w / (1 + tau). tau = lr * strength * m_l.
Cost-aware weights (`cost`, base.py) [choice]: each weight is a group of its own and takes the
cost factor k of the unit its row belongs to (the unit it feeds: a whole unit goes only when
its weights do): R = sum k_w |w| (l1), 1/2 sum k_w w^2 (l2), and the prox uses tau * k_w.
Method: docs/methods.md#l1-and-l2, docs/methods.md#cost-aware-weights.
"""

from __future__ import annotations

import torch

from sparsenet.regularizers._groups import soft_threshold
from sparsenet.regularizers.base import Regularizer


class _Elementwise(Regularizer):
    """Every weight a group of its own; its cost factor is its row's (module docstring)."""

    cost_aware = True

    def __init__(
        self, strength: float = 5e-4, layers=None, proximal: bool = False, cost: str | None = None
    ) -> None:
        super().__init__(strength=strength, layers=layers, proximal=proximal, cost=cost)

    @staticmethod
    def _tau(tau: float, cost) -> float | torch.Tensor:
        return tau if cost is None else tau * cost["weight"]


class L1(_Elementwise):
    def layer_penalty(self, weight: torch.Tensor, cost=None) -> torch.Tensor:
        if cost is None:
            return weight.abs().sum()
        return (cost["weight"] * weight.abs()).sum()

    def layer_prox(self, weight: torch.Tensor, tau: float, cost=None) -> torch.Tensor:
        return soft_threshold(weight, self._tau(tau, cost))


class L2(_Elementwise):
    def layer_penalty(self, weight: torch.Tensor, cost=None) -> torch.Tensor:
        if cost is None:
            return 0.5 * weight.pow(2).sum()
        return 0.5 * (cost["weight"] * weight.pow(2)).sum()

    def layer_prox(self, weight: torch.Tensor, tau: float, cost=None) -> torch.Tensor:
        return weight / (1.0 + self._tau(tau, cost))
