"""The search space: Hydra's sweep syntax as Optuna distributions, a trial's values as
overrides.

    key=interval(a, b)             FloatDistribution(a, b)
    key=tag(log, interval(a, b))   FloatDistribution(a, b, log=True)
    key=tag(int, interval(a, b))   IntDistribution(ceil a, floor b) (with `log` too: log=True)
    key=range(a, b[, step])        integers: IntDistribution(a, last, step), `last` being the
                                   last value Hydra's range gives (it stops before b); floats
                                   or shuffle(...): a choice of its values
    key=choice(x, y, ...) or x,y   CategoricalDistribution of the values, as override text
    key=value, +key=value, ~key    fixed: given to every trial as written

Entries of the sweeper's `params:` come first and the command's sweep overrides after them;
a key given twice takes its last form (a fixed value on the command line removes a default
dimension). Floats drawn by Optuna are written with `float_digits` significant digits, so run
folders, which are named from the overrides, read `regularizer.strength=0.000185`; a rounded
value that would leave the interval is written in full.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)


def flatten_params(params: Mapping[str, Any] | None, prefix: str = "") -> dict[str, str]:
    """`params:` as key -> text: nested nodes (`hydra.sweeper.params.a.b=...` on the command
    line makes {a: {b: ...}}) joined with dots, later keys winning."""
    flat: dict[str, str] = {}
    for key, value in (params or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = "null" if value is None else str(value)
    return flat


def distribution_of(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override (module docstring)."""
    value = override.value()
    tags = set(getattr(value, "tags", ()) or ())
    if isinstance(value, IntervalSweep):
        low, high = float(value.start), float(value.end)
        if "int" in tags:
            return IntDistribution(math.ceil(low), math.floor(high), log="log" in tags)
        return FloatDistribution(low, high, log="log" in tags)
    if isinstance(value, RangeSweep) and not value.shuffle:
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            values = range(value.start, value.stop, value.step)
            if len(values) > 1 and value.step > 0:
                return IntDistribution(values[0], values[-1], step=value.step)
    if isinstance(value, ChoiceSweep | RangeSweep):
        return CategoricalDistribution(list(dict.fromkeys(override.sweep_string_iterator())))
    raise ValueError(f"{override.input_line}: not a sweep Optuna can search")


@dataclass
class SearchSpace:
    """Dimensions (key as written, with any + prefix -> distribution) and fixed overrides."""

    dimensions: dict[str, BaseDistribution]
    fixed: list[str]
    float_digits: int | None = 3

    @classmethod
    def parse(
        cls, params: Mapping[str, str], arguments: Sequence[str], float_digits: int | None = 3
    ) -> SearchSpace:
        texts = [f"{key}={value}" for key, value in params.items()] + list(arguments)
        by_key: dict[str, Override] = {}
        for override in OverridesParser.create().parse_overrides(texts):
            by_key.pop(override.key_or_group, None)  # the last form of a key, at its place
            by_key[override.key_or_group] = override
        dimensions, fixed = {}, []
        for override in by_key.values():
            if override.is_sweep_override():
                dimensions[override.get_key_element()] = distribution_of(override)
            else:
                fixed.append(override.input_line)
        return cls(dimensions, fixed, float_digits)

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """A trial's overrides: the fixed ones, then each dimension at the trial's value."""
        return self.fixed + [
            f"{key}={self.value_text(dist, params[key])}" for key, dist in self.dimensions.items()
        ]

    def value_text(self, distribution: BaseDistribution, value: Any) -> str:
        if isinstance(distribution, FloatDistribution):
            value = float(value)
            if self.float_digits is not None:
                rounded = float(f"{value:.{self.float_digits}g}")
                if distribution.low <= rounded <= distribution.high:
                    value = rounded
            return repr(value)
        return str(value)  # integers, and choices (already override text)

    def probe(self) -> list[str]:
        """Overrides with every dimension at one of its values: composing them catches a key
        that is not in the config before any trial is asked."""
        params = {}
        for key, dist in self.dimensions.items():
            if isinstance(dist, CategoricalDistribution):
                params[key] = dist.choices[0]
            else:
                params[key] = dist.low
        return self.overrides(params)
