"""`hydra/sweeper=front_search`: the sweeper's settings, registered in Hydra's ConfigStore.

Hydra imports every public module of `hydra_plugins` at start-up (any sparsenet command), so
this module and `front_search.py` import nothing heavy; Optuna is imported when a search runs.
"""

# No `from __future__ import annotations` here: Hydra's scan runs this module before it is in
# sys.modules, where dataclasses look string annotations up.
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

# The search space when the command lists none: the regularizer's strength, on a log scale.
DEFAULT_PARAMS = {"regularizer.strength": "tag(log, interval(1e-5, 1e-2))"}


@dataclass
class FrontSearchConf:
    _target_: str = "hydra_plugins.sparsenet_front_search.front_search.FrontSearchSweeper"
    # The second objective, minimized: % of the dense network's MACs (macs) or parameters
    # (params) kept after the final stage; the first is its test accuracy, maximized.
    cost: str = "macs"
    # Trials the study holds when the search ends (completed and failed); a re-run of the
    # same command runs only the missing ones, a larger n_trials extends the search.
    n_trials: int = 20
    # Trials asked and launched together (one launcher batch); null: hydra.launcher.n_jobs
    # when the launcher has it (hydra/launcher=parallel), else 1.
    n_jobs: int | None = None
    # Optuna sampler: tpe (multi-objective TPE), nsgaii or random; seed makes it repeatable.
    sampler: str = "tpe"
    seed: int | None = 0
    # Keyword arguments of the sampler's class, e.g. {population_size: 12} for nsgaii.
    sampler_options: dict[str, Any] = field(default_factory=dict)
    # Optuna storage URL; null: sqlite:///<sweep dir>/optuna.db.
    storage: str | None = None
    # Study name in the storage; null: the sweep's `name`.
    study_name: str | None = None
    # Significant digits of sampled floats in the runs' overrides (and folder names);
    # null: every digit Optuna drew.
    float_digits: int | None = 3
    # Search space: key -> interval(a, b) | tag(log, interval(a, b)) | tag(int, interval(a, b))
    # | range(a, b[, step]) | choice(a, b, ...); a plain value is fixed. Sweep overrides on the
    # command line add to it (and win over it).
    params: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PARAMS))


ConfigStore.instance().store(
    group="hydra/sweeper",
    name="front_search",
    node=FrontSearchConf,
    provider="sparsenet_front_search",
)
