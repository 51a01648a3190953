"""What a run tells its tracking loggers, and the fan-out that keeps them from hurting it.

`Loggers` turns the run's events into points and hands each to every chosen backend:

    step/loss, step/reg, step/lr   every `every_n_steps` optimizer steps: the batch's
                                   CE + R, R, and the lr the step used
    epoch/<history column>         at each epoch's end: loss, reg, train_acc, test_acc,
                                   test_loss, lr (the epoch's history.csv row)
    epoch/strength                 the regularizer's strength, in regularized stages (constant
                                   unless a regularizer adapts it)
    epoch/units_below_threshold    share of the prunable units whose score
                                   min(in_norm, out_norm) <= prune.threshold
                                   (sparsenet/pruning/groups.py), i.e. what the threshold
                                   criterion would remove now
    <stage>/<figure>               after each stage: test_acc, params, macs, latency_ms, ...
    <stage>/units/<layer>          units kept per Conv/Linear layer after the stage
    final/<summary key>            at the end; with the flattened config as hyperparameters

Steps are global: optimizer steps since the run began, over every training stage. With S
steps per epoch (one loader for every stage) the end of history row i (0-based) is step
(i + 1) * S, so a resumed run, a replayed history and the live run put every point at the
same step.

A backend (tensorboard.py, mlflow.py) is a `Logger`. Each runs on a thread of its own
(`Worker`), so a slow or unreachable tracking server never stalls a training step; its first
error disables it with one warning and the run goes on (its csv files are complete).
Only rank 0 of a data-parallel run logs: the others get an empty `Loggers`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from sparsenet.pipeline.stages import RunContext
    from sparsenet.regularizers.base import Regularizer

log = logging.getLogger(__name__)

Scalars = dict[str, float]
THREAD_PREFIX = "sparsenet-logger-"  # the backends' threads: sparsenet-logger-<name>


@dataclass(frozen=True)
class RunInfo:
    """What a backend needs to find or start the run's tracking record."""

    run_dir: Path
    run_name: str  # the run folder's name (its overrides)
    config: dict  # the resolved config
    config_hash: str
    resume_step: int  # global step the run continues from (its checkpoint's)
    fresh: bool  # no checkpoint: the run starts over, an earlier record is replaced
    replay: bool = False  # a completed run logged from its files (nothing trains)


@dataclass(frozen=True)
class RunEnd:
    """What a backend records when the run's files are written."""

    hparams: dict[str, Any]  # the flattened config (see `hparams`)
    final: Scalars  # final/<summary key>
    status: str  # metrics.json's: completed | failed
    step: int  # the global step of the last point
    table: str  # the stage table the command prints (summary.txt)


class Logger(Protocol):
    """A tracking backend. Calls come in order from one thread; any may raise.

    A backend that continues a record (a resumed run) drops `step/` and `epoch/` points at or
    below the step its record already reaches: the fan-out hands it the whole history again,
    and only the new points are kept."""

    name: str
    every_n_steps: int

    def start(self, info: RunInfo) -> bool:
        """Open a new record or continue the run's own. False: the record already holds this
        completed run (info.replay): log nothing more."""

    def log_scalars(self, values: Scalars, step: int) -> None: ...

    def flush(self) -> None: ...

    def finish(self, end: RunEnd) -> None:
        """The run's config and final figures, after its files are written."""

    def close(self, status: str) -> None:
        """FINISHED, FAILED or KILLED (an exception or a signal left the run)."""


class Worker:
    """One backend's calls, in order, on a daemon thread. The first exception disables the
    backend with one warning; later calls are dropped."""

    def __init__(self, backend: Logger) -> None:
        self.backend = backend
        self.failed = False
        self.skip = False  # start() said the record already holds this run
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._loop, name=THREAD_PREFIX + backend.name, daemon=True
        )
        self._thread.start()

    def submit(self, method: str, *args: Any) -> None:
        if not (self.failed or self.skip):
            self._queue.put((method, args))

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            method, args = item
            if self.failed or self.skip:
                continue
            try:
                result = getattr(self.backend, method)(*args)
                if method == "start":
                    self.skip = result is False
            except Exception as error:  # noqa: BLE001 - any backend error: drop the backend
                if self.failed:  # close() gave up on it and said so already
                    continue
                self.failed = True
                log.warning(
                    "logger %s disabled after an error; the run goes on (history.csv and "
                    "metrics.json are complete): %s: %s",
                    self.backend.name,
                    type(error).__name__,
                    " ".join(str(error).split())[:300],
                )

    def close(self, deadline: float) -> None:
        """Let the queued calls finish, until `deadline` (time.monotonic()) at most."""
        self._queue.put(None)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive() and not self.failed:
            self.failed = True
            log.warning(
                "logger %s: gave up waiting for its last calls (a slow tracking server?); "
                "the run's own files are complete",
                self.backend.name,
            )


