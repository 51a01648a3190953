"""The regularizer interface: a penalty R(model) added to the loss, and an optional hook
after each optimizer step (proximal steps, SSL's zeroing of tiny weights).

Which layers are regularized is decided once per model: every Conv2d and Linear layer,
filtered by `layers`, a map from fnmatch patterns on module names to a strength
multiplier (`null` excludes the layer; the first matching pattern wins). Biases and
BatchNorm parameters are never regularized.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping

import torch
from torch import nn

REGULARIZED_TYPES = (nn.Conv2d, nn.Linear)


class Regularizer:
    """Base class. Subclasses implement `layer_penalty(weight)` (without the strength)."""

    def __init__(self, strength: float = 0.0, layers: Mapping[str, float | None] | None = None):
        if strength < 0:
            raise ValueError(f"regularizer.strength={strength} must be >= 0")
        self.strength = float(strength)
        self.layer_scales = dict(layers or {})
        self._targets: list[tuple[str, nn.Module, float]] | None = None
        self._model_id: int | None = None

    def targets(self, model: nn.Module) -> list[tuple[str, nn.Module, float]]:
        """(name, module, multiplier) of every regularized layer; cached per model object."""
        if self._targets is None or self._model_id != id(model):
            self._targets = []
            for name, module in model.named_modules():
                if not isinstance(module, REGULARIZED_TYPES):
                    continue
                scale = self._scale_for(name)
                if scale is not None and scale != 0:
                    self._targets.append((name, module, float(scale)))
            self._model_id = id(model)
        return self._targets

    def bind(self, model: nn.Module, example_input: torch.Tensor) -> None:
        """Called before each training stage with the model as it then stands (dense, or
        pruned before fine-tuning) and one example input, for regularizers whose groups
        depend on the network graph. Default: nothing."""

    def _scale_for(self, name: str) -> float | None:
        for pattern, scale in self.layer_scales.items():
            if fnmatch.fnmatch(name, pattern):
                return scale
        return 1.0

    def layer_penalty(self, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """sum over regularized layers of multiplier * layer_penalty(W), without the strength."""
        terms = [scale * self.layer_penalty(m.weight) for _, m, scale in self.targets(model)]
        if not terms:
            return torch.zeros(())
        return torch.stack(terms).sum()

    def __call__(self, model: nn.Module) -> torch.Tensor:
        return self.strength * self.penalty(model)

    @property
    def active(self) -> bool:
        return self.strength > 0

    @torch.no_grad()
    def after_step(self, model: nn.Module, lr: float) -> None:
        """Called after every optimizer step with the current learning rate. Default: nothing."""

    def describe(self) -> dict:
        return {"type": type(self).__name__, "strength": self.strength}


class NoRegularizer(Regularizer):
    """R = 0: the dense baseline."""

    def __init__(self, **_ignored) -> None:
        super().__init__(strength=0.0)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        return torch.zeros(())
