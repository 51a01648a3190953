"""The one place for value checks: each check knows what it allows and raises one
`ConfigError(key, value, reason, allowed)`; the caller adds where the key lives (`.at(path)`).

A check is a small frozen object, `check(key, value) -> value` (normalised: a float for a
number, a tuple for sizes), with `allowed` saying in words what passes. Schemas attach them to
their fields (`schema.py`), components call them on their constructor arguments
(`Integer(low=3)("bins", bins)`), and the composition errors of OmegaConf use the same
`allowed` text, so a value gets the same message whichever layer refuses it.

Wording: a value of the wrong kind "must be" the allowed kind; a value of the right kind out
of bounds "is out of range"; a word outside a fixed set "is not allowed".
"""

from __future__ import annotations

import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from sparsenet.errors import ConfigError

MUST_BE = "must be"
OUT_OF_RANGE = "is out of range"
NOT_ALLOWED = "is not allowed"


def plain(value: Any) -> Any:
    """OmegaConf containers as plain lists and dicts (for checks and messages)."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Check:
    allowed: str = ""
    optional: bool = False

    def __call__(self, key: str, value: Any) -> Any:
        value = plain(value)
        if value is None and self.optional:
            return None
        return self.check(key, value)

    def check(self, key: str, value: Any) -> Any:
        raise NotImplementedError

    def text(self) -> str:
        """`allowed`, with "null or" in front when None passes."""
        return f"null or {self.allowed}" if self.optional else self.allowed

    def refuse(self, key: str, value: Any, reason: str = MUST_BE) -> ConfigError:
        if reason == MUST_BE:
            return ConfigError(key, value, f"{MUST_BE} {self.text()}")
        return ConfigError(key, value, reason, self.text())


def _bounds(low=None, above=None, high=None, below=None) -> str:
    parts = [f">= {low:g}"] if low is not None else []
    parts += [f"> {above:g}"] if above is not None else []
    parts += [f"<= {high:g}"] if high is not None else []
    parts += [f"< {below:g}"] if below is not None else []
    return " and ".join(parts)


# Integers go to torch (sizes, counts, seeds), which takes 64-bit values at most: larger ones
# are refused here rather than deep inside torch with an overflow.
INT_LIMIT = 2**63 - 1


@dataclass(frozen=True)
class Integer(Check):
    low: int | None = None
    high: int | None = None
    optional: bool = False

    @property
    def allowed(self) -> str:
        bounds = _bounds(low=self.low, high=self.high)
        return "an integer" + (f" {bounds}" if bounds else "")

    def check(self, key: str, value: Any) -> int:
        if not _is_integer(value):
            raise self.refuse(key, value)
        if abs(value) > INT_LIMIT:
            raise ConfigError(key, value, OUT_OF_RANGE, f"{self.allowed} (64-bit)")
        if (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        ):
            raise self.refuse(key, value, OUT_OF_RANGE)
        return int(value)


@dataclass(frozen=True)
class Number(Check):
    """A finite int or float (not a bool, not a string) within the bounds."""

    low: float | None = None
    above: float | None = None
    high: float | None = None
    below: float | None = None
    optional: bool = False

    @property
    def allowed(self) -> str:
        bounds = _bounds(self.low, self.above, self.high, self.below)
        return "a finite number" + (f" {bounds}" if bounds else "")

    def check(self, key: str, value: Any) -> float:
        if not _is_number(value) or not math.isfinite(value):
            raise self.refuse(key, value)
        if (
            (self.low is not None and value < self.low)
            or (self.above is not None and value <= self.above)
            or (self.high is not None and value > self.high)
            or (self.below is not None and value >= self.below)
        ):
            raise self.refuse(key, value, OUT_OF_RANGE)
        return float(value)


@dataclass(frozen=True)
class Boolean(Check):
    optional: bool = False
    allowed: str = "true or false"

    def check(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.refuse(key, value)
        return value


@dataclass(frozen=True)
class Text(Check):
    optional: bool = False
    allowed: str = "a string"

    def check(self, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.refuse(key, value)
        return value


@dataclass(frozen=True)
class Choice(Check):
    options: tuple[str, ...] = ()
    optional: bool = False

    @property
    def allowed(self) -> str:
        return ", ".join(map(str, self.options))

    def check(self, key: str, value: Any) -> Any:
        if isinstance(value, list | dict) or value not in self.options:
            raise self.refuse(key, value, NOT_ALLOWED)
        return value


@dataclass(frozen=True)
class Sizes(Check):
    """A list of integers >= low (layer widths, an input shape), of `length` items if given."""

    low: int = 1
    length: int | None = None
    optional: bool = False
    what: str = ""

    @property
    def allowed(self) -> str:
        count = f"{self.length} " if self.length is not None else ""
        return f"a list of {count}integers >= {self.low}" + (f" ({self.what})" if self.what else "")

    def check(self, key: str, value: Any) -> tuple[int, ...]:
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise self.refuse(key, value)
        if not all(_is_integer(v) and v >= self.low for v in value):
            raise self.refuse(key, value)
        if self.length is not None and len(value) != self.length:
            raise self.refuse(key, value)
        return tuple(int(v) for v in value)


@dataclass(frozen=True)
class Fractions(Check):
    """A list of numbers in [0, 1] (points of a stage, as fractions of its steps)."""

    optional: bool = False
    allowed: str = "a list of fractions of the stage, in [0, 1]"

    def check(self, key: str, value: Any) -> tuple[float, ...]:
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise self.refuse(key, value)
        if not all(_is_number(v) and 0 <= v <= 1 for v in value):
            raise self.refuse(key, value)
        return tuple(float(v) for v in value)


def describe_type(hint: Any) -> str:
    """What a value of an annotated type looks like, for OmegaConf's type errors."""
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) == 1 and len(typing.get_args(hint)) == 2:  # Optional[X]
        return f"null or {describe_type(args[0])}"
    if typing.get_origin(hint) in (list, tuple) and args:
        return f"a list of {describe_type(args[0]).removeprefix('an ').removeprefix('a ')}s"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


NOT_HASHED_AT = "hash_unless"


def setting(check: Check, default: Any = MISSING, *, hash_unless: Any = MISSING) -> Any:
    """A schema field with its check (default MISSING: the value comes from the YAML file).

    `hash_unless`: for a key added after runs were made, the value that reproduces what those
    runs computed; the key enters a run's identity only when set to something else, so the
    folders of older runs keep their hash (sparsenet/pipeline/resume.py)."""
    metadata = {"check": check}
    if not (isinstance(hash_unless, str) and hash_unless == MISSING):
        metadata[NOT_HASHED_AT] = hash_unless
    return field(default=default, metadata=metadata)


class Schema:
    """Base of the typed config groups (dataclasses whose fields are `setting(check)`): runs
    every field's check, keyed by the field's name (the caller adds the group's path), and
    keeps the normalised value. Fields still MISSING (a schema's placeholder) are skipped."""

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            check = f.metadata.get("check")
            value = getattr(self, f.name)
            if check is None or (isinstance(value, str) and value == MISSING):
                continue
            object.__setattr__(self, f.name, check(f.name, value))
