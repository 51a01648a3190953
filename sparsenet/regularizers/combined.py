"""Several regularizers in one run.

    R(model) = strength * sum_k R_k(model)     (each R_k with its own strength and layers)

`parts` is a map name -> regularizer (or a list); in a config each part is a nested config
with its own `_target_`, which Hydra instantiates recursively (a plain mapping with a
`_target_` is instantiated here too). `strength` multiplies every part (1.0 by default), so
`regularizer.strength=0` turns the combination off and `regularizer.parts.<name>.strength`
tunes one part. After each step every part's hook runs in order with lr * strength (a
proximal part thresholds by lr * strength * its own strength; SSL's zeroing needs no lr).
`cost` (docs/methods.md#cost-aware-weights) is the default of the parts whose penalty has
groups: each such part with no cost of its own takes it, a part's own `cost` wins, and a part
without groups (variance) is left as it is. Each part weights, normalises and refreshes its
own costs.
See docs/methods.md#combining-regularizers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from sparsenet.errors import ConfigError
from sparsenet.regularizers.base import Regularizer


def _build(name: str, part) -> Regularizer:
    """A part: built already (by sparsenet.config.components, from a config), or a mapping
    with a `_target_` given directly to the constructor."""
    if isinstance(part, Regularizer):
        return part
    if isinstance(part, Mapping) and "_target_" in part:
        from sparsenet.config.components import build

        return build(f"parts.{name}", part, base=Regularizer)
    raise ConfigError(
        f"parts.{name}", part, "is not a regularizer config", "a config with _target_"
    )


class Combined(Regularizer):
    cost_aware = True  # through its parts

    def __init__(
        self,
        parts: Mapping[str, Regularizer] | Sequence[Regularizer],
        strength: float = 1.0,
        cost: str | None = None,
    ) -> None:
        super().__init__(strength=strength, cost=cost)
        if isinstance(parts, Mapping):
            named = [(str(k), parts[k]) for k in parts]
        else:
            named = [(str(i), p) for i, p in enumerate(parts)]
        self.parts: dict[str, Regularizer] = {name: _build(name, part) for name, part in named}
        if not self.parts:
            raise ConfigError("parts", {}, "is empty", "at least one regularizer config")
        if self.cost is not None:
            weighted = [part for part in self.parts.values() if part.cost_aware]
            if not weighted:
                raise ConfigError("cost", self.cost, "has no part with groups to weight", "null")
            for part in weighted:
                if part.cost is None:
                    part.set_cost(self.cost)

    def targets(self, model: nn.Module):
        """Union of the parts' layers (multiplier: the first part's that names the layer)."""
        seen: dict[str, tuple[str, nn.Module, float]] = {}
        for part in self.parts.values():
            for target in part.targets(model):
                seen.setdefault(target[0], target)
        return list(seen.values())

    def bind(self, model: nn.Module, example_input: torch.Tensor) -> None:
        for part in self.parts.values():
            part.bind(model, example_input)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        terms = [part(model) for part in self.parts.values() if part.active]
        # a plain sum: a proximal part's 0 is a CPU scalar, which adds to any device
        return sum(terms[1:], terms[0]) if terms else torch.zeros(())

    @property
    def active(self) -> bool:
        return self.strength > 0 and any(part.active for part in self.parts.values())

    @torch.no_grad()
    def after_step(self, model: nn.Module, lr: float) -> None:
        if not self.active:
            return
        for part in self.parts.values():
            part.after_step(model, lr * self.strength)

    def describe(self) -> dict:
        return {
            "type": "Combined",
            "strength": self.strength,
            "cost": self.cost,
            "parts": {name: part.describe() for name, part in self.parts.items()},
        }
