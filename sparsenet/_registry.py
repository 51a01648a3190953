"""A small name -> builder registry shared by models, datasets and regularizers.

Each family module registers its builders with a decorator; discovery, the CLI's
`sparsenet list` and the parametrised tests all read the same registry.
"""

from __future__ import annotations

import fnmatch
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any


class Registry:
    """Maps names to builder callables for one kind of component ("model", "dataset", ...)."""

    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind
        self._package = package
        self._builders: dict[str, Callable[..., Any]] = {}
        self._imported = False

    def register(self, name: str | None = None) -> Callable[[Callable], Callable]:
        def decorator(builder: Callable) -> Callable:
            key = name or builder.__name__
            if key in self._builders and self._builders[key] is not builder:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            self._builders[key] = builder
            return builder

        return decorator

    def _import_all(self) -> None:
        """Import every module of the family package, so one new file is enough to add a member."""
        if self._imported:
            return
        self._imported = True
        package = importlib.import_module(self._package)
        for info in pkgutil.iter_modules(getattr(package, "__path__", [])):  # a module: itself
            if not info.name.startswith("_"):
                importlib.import_module(f"{self._package}.{info.name}")

    def names(self, pattern: str = "*") -> list[str]:
        self._import_all()
        return sorted(n for n in self._builders if fnmatch.fnmatch(n, pattern))

    def get(self, name: str) -> Callable[..., Any]:
        self._import_all()
        if name not in self._builders:
            raise KeyError(f"unknown {self.kind} '{name}'; available: {', '.join(self.names())}")
        return self._builders[name]

    def build(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)
