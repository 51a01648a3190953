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
Method and sources: docs/methods.md#sparse-group-lasso.
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
    ) -> None:
        super().__init__(
            strength=strength,
            structure=structure,
            sqrt_weighting=sqrt_weighting,
            proximal=proximal,
            layers=layers,
            include_batchnorm=include_batchnorm,
        )
        self.form = Choice(FORMS)("form", form)
        self.alpha = Number(low=0, high=1)("alpha", alpha)
        if self.form == "statistics":
            self.group_weight, self.l1_weight = 1.0 - self.alpha, self.alpha
        else:
            self.group_weight, self.l1_weight = 1.0, 1.0

    def layer_penalty(self, weight: torch.Tensor) -> torch.Tensor:
        group_coef = self.group_weight * self._group_weight(weight)
        return group_penalty(weight, self.structure, group_coef, self.l1_weight)

    def layer_prox(self, weight: torch.Tensor, tau: float) -> torch.Tensor:
        shrunk = soft_threshold(weight, tau * self.l1_weight)
        return super().layer_prox(shrunk, tau * self.group_weight)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        if self.proximal:
            return torch.zeros(())
        if self.structure != "coupled":
            return self.group_lasso_penalty(model)  # layer_penalty already holds both terms
        l1 = [scale * m.weight.abs().sum() for _, m, scale in self.targets(model)]
        group = self.group_lasso_penalty(model)
        return self.group_weight * group + self.l1_weight * torch.stack(l1).sum()

    @torch.no_grad()
    def after_step(self, model: nn.Module, lr: float) -> None:
        if not (self.proximal and self.active):
            return
        tau = lr * self.strength
        if self.structure != "coupled":
            for _, module, scale in self.targets(model):
                module.weight.copy_(self.layer_prox(module.weight, tau * scale))
            return
        for _, module, scale in self.targets(model):
            module.weight.copy_(soft_threshold(module.weight, tau * scale * self.l1_weight))
        self.group_prox_(model, tau * self.group_weight)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "form": self.form,
            "alpha": self.alpha if self.form == "statistics" else None,
        }
