"""logger=mlflow: one MLflow run per sparsenet run, in one MLflow experiment per study.

Where: `logger.mlflow.tracking_uri` (a server, a database, Databricks), or when it is null
the local store in `logger.mlflow.local_dir` (default outputs/mlruns): the SQLite database
`mlflow.db` and the folder `artifacts/`, no server needed (MLflow 3 refuses its older
file store unless told otherwise; SQLite is what it recommends without a server):

    mlflow ui --backend-store-uri sqlite:///outputs/mlruns/mlflow.db

The experiment is `logger.mlflow.experiment` (the study's `name`); the run is named by its
folder (its overrides) and holds the flattened config as parameters (less where data and
outputs live), the points of base.py as metrics, and when it ends metrics.json, history.csv,
the stage table (summary.txt), the run's .hydra/ config and the pruned network's `model/`
folder as artifacts. A sweep's summary tables go to a run of their own (sweep.py).

Resuming: the run id is kept in <run>/mlflow_run.json (per tracking URI), so a resumed run
continues its MLflow run. Points of the epoch a killed process left unfinished are already
there; the continued run logs only the steps past the latest `step/` or `epoch/` point. A run
that starts over (resume=false, no usable checkpoint) deletes its earlier MLflow run (MLflow's
soft delete: restorable) and starts a new one.

Cost: metrics are buffered and sent as one `log_batch` per epoch, from the logger's own
thread (base.Worker). MLflow retries an unreachable server with growing pauses (7 times by
default): unless the environment sets them, MLFLOW_HTTP_REQUEST_MAX_RETRIES is 2 and
MLFLOW_HTTP_REQUEST_TIMEOUT 10 s here, so a dead server is given up within seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from sparsenet.loggers.base import THREAD_PREFIX, RunEnd, RunInfo, Scalars, hparams
from sparsenet.runtime import atomic_write_json

RUN_FILE = "mlflow_run.json"  # {tracking URI: run id}, in the run folder
KEPT_PREFIXES = ("step/", "epoch/")
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
MAX_PARAM_LENGTH = 500  # MLflow's limit before 2.x raised it (older servers still apply it)
BATCH = 1000  # metrics per log_batch call (MLflow's limit)
PARAMS_BATCH = 100  # params per log_batch call (MLflow's limit)
ARTIFACTS = ("metrics.json", "history.csv")
HYDRA_FILES = ("config.yaml", "overrides.yaml")  # the run's composed config and its command


def mlflow_key(key: str) -> str:
    """`key` with the characters MLflow refuses in names (it takes letters, digits, _ - . /
    space and :) as '_': a regularizer's layer pattern `features.*` or `<output>`."""
    return re.sub(r"[^\w\-. /:]", "_", key)


def _not_from_loggers(record: logging.LogRecord) -> bool:
    return not record.threadName.startswith(THREAD_PREFIX)


def local_uri(local_dir: str | Path) -> str:
    return f"sqlite:///{Path(local_dir).resolve() / 'mlflow.db'}"


