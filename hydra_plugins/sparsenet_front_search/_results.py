"""A trial's objectives from its run: (test accuracy, % cost kept), or why there are none.

The task function (`sparsenet.cli`) returns the run's `summary` when the run completed, None
when its loss diverged (metrics.json then says `failed`), and raises on bad input (Hydra's
JobReturn then carries the error, status FAILED). So, in order:

1. the job raised: the trial failed, with the error's first line;
2. the job returned a summary with both figures: those;
3. otherwise the run folder's metrics.json decides: `completed` with a summary gives the
   figures; any other status, no file, or a file that cannot be read fails the trial with
   that reason. This also covers a launcher that lost the job's return value (a worker
   killed, a Slurm job that ended without one) after the run had written its results.

A figure that is not a finite number fails the trial too: Optuna cannot rank it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus

ACCURACY = "test_acc"
COST_KEYS = {"macs": "macs_kept_pct", "params": "params_kept_pct"}
METRICS_FILE = "metrics.json"


@dataclass
class Outcome:
    values: tuple[float, float] | None  # (accuracy, cost); None: the trial failed
    reason: str = ""  # why it failed


def first_line(error: BaseException | str) -> str:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else "no message"


def figures(summary: Any, cost_key: str) -> tuple[float, float] | None:
    """(accuracy, cost) when the summary has both as finite numbers."""
    if not isinstance(summary, dict):
        return None
    try:
        values = float(summary[ACCURACY]), float(summary[cost_key])
    except (KeyError, TypeError, ValueError):
        return None
    return values if all(math.isfinite(v) for v in values) else None


def job_output_dir(job: JobReturn | None) -> Path | None:
    """Where the job ran, as the launcher reports it."""
    try:
        return Path(str(job.hydra_cfg.hydra.runtime.output_dir))  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - no JobReturn, or one without its Hydra config
        return None


def outcome(job: JobReturn | None, run_dir: Path | None, cost: str) -> Outcome:
    """The trial's result (module docstring). `run_dir` is where the run was expected; the
    launcher's own record of the job's folder wins when there is one."""
    cost_key = COST_KEYS[cost]
    if job is not None and job.status != JobStatus.UNKNOWN:
        try:
            returned = job.return_value  # raises the job's error (and says which job)
        except Exception as error:  # noqa: BLE001 - whatever the run raised fails the trial
            return Outcome(None, first_line(error))
        values = figures(returned, cost_key)
        if values is not None:
            return Outcome(values)
    folder = job_output_dir(job) or run_dir
    if folder is None:
        return Outcome(None, "the launcher returned no result and the run folder is unknown")
    return from_metrics(folder / METRICS_FILE, cost_key)


def from_metrics(path: Path, cost_key: str) -> Outcome:
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        return Outcome(None, f"no {path.name} in {path.parent} (the run did not finish)")
    except (OSError, ValueError) as error:
        return Outcome(None, f"{path} cannot be read: {first_line(error)}")
    if not isinstance(metrics, dict):
        return Outcome(None, f"{path} is not a metrics record")
    status = metrics.get("status")
    if status != "completed":
        failure = metrics.get("failure") or {}
        detail = metrics.get("error") or (
            f"diverged in {failure.get('stage', '?')} epoch {failure.get('epoch', '?')}: "
            f"{failure.get('reason', 'no reason recorded')}"
            if isinstance(failure, dict) and failure
            else ""
        )
        return Outcome(None, f"run {status}" + (f": {first_line(detail)}" if detail else ""))
    values = figures(metrics.get("summary"), cost_key)
    if values is None:
        return Outcome(None, f"{path}: the summary has no finite {ACCURACY} and {cost_key}")
    return Outcome(values)
