"""The regularizer interface: a penalty R(model) added to the loss, and an optional hook
after each optimizer step (proximal steps, SSL's zeroing of tiny weights).

    loss = CE + strength * sum_l m_l * R_l(W_l)

Which layers are regularized is decided once per model: every Conv2d and Linear layer the
regularizer applies to, filtered by `layers`, a map from fnmatch patterns on module names to a
multiplier m_l (`null` or 0 excludes the layer; the first matching pattern wins; a layer no
pattern matches has m_l = 1). The pattern `<output>` names the network's output layer (the
last Conv2d/Linear in module order, the layer pruning never removes), so one config can leave
the classifier out of any model. A pattern that matches no layer is an error, raised by
`bind()`. Bad values raise `sparsenet.errors.ConfigError` (a ValueError) naming the key,
the value and what is allowed. Biases and BatchNorm parameters are not regularized unless a
regularizer's config says so (`GroupLasso(include_batchnorm=True)`, `coupled` structure).

Proximal option (off by default, available where the penalty has a closed-form proximal
operator, `layer_prox`): the smooth loss then carries no R term (`penalty` returns 0) and
after every optimizer step each regularized weight is replaced by
    W_l <- prox_{tau R_l}(W_l),   tau = lr * strength * m_l,
so groups reach exact zeros instead of oscillating around zero under the subgradient.
This is proximal gradient descent for plain SGD; with momentum or Adam it is the usual
heuristic (the prox uses the scheduled lr, not the optimizer's effective step).

Cost-aware weights (`cost`: null | macs | params | latency; MorphNet, Gordon et al., CVPR
2018; docs/methods.md#cost-aware-weights): each group's term is multiplied by

    k_g = cost_g(alive units now) / mean_{g' of the same structure} cost_g'(all units alive)

cost_g the marginal cost of the group's unit (`sparsenet.pruning.cost`), recomputed from the
alive units every `REFRESH_STEPS` calls of the regularizer; the mean is over every group of
that structure in the regularized layers of the network as bound (dense, or pruned before
fine-tuning) at full width. So at full width the average group has k_g = 1 (the strength
keeps its scale; equal costs give the plain regularizer), and k_g falls with the real costs
as the network narrows. The mean depends on the architecture only, not on the weights, so a
resumed stage normalises as the uninterrupted one did. Null computes nothing and leaves every
value as it was. This base class holds the hook (bind, refresh, normalisation); a class whose
penalty has groups sets `cost_aware`, names the structures its `layer_penalty(weight, cost)`
reads (`cost_structures`), and multiplies each group's term by `cost[structure]` (shaped like
the group norms with keepdim).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping

import torch
from torch import nn

from sparsenet.config.checks import Choice, Number
from sparsenet.errors import ConfigError
from sparsenet.pruning.cost import COSTS, REFRESH_STEPS, UnitCosts
from sparsenet.pruning.groups import LAYER_TYPES  # the one definition of a prunable layer

OUTPUT_LAYER = "<output>"


def regularizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Conv2d / Linear layer, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)]


class Regularizer:
    """Base class. Layer-wise subclasses implement `layer_penalty(weight)` (without the
    strength) and, for the proximal option, `layer_prox(weight, tau)`; graph-wise ones
    override `penalty` and `bind`. Cost-aware ones (`cost_aware`) take the group costs as
    `layer_penalty(weight, cost)` and `layer_prox(weight, tau, cost)`, called so only when
    `cost` is set."""

    cost_aware = False  # whether the penalty has groups that `cost` can weight

    def __init__(
        self,
        strength: float = 0.0,
        layers: Mapping[str, float | None] | None = None,
        proximal: bool = False,
        cost: str | None = None,
    ):
        self.strength = Number(low=0)("strength", strength)
        self.layer_scales: dict[str, float | None] = {}
        for pattern, scale in dict(layers or {}).items():
            self.layer_scales[str(pattern)] = (
                None if scale is None else Number(low=0)(f"layers.{pattern}", scale)
            )
        self.proximal = bool(proximal)
        if self.proximal and not self.has_prox():
            raise ConfigError(
                "proximal",
                True,
                f"is not available for {type(self).__name__} (no closed-form proximal operator)",
                "false",
            )
        self._targets: list[tuple[str, nn.Module, float]] | None = None
        self._model_id: int | None = None
        self.set_cost(cost)
        self._unit_costs: UnitCosts | None = None

    def set_cost(self, cost: str | None) -> None:
        """Validate and set `cost` (a combination passes its own to its parts)."""
        cost = Choice(COSTS, optional=True)("cost", cost)
        if cost is not None and not self.cost_aware:
            raise ConfigError(
                "cost",
                cost,
                f"is not available for {type(self).__name__} (its penalty has no groups)",
                "null",
            )
        self.cost = cost

    # --- which layers -------------------------------------------------------------------
    def applies_to(self, module: nn.Module) -> bool:
        """Whether this regularizer has groups in `module` (e.g. filter shapes: Conv only)."""
        return True

    def targets(self, model: nn.Module) -> list[tuple[str, nn.Module, float]]:
        """(name, module, multiplier) of every regularized layer; cached per model object."""
        if self._targets is None or self._model_id != id(model):
            layers = regularizable_layers(model)
            output = layers[-1][1] if layers else None
            self._targets = []
            for name, module in layers:
                if not self.applies_to(module):
                    continue
                scale = self._scale_for(name, module is output)
                if scale is not None and scale != 0:
                    self._targets.append((name, module, float(scale)))
            self._model_id = id(model)
        return self._targets

    def _scale_for(self, name: str, is_output: bool = False) -> float | None:
        for pattern, scale in self.layer_scales.items():
            if (pattern == OUTPUT_LAYER and is_output) or fnmatch.fnmatch(name, pattern):
                return scale
        return 1.0

    def check_layer_patterns(self, model: nn.Module) -> None:
        names = [name for name, _ in regularizable_layers(model)]
        for pattern in self.layer_scales:
            matched = bool(names) if pattern == OUTPUT_LAYER else fnmatch.filter(names, pattern)
            if not matched:
                raise ConfigError(
                    "layers",
                    ConfigError.NO_VALUE,
                    f"pattern '{pattern}' matches no Conv2d/Linear layer; layers: "
                    f"{', '.join(names) or '(none)'} (or '{OUTPUT_LAYER}')",
                )

    def bind(self, model: nn.Module, example_input: torch.Tensor) -> None:
        """Called before each training stage with the model as it then stands (dense, or
        pruned before fine-tuning) and one example input. Checks the layer patterns and
        forgets cached per-model state; graph-aware subclasses build their groups here."""
        self.check_layer_patterns(model)
        self._targets = None
        self.bind_costs(model, example_input)

    # --- cost-aware weights (module docstring) ------------------------------------------
    def cost_structures(self, module: nn.Module) -> tuple[str, ...]:
        """The structures whose group costs `layer_penalty` reads for `module` (see
        `sparsenet.pruning.cost`); elementwise penalties: each weight, 'weight'."""
        return ("weight",)

    def bind_costs(self, model: nn.Module, example_input: torch.Tensor) -> None:
        """With `cost` set: the units' costs on this model, the stage's normalisers and the
        first weights. Nothing otherwise."""
        self._unit_costs = None
        if self.cost is None:
            return
        self._unit_costs = UnitCosts(model, example_input, self.cost)  # all units alive
        self._cost_means = _means(self.raw_costs(model), self._unit_costs.layers)
        self._cost_calls = 0
        self._unit_costs.refresh()
        self._update_costs(model)

    def raw_costs(self, model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
        """{layer name: {structure: cost of each group}} of the regularized layers."""
        costs = self._unit_costs
        return {
            name: {s: costs.structure(name, s) for s in self.cost_structures(module)}
            for name, module, _ in self.targets(model)
        }

    def _update_costs(self, model: nn.Module) -> None:
        self.costs = {
            name: {s: value / self._cost_means[s] for s, value in by_structure.items()}
            for name, by_structure in self.raw_costs(model).items()
        }

    @torch.no_grad()
    def refresh_costs(self, model: nn.Module) -> None:
        """Once per step (from `__call__`): every `REFRESH_STEPS` calls the alive units and
        the costs are recomputed from the current weights."""
        if self._unit_costs is None:
            return
        self._cost_calls += 1
        if self._cost_calls % REFRESH_STEPS == 0:
            self._unit_costs.refresh()
            self._update_costs(model)

    def layer_cost(self, name: str) -> dict[str, torch.Tensor] | None:
        """The normalised group costs of a regularized layer, or None without `cost`."""
        return None if self._unit_costs is None else self.costs[name]

    # --- the penalty --------------------------------------------------------------------
    def layer_penalty(self, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """sum over regularized layers of multiplier * layer_penalty(W), without the strength.
        Zero under the proximal option (the prox in `after_step` handles R)."""
        if self.proximal:
            return torch.zeros(())
        terms = [
            scale * self._layer_call(self.layer_penalty, name, m.weight)
            for name, m, scale in self.targets(model)
        ]
        if not terms:
            return torch.zeros(())
        return torch.stack(terms).sum()

    def magnitude(self, model: nn.Module, differentiable: bool = False):
        """R(W) without the strength, also under the proximal option (whose smooth term
        `penalty` is 0): the scale that budget control starts from (`budget.start_penalty`,
        `start_reach`), the same for a regularizer with and without `proximal`. A float, or
        with `differentiable` the tensor (for dR/dW)."""
        switched = [r for r in with_parts(self) if r.proximal]
        for regularizer in switched:
            regularizer.proximal = False
        try:
            if differentiable:
                return self.penalty(model)
            with torch.no_grad():
                return float(self.penalty(model))
        finally:
            for regularizer in switched:
                regularizer.proximal = True

    @property
    def shrinks_by_prox(self) -> bool:
        """Whether every regularizer inside (a combination's parts, partial's inner) takes its
        step as a prox after the optimizer's (the optimizer's momentum does not carry it)."""
        leaves = [r for r in with_parts(self) if not getattr(r, "parts", None)]
        return all(r.proximal for r in leaves)

    def _layer_call(self, method, name: str, *args):
        """`method(*args)`, with the layer's costs as a last argument when `cost` is set (a
        regularizer without costs keeps its one-argument signature)."""
        cost = self.layer_cost(name)
        return method(*args) if cost is None else method(*args, cost)

    def __call__(self, model: nn.Module) -> torch.Tensor:
        self.refresh_costs(model)
        return self.strength * self.penalty(model)

    @property
    def active(self) -> bool:
        return self.strength > 0

    # --- after each step ----------------------------------------------------------------
    def has_prox(self) -> bool:
        return type(self).layer_prox is not Regularizer.layer_prox

    def layer_prox(self, weight: torch.Tensor, tau: float) -> torch.Tensor:
        """prox of tau * layer_penalty at `weight` (a new tensor)."""
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, model: nn.Module, lr: float) -> None:
        """Called after every optimizer step with the current learning rate."""
        if not (self.proximal and self.active):
            return
        for name, module, scale in self.targets(model):
            tau = lr * self.strength * scale
            module.weight.copy_(self._layer_call(self.layer_prox, name, module.weight, tau))

    def describe(self) -> dict:
        return {
            "type": type(self).__name__,
            "strength": self.strength,
            "layers": dict(self.layer_scales),
            "proximal": self.proximal,
            "cost": self.cost,
        }


def _means(
    raw: dict[str, dict[str, torch.Tensor]], layers: Mapping[str, nn.Module]
) -> dict[str, torch.Tensor]:
    """The mean cost of a group of each structure over all regularized layers."""
    values: dict[str, list[torch.Tensor]] = {}
    for name, by_structure in raw.items():
        for s, value in by_structure.items():
            if s == "weight":  # one group per weight: a row's cost counts once per weight
                value = value.expand_as(layers[name].weight)
            values.setdefault(s, []).append(value.reshape(-1))
    return {s: torch.cat(v).mean() for s, v in values.items()}


class NoRegularizer(Regularizer):
    """R = 0: the dense baseline."""

    def __init__(self, cost: str | None = None, **_ignored) -> None:
        super().__init__(strength=0.0, cost=cost)  # a cost has nothing to weight: refused

    def penalty(self, model: nn.Module) -> torch.Tensor:
        return torch.zeros(())


def with_parts(regularizer: Regularizer) -> list[Regularizer]:
    """The regularizer and every regularizer inside it (a combination's parts, partial's inner)."""
    found = [regularizer]
    inner = [*getattr(regularizer, "parts", {}).values()]
    if getattr(regularizer, "inner", None) is not None:
        inner.append(regularizer.inner)
    for part in inner:
        found.extend(with_parts(part))
    return found