@contextlib.contextmanager
def store_lock(local_dir: Path | None) -> Iterator[None]:
    """Parallel runs sharing the local store: one at a time creates its tables (MLflow's
    migrations race) and its experiments (names are unique)."""
    if local_dir is None:
        yield
        return
    local_dir.mkdir(parents=True, exist_ok=True)
    with open(local_dir / "mlflow.db.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def experiment_id(client, name: str, artifacts: Path | None) -> str:
    """The experiment called `name`, created if need be (in the local store with its
    artifacts under `artifacts/`, not MLflow's default ./mlruns of the working directory)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    location = (artifacts / name).as_uri() if artifacts is not None else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by another run of the sweep (remote server)
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


class MlflowLogger:
    name = "mlflow"

    def __init__(
        self, tracking_uri: str | None, local_dir: str, experiment: str, every_n_steps: int
    ) -> None:
        self.every_n_steps = every_n_steps
        self.local_dir = None if tracking_uri else Path(local_dir).resolve()
        self.tracking_uri = tracking_uri or local_uri(local_dir)
        self.experiment = experiment
        self.client = None
        self.run_id: str | None = None
        self.run_dir: Path | None = None
        self.floor = -1
        self.pending: list = []

    def start(self, info: RunInfo) -> bool:
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        # After the import, which sets mlflow's level: its INFO lines (creating the tables)
        # are not the run's. Nor are urllib3's retry warnings on this logger's thread: the
        # outcome is one warning (base.Worker), not one line per attempt.
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        retries = logging.getLogger("urllib3.connectionpool")
        if _not_from_loggers not in retries.filters:
            retries.addFilter(_not_from_loggers)

        self.run_dir = info.run_dir
        with store_lock(self.local_dir):
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
            artifacts = self.local_dir / "artifacts" if self.local_dir else None
            exp = experiment_id(self.client, self.experiment, artifacts)
        previous = self._recorded_run()
        if info.replay and previous is not None:
            return False
        if previous is not None and not info.fresh:
            self.run_id = previous
            self.client.update_run(previous, status="RUNNING")
            self.floor = max(info.resume_step, self._latest_step())
            return True
        if previous is not None:
            # The run starts over (resume=false, or no usable checkpoint): its earlier MLflow
            # run is superseded, as its files are. Deleted the way the UI deletes (restorable
            # from the experiment's deleted runs), so the experiment keeps one run per job.
            self.client.delete_run(previous)
        tags = {
            "mlflow.runName": info.run_name,
            "sparsenet.run_dir": str(info.run_dir.resolve()),
            "sparsenet.config_hash": info.config_hash,
        }
        self.run_id = self.client.create_run(exp, tags=tags).info.run_id
        self._record_run()
        params = [
            Param(mlflow_key(k), str(v)[:MAX_PARAM_LENGTH]) for k, v in hparams(info.config).items()
        ]
        for start in range(0, len(params), PARAMS_BATCH):
            self.client.log_batch(self.run_id, params=params[start : start + PARAMS_BATCH])
        return True

    # --- the run's id in its folder ------------------------------------------------------------
    def _recorded_run(self) -> str | None:
        """The run id this folder recorded for this tracking URI, if MLflow still has it."""
        try:
            recorded = json.loads((self.run_dir / RUN_FILE).read_text())
        except (OSError, ValueError):
            return None
        run_id = recorded.get(self.tracking_uri) if isinstance(recorded, dict) else None
        if not isinstance(run_id, str) or self._status(run_id) is None:
            return None
        return run_id

    def _record_run(self) -> None:
        path = self.run_dir / RUN_FILE
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError):
            recorded = {}
        recorded = recorded if isinstance(recorded, dict) else {}
        atomic_write_json(path, {**recorded, self.tracking_uri: self.run_id})

    def _status(self, run_id: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return None
        return None if run.info.lifecycle_stage == "deleted" else run.info.status

    def _latest_step(self) -> int:
        steps = [
            m.step
            for key in ("step/loss", "epoch/test_acc")
            for m in self.client.get_metric_history(self.run_id, key)
        ]
        return max(steps, default=-1)

    # --- points ----------------------------------------------------------------------------------
    def log_scalars(self, values: Scalars, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending.extend(
            Metric(mlflow_key(key), value, now, step)
            for key, value in values.items()
            if not (step <= self.floor and key.startswith(KEPT_PREFIXES))
        )

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for start in range(0, len(pending), BATCH):
            self.client.log_batch(self.run_id, metrics=pending[start : start + BATCH])

    def finish(self, end: RunEnd) -> None:
        """Final metrics, the status tag and the run's files as artifacts."""
        self.log_scalars(end.final, end.step)
        self.flush()
        self.client.set_tag(self.run_id, "sparsenet.status", end.status)
        if end.table:
            self.client.log_text(self.run_id, end.table + "\n", "summary.txt")
        for name in ARTIFACTS:
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        for name in HYDRA_FILES:
            if (self.run_dir / ".hydra" / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / ".hydra" / name), "hydra")
        if (self.run_dir / "model").is_dir():
            self.client.log_artifacts(self.run_id, str(self.run_dir / "model"), "model")

    def close(self, status: str) -> None:
        if self.run_id is not None:
            self.flush()
            self.client.set_terminated(self.run_id, status=status)
