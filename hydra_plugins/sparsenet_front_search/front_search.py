"""The Sweeper Hydra instantiates for `hydra/sweeper=front_search` (settings: config.py).

It only checks that Optuna is there and sets up the launcher; the search itself is
`_search.py`, imported when a sweep starts so that every other sparsenet command pays nothing
for the plugin.
"""

from __future__ import annotations

from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from sparsenet.errors import ConfigError

EXTRA = "search"


def check_optuna() -> None:
    """One line naming the extra, before anything runs, when Optuna cannot be imported."""
    try:
        import optuna  # noqa: F401
    except ImportError as error:
        missing = error.name == "optuna"
        raise ConfigError(
            "hydra/sweeper=front_search needs the optuna package, "
            + ("which is not installed" if missing else f"which fails to import ({error})")
            + f': pip install "sparsenet[{EXTRA}]" (from a checkout: pip install -e ".[{EXTRA}]")'
        ) from error


class FrontSearchSweeper(Sweeper):
    """Optuna multi-objective search of the accuracy-cost front (package docstring)."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings  # FrontSearchConf's fields, checked by _search.SearchSettings
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        check_optuna()
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from ._search import run_search

        assert self.config is not None and self.hydra_context is not None
        return run_search(self, arguments)
