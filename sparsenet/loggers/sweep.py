"""Hydra callback: a sweep's summary tables in MLflow, beside its runs.

Registered in conf/config.yaml under `hydra.callbacks`, before `sweep_summary`: Hydra calls
`on_multirun_end` in reverse order, so this runs after SweepSummary has written summary.csv,
summary.md, summary.tex, failed.csv and the accuracy plot into the sweep folder. With
logger=mlflow those files become the artifacts of one MLflow run named `sweep summary`
(tag sparsenet.sweep = the sweep folder) in the study's experiment; a sweep run again with the
same name replaces them in the same MLflow run. Like every logger call, a failure is one
warning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sparsenet.pipeline.distributed import launcher_rank

log = logging.getLogger(__name__)

RUN_NAME = "sweep summary"
SWEEP_TAG = "sparsenet.sweep"
SUFFIXES = (".csv", ".md", ".tex", ".png", ".pdf")  # what SweepSummary writes


def log_sweep_summary(folder: Path, options) -> str | None:
    """The summary files at the top of `folder` as artifacts of the sweep's MLflow run, in
    the experiment of `options` (MlflowLoggerConfig); the run's id, None when nothing to log."""
    from sparsenet.loggers.mlflow import MlflowLogger, experiment_id, store_lock

    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in SUFFIXES)
    if not files:
        return None
    backend = MlflowLogger(
        options.tracking_uri, options.local_dir, options.experiment, options.every_n_steps
    )
    from mlflow.tracking import MlflowClient

    with store_lock(backend.local_dir):
        client = MlflowClient(tracking_uri=backend.tracking_uri)
        artifacts = backend.local_dir / "artifacts" if backend.local_dir else None
        experiment = experiment_id(client, options.experiment, artifacts)
    sweep = str(folder.resolve())
    found = client.search_runs(
        [experiment], filter_string=f"tags.`{SWEEP_TAG}` = '{sweep}'", max_results=1
    )
    if found:
        run_id = found[0].info.run_id
    else:
        tags = {"mlflow.runName": RUN_NAME, SWEEP_TAG: sweep}
        run_id = client.create_run(experiment, tags=tags).info.run_id
    for path in files:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return run_id


class SweepTracking(Callback):
    """`hydra.callbacks.sweep_tracking: {_target_: sparsenet.loggers.sweep.SweepTracking}`."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if launcher_rank() != 0:
            return
        try:
            from sparsenet.pipeline.settings import parse_logger

            node = config.get("logger")
            options = (
                parse_logger(OmegaConf.to_container(node, resolve=True)).mlflow if node else None
            )
            if options is not None:
                log_sweep_summary(Path(str(config.hydra.sweep.dir)), options)
        except Exception as error:  # noqa: BLE001 - the sweep's results are on disk regardless
            log.warning(
                "logger mlflow: the sweep's summary was not logged: %s: %s",
                type(error).__name__,
                " ".join(str(error).split())[:300],
            )