def flatten(config: Mapping, prefix: str = "") -> dict[str, Any]:
    """{'train.epochs': 10, ...}: nested mappings joined by dots, leaves as they are."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def numbers(values: Mapping[str, Any], prefix: str) -> Scalars:
    """The int/float entries (not bools) as floats, keys prefixed."""
    return {
        f"{prefix}{k}": float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def stage_points(stage: str, figures: Mapping[str, Any]) -> Scalars:
    """`<stage>/<figure>` and `<stage>/units/<layer>` from metrics.json's stage entry."""
    points = numbers(figures, f"{stage}/")
    for layer in figures.get("layers") or []:
        points[f"{stage}/units/{layer['name']}"] = float(layer["units_kept"])
    return points


def epoch_points(row: Mapping[str, Any]) -> Scalars:
    """`epoch/<column>` from a history.csv row (its stage and epoch number aside)."""
    return numbers({k: v for k, v in row.items() if k not in ("stage", "epoch")}, "epoch/")


class UnitShare:
    """Share of prunable units with score <= threshold, from the unit groups of the current
    model shape (built once per shape: the graph trace costs one forward pass in eval mode,
    which changes no state). None when the model's graph cannot be built."""

    def __init__(self, threshold: float, input_shape: tuple[int, ...]) -> None:
        self.threshold = threshold
        self.input_shape = input_shape
        self._shapes: tuple | None = None
        self._groups = None

    def __call__(self, model: torch.nn.Module) -> float | None:
        from sparsenet.pruning.groups import unit_groups

        shapes = tuple(tuple(p.shape) for p in model.parameters())
        try:
            if shapes != self._shapes:
                self._shapes, self._groups = shapes, None
                device = next(model.parameters()).device
                example = torch.zeros(1, *self.input_shape, device=device)
                self._groups = unit_groups(model, example)
            if self._groups is None or not len(self._groups):
                return None
            scores = torch.cat([norms.score for norms in self._groups.unit_norms()])
        except Exception as error:  # noqa: BLE001 - a figure the run can go without
            log.debug("no units_below_threshold for this model: %s", error)
            return None
        return float((scores <= self.threshold).float().mean())


