"""Sparse group lasso: group lasso plus an l1 term, in two forms.

    form=scardapane   R = R_GL(W) + ||W||_1                      (Scardapane et al. 2017)
    form=statistics   R = (1 - alpha) * R_GL(W) + alpha * ||W||_1  (Simon, Friedman, Hastie &
                                                                   Tibshirani 2013)
R_GL is `GroupLasso`'s (same `structure`, `sqrt_weighting`, `layers`); ||W||_1 is taken over
the same layers with the same multipliers. [known] Both forms; paper A uses the statistics
form with `in` groups, sqrt(|g|) weighting and alpha = 0.1 (the default here). `alpha` is
ignored by the scardapane form.

Proximal option ([choice], off by default): elementwise soft-thresholding by
lr * strength * m_l * w_1, then group soft-thresholding by lr * strength * m_l * w_GL * c_g
(w_1, w_GL the two weights above). For non-overlapping groups this composition is the exact
proximal operator of the sparse group lasso (Friedman, Hastie & Tibshirani 2010).
Cost-aware weights (`cost`, base.py): a group's whole term, group norm and l1 of its weights,
is multiplied by its cost factor k_g (the group lasso's); under `coupled`, whose groups
overlap, the l1 term of a weight takes the factor of the unit its row belongs to.
Method and sources: docs/methods.md#sparse-group-lasso, docs/methods.md#cost-aware-weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from sparsenet.config.checks import Choice, Number
from sparsenet.regularizers._groups import group_penalty, soft_threshold
from sparsenet.regularizers.group_lasso import GroupLasso

FORMS = ("scardapane", "statistics")


class SparseGroupLasso(GroupLasso):
    def __init__(
        self,
        strength: float = 1e-4,
        structure: str = "out",
        form: str = "statistics",
        alpha: float = 0.1,
        sqrt_weighting: bool = True,
        proximal: bool = False,
        layers: Mapping[str, float | None] | None = None,
        include_batchnorm: bool = False,
        cost: str | None = None,
    ) -> None:
        super().__init__(
            strength=strength,
            structure=structure,
            sqrt_weighting=sqrt_weighting,
            proximal=proximal,
            layers=layers,
            include_batchnorm=include_batchnorm,
            cost=cost,
        )
        self.form = Choice(FORMS)("form", form)
        self.alpha = Number(low=0, high=1)("alpha", alpha)
        if self.form == "statistics":
            self.group_weight, self.l1_weight = 1.0 - self.alpha, self.alpha
        else:
            self.group_weight, self.l1_weight = 1.0, 1.0

    def cost_structures(self, module: nn.Module) -> tuple[str, ...]:
        return ("weight",) if self.structure == "coupled" else (self.structure,)

    def layer_penalty(self, weight: torch.Tensor, cost=None) -> torch.Tensor:
        group_coef = self.group_weight * self._group_weight(weight)
        if cost is None:
            return group_penalty(weight, self.structure, group_coef, self.l1_weight)
        factor = cost[self.structure]
        return group_penalty(weight, self.structure, group_coef * factor, self.l1_weight * factor)

    def layer_prox(self, weight: torch.Tensor, tau: float, cost=None) -> torch.Tensor:
        if cost is None:
            shrunk = soft_threshold(weight, tau * self.l1_weight)
            return super().layer_prox(shrunk, tau * self.group_weight)
        shrunk = soft_threshold(weight, tau * self.l1_weight * cost[self.structure])
        return super().layer_prox(shrunk, tau * self.group_weight, cost)

    def _l1(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """||W||_1 of a layer under `coupled`, each weight times its row's cost factor."""
        cost = self.layer_cost(name)
        return weight.abs().sum() if cost is None else (cost["weight"] * weight.abs()).sum()

    def penalty(self, model: nn.Module) -> torch.Tensor:
        if self.proximal:
            return torch.zeros(())
        if self.structure != "coupled":
            return self.group_lasso_penalty(model)  # layer_penalty already holds both terms
        l1 = [scale * self._l1(name, m.weight) for name, m, scale in self.targets(model)]
        group = self.group_lasso_penalty(model)
        return self.group_weight * group + self.l1_weight * torch.stack(l1).sum()

    @torch.no_grad()
    def after_step(self, model: nn.Module, lr: float) -> None:
        if not (self.proximal and self.active):
            return
        tau = lr * self.strength
        if self.structure != "coupled":
            super(GroupLasso, self).after_step(model, lr)  # the base's layer-wise prox
            return
        for name, module, scale in self.targets(model):
            threshold = tau * scale * self.l1_weight
            cost = self.layer_cost(name)
            if cost is not None:
                threshold = threshold * cost["weight"]
            module.weight.copy_(soft_threshold(module.weight, threshold))
        self.group_prox_(model, tau * self.group_weight)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "form": self.form,
            "alpha": self.alpha if self.form == "statistics" else None,
        }
