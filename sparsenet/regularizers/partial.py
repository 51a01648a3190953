"""Partial regularization (paper A: E & Gao, arXiv 1912.05078 / 2009.01395).

Any layer-wise regularizer `inner` (group lasso, sparse group lasso, SSL, l1, l2, l1/l2) is
applied to each layer with a share of its units left out of the penalty:

    R_partial(W_l) = k * R_inner(W_l restricted to the regularized units),
    exempt units: floor(n_l / beta) of the n_l units,  k = beta / (beta - 1) if rescale else 1

[known] paper A: `in` units (input features / hidden units; a unit's outgoing weights
W[:, i] are never regularized when it is exempt), beta = 8, exempting the *last*
floor(n_in / beta) units of every Linear layer, the first one (input pixels) and the output
layer included; for its 784-400-300-100-10 MLP that keeps 686/98, 350/50, 263/37 and 88/12
units in/out of the penalty (87.5% of the weights). An early version of the authors' code
multiplied the penalty by beta / (beta - 1) (`rescale`). Hidden units are interchangeable,
so which units are exempt does not matter, only how many.
[choice] `exempt`: `last` (paper A's code, default), `first`, or `random` (a fixed random
subset drawn from `seed` and the layer's unit count, the same for every step).
[choice] `units`: `in` restricts columns W[:, i, ...] (input units / channels), `out`
restricts rows W[o, ...] (a neuron's / filter's incoming weights: exempt neurons keep
unpenalized incoming weights). Default: the inner regularizer's structure when it is `in`
or `out`, else `in`.
[choice] After pruning (`bind` on the narrow model) the exempt count is recomputed from the
new unit count with the same rule; pruning keeps unit order, so with `last` the exempt
units stay the ones that were never penalized.

Paper A's loss is CE + 1e-4 * R (Adam, lr 1e-3): run it with `model=mlp optimizer=adam`.
Its code applies softmax twice (softmax output fed to a softmax cross-entropy); sparsenet's
loss is the plain cross-entropy of the logits, so that bug is not reproduced.

The run's strength is strength * inner.strength (configs set inner.strength: 1.0); the
inner's `layers` map picks layers and per-layer multipliers; the proximal option is the
inner's (`inner.proximal`), applied to the regularized units only.
Cost-aware weights (`cost`, base.py; set here or in `inner`, not both differently): the costs
are the whole network's, computed and normalised over all groups of the inner's layers, and
restricted with the weight, so each penalized group keeps the factor it has in the inner
regularizer; exempt groups stay free.
Method and sources: docs/methods.md#partial-regularization,
docs/methods.md#cost-aware-weights.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from sparsenet.config.checks import Choice, Number
from sparsenet.errors import ConfigError
from sparsenet.regularizers.base import Regularizer

EXEMPT_RULES = ("last", "first", "random")
UNIT_AXES = {"in": 1, "out": 0}


def regularized_units(n: int, beta: float, rule: str = "last", seed: int = 0) -> torch.Tensor:
    """Indices of the n - floor(n / beta) units that stay in the penalty, sorted."""
    exempt = math.floor(n / beta)
    if rule == "last":
        return torch.arange(n - exempt)
    if rule == "first":
        return torch.arange(exempt, n)
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + n)
    return torch.randperm(n, generator=generator)[: n - exempt].sort().values


class Partial(Regularizer):
    cost_aware = True

    def __init__(
        self,
        inner: Regularizer,
        strength: float = 1e-4,
        beta: float = 8.0,
        rescale: bool = False,
        exempt: str = "last",
        units: str | None = None,
        seed: int = 0,
        cost: str | None = None,
    ) -> None:
        if not isinstance(inner, Regularizer):
            raise ConfigError(
                "inner", inner, "must be a regularizer config", "a config with _target_"
            )
        if getattr(inner, "structure", None) == "coupled":
            raise ConfigError(
                "inner.structure",
                "coupled",
                "cannot be partial (its groups span layers)",
                "out, in, shape, layer",
            )
        if type(inner).layer_penalty is Regularizer.layer_penalty:
            raise ConfigError(
                "inner",
                type(inner).__name__,
                "has no per-layer penalty",
                "GroupLasso, SparseGroupLasso, SSL, L1, L2, L1L2",
            )
        super().__init__(strength=strength, proximal=False, cost=cost)
        if inner.cost is not None:  # applied here, restricted to the penalized units
            if self.cost not in (None, inner.cost):
                raise ConfigError(
                    "cost",
                    self.cost,
                    f"differs from inner.cost='{inner.cost}'",
                    f"null or {inner.cost}",
                )
            self.cost, inner.cost = inner.cost, None
        self.inner = inner
        self.proximal = inner.proximal
        self.beta = Number(above=1)("beta", beta)
        self.rescale = bool(rescale)
        self.exempt = Choice(EXEMPT_RULES)("exempt", exempt)
        if units is None:
            structure = getattr(inner, "structure", "in")
            units = structure if structure in UNIT_AXES else "in"
        self.units = Choice(tuple(UNIT_AXES))("units", units)
        self.seed = int(seed)
        self.factor = self.beta / (self.beta - 1) if self.rescale else 1.0
        self._kept: dict[int, torch.Tensor] = {}

    # Layers and multipliers are the inner regularizer's.
    def targets(self, model: nn.Module):
        return self.inner.targets(model)

    def bind(self, model: nn.Module, example_input: torch.Tensor) -> None:
        self.inner.bind(model, example_input)
        self._kept.clear()
        self.bind_costs(model, example_input)

    def cost_structures(self, module: nn.Module) -> tuple[str, ...]:
        return self.inner.cost_structures(module)

    def kept_units(self, n: int) -> torch.Tensor:
        """Indices of the regularized units of a layer with n units (cached per n)."""
        if n not in self._kept:
            self._kept[n] = regularized_units(n, self.beta, self.exempt, self.seed)
        return self._kept[n]

    def restrict(self, weight: torch.Tensor) -> torch.Tensor:
        """The part of `weight` that is penalized (a view for `last` / `first`)."""
        dim = UNIT_AXES[self.units]
        kept = self.kept_units(weight.shape[dim])
        if self.exempt != "random":
            return weight.narrow(dim, int(kept[0]) if len(kept) else 0, len(kept))
        return weight.index_select(dim, kept.to(weight.device))

    def restrict_cost(self, cost: dict[str, torch.Tensor], select) -> dict[str, torch.Tensor]:
        """The group costs of the penalized part: `select` (restrict, or an index_select)
        along the unit axis, where a cost varies along it (one per row or column)."""
        dim = UNIT_AXES[self.units]
        return {s: c if c.shape[dim] == 1 else select(c) for s, c in cost.items()}

    def layer_penalty(self, weight: torch.Tensor, cost=None) -> torch.Tensor:
        if cost is None:
            return self.factor * self.inner.layer_penalty(self.restrict(weight))
        part = self.restrict(weight)
        return self.factor * self.inner.layer_penalty(part, self.restrict_cost(cost, self.restrict))

    def penalty(self, model: nn.Module) -> torch.Tensor:
        if self.proximal:
            return torch.zeros(())
        return self.inner.strength * super().penalty(model)

    @property
    def active(self) -> bool:
        return self.strength > 0 and self.inner.strength > 0

    @torch.no_grad()
    def after_step(self, model: nn.Module, lr: float) -> None:
        if not self.active:
            return
        tau = lr * self.strength * self.inner.strength * self.factor
        dim = UNIT_AXES[self.units]
        zero_small = getattr(self.inner, "zero_small_", None)  # SSL's zeroing of tiny weights
        if not (self.proximal or zero_small):
            return
        for name, module, scale in self.targets(model):
            w = module.weight
            kept = self.kept_units(w.shape[dim]).to(w.device)
            part = w.index_select(dim, kept)
            if self.proximal:
                cost = self.layer_cost(name)
                if cost is None:
                    part = self.inner.layer_prox(part, tau * scale)
                else:
                    select = functools.partial(torch.index_select, dim=dim, index=kept)
                    cost = self.restrict_cost(cost, select)
                    part = self.inner.layer_prox(part, tau * scale, cost)
            if zero_small is not None:
                zero_small(part)
            w.index_copy_(dim, kept, part)

    def describe(self) -> dict:
        return {
            "type": "Partial",
            "strength": self.strength,
            "beta": self.beta,
            "rescale": self.rescale,
            "exempt": self.exempt,
            "units": self.units,
            "seed": self.seed,
            "proximal": self.proximal,
            "cost": self.cost,
            "inner": self.inner.describe(),
        }
