"""Tracking loggers: where a run shows up besides its own files (`logger=` config group).

    logger=csv                     (default) history.csv and metrics.json only: every run
                                   writes them, whichever loggers are chosen
    logger=tensorboard             + event files in <run>/tensorboard/ (tensorboard.py)
    logger=mlflow                  + an MLflow run in a local store or on a server (mlflow.py)
    logger=[tensorboard,mlflow]    several at once

What is logged and why a backend can never fail or stall a run: base.py. Which loggers a run
uses does not change what it computes, so it is no part of the run's identity
(pipeline/resume.py): the same command with another logger finds the same run folder, and a
completed run is then logged from its files (`track_completed`) by a backend that has no
record of it, instead of training again.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from sparsenet.errors import ConfigError
from sparsenet.loggers.base import Loggers, RunInfo

if TYPE_CHECKING:
    from sparsenet.pipeline.settings import RunSettings
    from sparsenet.pipeline.stages import RunContext

# logger -> the module it needs, which the extra of the same name installs.
REQUIRED_MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}


def check_installed(names: tuple[str, ...]) -> None:
    """Refuse, before any work, a chosen logger whose package is missing: one line naming
    the extra that installs it."""
    for name in names:
        module = REQUIRED_MODULES.get(name)
        if module is not None and importlib.util.find_spec(module) is None:
            raise ConfigError(
                "logger",
                name,
                f"needs the {module} package, which is not installed",
                f'pip install "sparsenet[{name}]" (from a checkout: pip install -e ".[{name}]"), '
                "or another logger",
            )


def _backends(settings: RunSettings) -> list:
    chosen = settings.logger
    backends = []
    if chosen.tensorboard is not None:
        from sparsenet.loggers.tensorboard import TensorBoardLogger

        backends.append(TensorBoardLogger(chosen.tensorboard.every_n_steps))
    if chosen.mlflow is not None:
        from sparsenet.loggers.mlflow import MlflowLogger

        options = chosen.mlflow
        backends.append(
            MlflowLogger(
                options.tracking_uri, options.local_dir, options.experiment, options.every_n_steps
            )
        )
    return backends


def _open(ctx: RunContext, *, fresh: bool, replay: bool) -> Loggers:
    settings = ctx.settings
    if not ctx.ranks.is_main or not settings.logger.names:
        return Loggers()
    from sparsenet.loggers.base import UnitShare, Worker

    steps_per_epoch = max(len(ctx.train_loader), 1)
    info = RunInfo(
        run_dir=Path(ctx.run_dir),
        run_name=Path(ctx.run_dir).name,
        config=settings.config,
        config_hash=ctx.config_hash,
        resume_step=len(ctx.history) * steps_per_epoch,
        fresh=fresh,
        replay=replay,
    )
    workers = []
    for backend in _backends(settings):
        worker = Worker(backend)
        worker.submit("start", info)
        workers.append(worker)
    mlflow = settings.logger.mlflow
    return Loggers(
        workers=workers,
        steps_per_epoch=steps_per_epoch,
        close_timeout_s=mlflow.close_timeout_s if mlflow is not None else 60.0,
        unit_share=UnitShare(settings.prune.threshold, tuple(ctx.data.input_shape)),
    )


def open_loggers(ctx: RunContext, *, resumed: bool) -> Loggers:
    """The run's loggers (rank 0's; empty elsewhere, or with logger=csv), after `ctx` was
    put back from its checkpoint if `resumed`. Use as a context manager: leaving it ends the
    tracking records (FAILED or KILLED when an exception or signal ends the run)."""
    return _open(ctx, fresh=not resumed, replay=False)


def track_completed(ctx: RunContext, metrics: dict, history: list[dict]) -> None:
    """A completed run that is skipped (the same command again, maybe with another logger):
    each chosen backend with no record of it gets one from metrics.json and history.csv
    (per-epoch points, stage figures, final figures, artifacts; not the per-step points,
    which no file keeps)."""
    with _open(ctx, fresh=False, replay=True) as loggers:
        if loggers:
            loggers.replay(history, metrics.get("stages") or {}, metrics)


__all__ = ["Loggers", "RunInfo", "check_installed", "open_loggers", "track_completed"]