@dataclass
class Loggers:
    """The chosen backends of one run (none: every call is a no-op). Hooks:
    `steps` (per step, engine), `epoch_end` (stages), `stage_end`, `finish` (run)."""

    workers: list[Worker] = field(default_factory=list)
    steps_per_epoch: int = 1
    close_timeout_s: float = 60.0
    unit_share: UnitShare | None = None
    logged_rows: int = 0  # history rows already handed to the backends
    last_step: int = 0  # the latest global step a point was logged at
    status: str | None = None  # set by finish()

    def __bool__(self) -> bool:
        return bool(self.workers)

    def _live(self) -> list[Worker]:
        return [w for w in self.workers if not (w.failed or w.skip)]

    def _submit(self, method: str, *args: Any) -> None:
        for worker in self._live():
            worker.submit(method, *args)

    # --- hooks -----------------------------------------------------------------------------
    def steps(self, ctx: RunContext, optimizer: torch.optim.Optimizer) -> Callable | None:
        """The engine's per-step callback for the coming epoch, `on_step(loss, reg)` with the
        batch's detached loss (CE + R) and R (None when unregularized); None when no backend
        is live. A value is read (`float`, a device sync on GPU) only every N steps."""
        live = [(w, w.backend.every_n_steps) for w in self._live()]
        if not live:
            return None
        step = len(ctx.history) * self.steps_per_epoch

        def on_step(loss: torch.Tensor, reg: torch.Tensor | None) -> None:
            nonlocal step
            step += 1
            due = [w for w, every in live if step % every == 0]
            if not due:
                return
            values = {"step/loss": float(loss), "step/lr": float(optimizer.param_groups[0]["lr"])}
            if reg is not None:
                values["step/reg"] = float(reg)
            for worker in due:
                worker.submit("log_scalars", values, step)

        return on_step

    def epoch_end(self, ctx: RunContext, regularizer: Regularizer | None) -> None:
        """The epoch's history row (and any not logged yet), the strength, the unit share."""
        if not self._live():
            return
        extra: Scalars = {}
        if regularizer is not None and regularizer.active:
            extra["epoch/strength"] = float(regularizer.strength)
        if self.unit_share is not None:
            share = self.unit_share(ctx.model)
            if share is not None:
                extra["epoch/units_below_threshold"] = share
        self._log_rows(ctx.history, extra)
        self._submit("flush")

    def stage_end(self, ctx: RunContext, stage: str, figures: Mapping[str, Any]) -> None:
        """The stage's figures at the step it ended (history rows a reused dense stage brought
        are logged first)."""
        if not self._live():
            return
        self._log_rows(ctx.history)
        self.last_step = self._step(ctx.history)
        self._submit("log_scalars", stage_points(stage, figures), self.last_step)
        self._submit("flush")

    def finish(self, metrics: Mapping[str, Any]) -> None:
        """Final figures and the config as hyperparameters, after the run's files are
        written (backends attach them)."""
        self.status = str(metrics.get("status"))
        if not self._live():
            return
        end = RunEnd(
            hparams=hparams(metrics.get("config") or {}),
            final=numbers(metrics.get("summary") or {}, "final/"),
            status=self.status,
            step=self.last_step,
            table=stage_table(metrics),
        )
        self._submit("finish", end)

    # --- the rest --------------------------------------------------------------------------
    def _step(self, history: list) -> int:
        return len(history) * self.steps_per_epoch

    def _log_rows(self, history: list, extra: Scalars | None = None) -> None:
        for index in range(self.logged_rows, len(history)):
            values = epoch_points(history[index])
            if index == len(history) - 1 and extra:
                values.update(extra)
            self._submit("log_scalars", values, (index + 1) * self.steps_per_epoch)
        self.logged_rows = len(history)
        self.last_step = max(self.last_step, self._step(history))

    def replay(self, history: list[dict], stages: Mapping[str, Mapping], metrics: Mapping) -> None:
        """A completed run, from its files, for backends that have no record of it."""
        done: list[dict] = []
        for stage, figures in stages.items():
            done.extend(row for row in history if row.get("stage") == stage)
            self._log_rows(done)
            self.last_step = self._step(done)
            self._submit("log_scalars", stage_points(stage, figures), self.last_step)
        self._submit("flush")
        self.finish(metrics)

    def close(self, status: str | None = None) -> None:
        """End every backend's record (FINISHED / FAILED / KILLED) and wait for the queued
        calls, `close_timeout_s` at most in all."""
        status = status or {"completed": "FINISHED"}.get(self.status or "", "FAILED")
        deadline = time.monotonic() + self.close_timeout_s
        for worker in self.workers:
            worker.submit("close", status)
        for worker in self.workers:
            worker.close(deadline)

    def __enter__(self) -> Loggers:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        elif issubclass(kind, KeyboardInterrupt | SystemExit):
            self.close("KILLED")
        else:
            self.close("FAILED")


def stage_table(metrics: Mapping[str, Any]) -> str:
    """The table `sparsenet` prints at the end ('' for a run without one)."""
    from sparsenet.reporting import format_stage_table

    try:
        return format_stage_table(dict(metrics))
    except Exception as error:  # noqa: BLE001 - a failed run's partial stages, say
        log.debug("no stage table: %s", error)
        return ""


# Config keys that are not hyperparameters: where data and outputs live, how progress shows.
NOT_HPARAMS = ("dataset.root", "dataset.cache_dir", "dense.cache_dir", "logger.", "reference.")


def hparams(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened config as hyperparameters: numbers, bools and strings as they are, None
    as 'null', anything else (lists) as text."""
    flat = flatten(config)
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if key.startswith(NOT_HPARAMS) or key in ("resume",):
            continue
        if value is None:
            value = "null"
        elif not isinstance(value, bool | int | float | str):
            value = str(value)
        out[key] = value
    return out
