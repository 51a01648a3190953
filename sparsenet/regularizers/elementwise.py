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
Method: docs/methods.md#l1-and-l2.
"""

from __future__ import annotations

import torch

from sparsenet.regularizers._groups import soft_threshold
from sparsenet.regularizers.base import Regularizer


class L1(Regularizer):
    def __init__(self, strength: float = 5e-4, layers=None, proximal: bool = False) -> None:
        super().__init__(strength=strength, layers=layers, proximal=proximal)

    def layer_penalty(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.abs().sum()

    def layer_prox(self, weight: torch.Tensor, tau: float) -> torch.Tensor:
        return soft_threshold(weight, tau)


class L2(Regularizer):
    def __init__(self, strength: float = 5e-4, layers=None, proximal: bool = False) -> None:
        super().__init__(strength=strength, layers=layers, proximal=proximal)

    def layer_penalty(self, weight: torch.Tensor) -> torch.Tensor:
        return 0.5 * weight.pow(2).sum()

    def layer_prox(self, weight: torch.Tensor, tau: float) -> torch.Tensor:
        return weight / (1.0 + tau)
