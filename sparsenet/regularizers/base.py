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
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping

import torch
from torch import nn

from sparsenet.config.checks import Number
from sparsenet.errors import ConfigError
from sparsenet.pruning.groups import LAYER_TYPES  # the one definition of a prunable layer

OUTPUT_LAYER = "<output>"


def regularizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Conv2d / Linear layer, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)]


class Regularizer:
    """Base class. Layer-wise subclasses implement `layer_penalty(weight)` (without the
    strength) and, for the proximal option, `layer_prox(weight, tau)`; graph-wise ones
    override `penalty` and `bind`."""

    def __init__(
        self,
        strength: float = 0.0,
        layers: Mapping[str, float | None] | None = None,
        proximal: bool = False,
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

    # --- the penalty --------------------------------------------------------------------
    def layer_penalty(self, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """sum over regularized layers of multiplier * layer_penalty(W), without the strength.
        Zero under the proximal option (the prox in `after_step` handles R)."""
        if self.proximal:
            return torch.zeros(())
        terms = [scale * self.layer_penalty(m.weight) for _, m, scale in self.targets(model)]
        if not terms:
            return torch.zeros(())
        return torch.stack(terms).sum()

    def __call__(self, model: nn.Module) -> torch.Tensor:
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
        for _, module, scale in self.targets(model):
            module.weight.copy_(self.layer_prox(module.weight, lr * self.strength * scale))

    def describe(self) -> dict:
        return {
            "type": type(self).__name__,
            "strength": self.strength,
            "layers": dict(self.layer_scales),
            "proximal": self.proximal,
        }


class NoRegularizer(Regularizer):
    """R = 0: the dense baseline."""

    def __init__(self, **_ignored) -> None:
        super().__init__(strength=0.0)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        return torch.zeros(())
