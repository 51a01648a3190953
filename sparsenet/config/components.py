"""The one way a component is chosen and built from a config node.

A node selects its component with one key: `name` for sparsenet's own families, looked up in
the family's registry (models, datasets, schedules: `model: {name: lenet5, ...}`), or
`_target_` for a class given by its import path (regularizers, and any `torch.optim`
optimizer). Both resolve to a callable in `select`; everything else is shared:

- the node's other keys are the callable's keyword options; each must be a parameter of it
  and of its annotated type. The type check is OmegaConf's: the signature becomes a
  dataclass schema (`options_schema`) that the options are merged into, so a wrong type is
  refused with the option's key, as for the fixed groups (schema.py);
- nested nodes that select a component themselves (a combination's parts, a partial
  regularizer's inner one) are built first, at their own path;
- a `ConfigError` raised by the component (its own range checks, keyed by option name) gets
  the node's path in front (`error.at(path)`); a TypeError/ValueError of a constructor that is
  not ours (torch's optimizers) becomes `<path> (<target>): <its message>`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sparsenet._registry import Registry
from sparsenet.config.checks import Choice, plain
from sparsenet.config.schema import composition_error
from sparsenet.errors import ConfigError

TARGET = "_target_"
PARTIAL = "_partial_"  # Hydra's marker for things built later (optimizers); accepted, ignored
NAME = "name"


def import_target(path: str, target: Any) -> Callable:
    """The callable that `<path>._target_` names (a module attribute by import path)."""
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(f"{path}.{TARGET}", target, "must be an import path", "module.Class")
    module_name, _, attribute = target.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError):
        raise ConfigError(
            f"{path}.{TARGET}", target, "cannot be imported", "an importable module.Class"
        ) from None
    if not callable(found):
        raise ConfigError(f"{path}.{TARGET}", target, "is not callable", "a class or function")
    return found


def select(
    path: str, node: Mapping, registry: Registry | None = None, base: type | None = None
) -> tuple[str, Callable]:
    """(label, callable) of the component the node selects (module docstring). With `base`,
    a `_target_` must name a subclass of it: a config can build components, not call any
    function it names (`_target_: os.system`)."""
    if registry is not None:
        name = node.get(NAME)
        Choice(tuple(registry.names()))(f"{path}.{NAME}", name)
        return name, registry.get(name)
    if TARGET not in node:
        raise ConfigError(
            path, plain(node), f"must be a config with {TARGET}", "module.Class of the component"
        )
    target = node[TARGET]
    component = import_target(path, target)
    if base is not None and not (inspect.isclass(component) and issubclass(component, base)):
        raise ConfigError(
            f"{path}.{TARGET}",
            target,
            f"is not a {base.__module__}.{base.__qualname__}",
            f"a subclass of {base.__qualname__}",
        )
    return str(target), component


# --- option types from the signature --------------------------------------------------------
_SCALARS = (int, float, bool, str)


def _omegaconf_type(hint: Any) -> Any:
    """The annotation as a type OmegaConf checks (int, float, bool, str, Optional, List[int]),
    or Any where it cannot (tensors, callables, mappings of components)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint in _SCALARS:
        return hint
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            inner = _omegaconf_type(rest[0])
            return Any if inner is Any else typing.Optional[inner]  # noqa: UP045
        if all(a in (int, float) for a in rest):  # int | float: a number
            return typing.Optional[float] if len(rest) < len(args) else float  # noqa: UP045
        return Any
    if origin in (list, tuple, Sequence):
        item = args[0] if args else Any
        if item in _SCALARS and (origin is not tuple or len(args) != 2 or args[1] is Ellipsis):
            return list[item]
        return Any
    return Any


@functools.cache
def options_schema(component: Callable) -> type:
    """A dataclass with one field per keyword parameter of `component`, typed from its
    annotations (defaults kept), so OmegaConf can check options against it."""
    if dataclasses.is_dataclass(component):
        target = component  # its fields' annotations, resolved in its module
    else:
        target = component.__init__ if inspect.isclass(component) else component
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - annotations a foreign library cannot resolve
        hints = {}
    # Only types are checked (nothing is built from this schema), so no field needs a default.
    specs = [
        (name, _omegaconf_type(hints.get(name, Any)), dataclasses.field(default=MISSING))
        for name, parameter in inspect.signature(component).parameters.items()
        if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    ]
    return dataclasses.make_dataclass(
        f"{getattr(component, '__name__', 'Component')}Options", specs
    )


def accepts_any_keyword(component: Callable) -> bool:
    parameters = inspect.signature(component).parameters.values()
    return any(p.kind is p.VAR_KEYWORD for p in parameters)


def check_options(
    path: str, label: str, component: Callable, options: Mapping[str, Any], extra=()
) -> dict:
    """`options` as plain values, each a parameter of `component` of its annotated type."""
    options = {str(k): plain(v) for k, v in options.items()}
    parameters = inspect.signature(component).parameters
    if not accepts_any_keyword(component):
        for key in options:
            if key not in parameters:
                allowed = sorted({*parameters, *extra} - {"self", "params"})
                raise ConfigError(
                    f"{path}.{key}",
                    ConfigError.NO_VALUE,
                    f"is not an option of {label}",
                    ", ".join(allowed),
                )
    schema = options_schema(component)
    known = {f.name for f in dataclasses.fields(schema)}
    typed = {k: v for k, v in options.items() if k in known and not _selects(v)}
    try:
        OmegaConf.merge(OmegaConf.structured(schema), typed)
    except OmegaConfBaseException as error:
        raise composition_error(error, path) from None
    return options


def _selects(value: Any) -> bool:
    return isinstance(value, Mapping | DictConfig) and (TARGET in value)


def build(
    path: str,
    node: Mapping,
    registry: Registry | None = None,
    base: type | None = None,
    **extra: Any,
) -> Any:
    """The component the node at `path` selects, built with its options (module docstring).
    `base`: what a `_target_` must subclass, here and in nested nodes; `extra` are arguments
    the pipeline supplies."""
    label, component = select(path, node, registry, base)
    marker = NAME if registry is not None else TARGET
    options = {k: v for k, v in node.items() if k not in (marker, PARTIAL)}
    options = check_options(path, label, component, options)
    built = {
        key: build_nested(f"{path}.{key}", value, base) if _is_nested(value) else value
        for key, value in options.items()
    }
    return call(path, label, component, {**built, **extra})


def _is_nested(value: Any) -> bool:
    if _selects(value):
        return True
    return isinstance(value, Mapping) and any(_selects(v) for v in value.values())


def build_nested(path: str, value: Mapping, base: type | None = None) -> Any:
    """A component node, or a mapping of them (a combination's named parts)."""
    if _selects(value):
        return build(path, value, base=base)
    return {
        str(k): build(f"{path}.{k}", v, base=base) if _selects(v) else v for k, v in value.items()
    }


def call(path: str, label: str, component: Callable, arguments: Mapping[str, Any]) -> Any:
    """component(**arguments), its refusals as ConfigErrors under `path`."""
    try:
        return component(**arguments)
    except ConfigError as error:
        raise error.at(path) from None
    except (TypeError, ValueError) as error:
        if getattr(component, "__module__", "").startswith("sparsenet."):
            raise  # ours raise ConfigError for bad values: anything else is a bug
        raise ConfigError(
            f"{path} ({label})", ConfigError.NO_VALUE, " ".join(str(error).split())
        ) from None


def as_dict(node: Any) -> dict:
    """A config node as a plain dict (resolved)."""
    return dict(plain(node)) if isinstance(node, Mapping | DictConfig) else {}
