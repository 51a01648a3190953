"""Hydra callback: when a sweep (`sparsenet -m ...`) ends, summarize its folder.

Registered in conf/config.yaml under `hydra.callbacks`. It writes summary.csv, summary.md,
summary.tex (and failed.csv when some run failed) and accuracy_vs_params.png/.pdf into the
sweep folder, and prints the markdown table.

Hydra calls `on_multirun_end` only when every job returned; when a job raises, the sweep stops
with the error instead. So `on_multirun_start` also registers the same summary to run when the
process exits: a sweep that failed half-way (or was stopped with Ctrl-C) still leaves the
summary of the runs that completed and the list of the others.
"""

from __future__ import annotations

import atexit
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sparsenet.errors import UserInputError
from sparsenet.pipeline.distributed import launcher_rank

log = logging.getLogger(__name__)

ACCURACY_PLOT = "accuracy_vs_params"


def summarize_folder(folder: Path, plot: bool = True, echo: bool = True) -> list[Path]:
    """Summary files (and the accuracy plot) of every run under `folder`, in `folder`."""
    from sparsenet.reporting.export import format_markdown, write_summary
    from sparsenet.reporting.runs import find_runs
    from sparsenet.reporting.summary import build_summary

    runs = find_runs([folder])
    summary = build_summary(runs, root=folder)
    written = write_summary(summary, folder)
    if plot and len(summary.table):
        from sparsenet.reporting.plots import plot_accuracy_vs_kept

        written += plot_accuracy_vs_kept(summary, folder / ACCURACY_PLOT)
    if echo:
        print(format_markdown(summary, title=f"Sweep summary: {folder}"), flush=True)
        print(f"wrote {', '.join(p.name for p in written)} in {folder}", flush=True)
    return written


class SweepSummary(Callback):
    """`hydra.callbacks.sweep_summary: {_target_: sparsenet.reporting.callback.SweepSummary}`."""

    def __init__(self, plot: bool = True, echo: bool = True) -> None:
        self.plot = plot
        self.echo = echo
        self._folder: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._folder = Path(str(config.hydra.sweep.dir))
        atexit.register(self._summarize)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.unregister(self._summarize)
        self._folder = self._folder or Path(str(config.hydra.sweep.dir))
        self._summarize()

    def _summarize(self) -> None:
        folder, self._folder = self._folder, None
        if folder is None or not folder.is_dir():
            return
        if launcher_rank() != 0:  # a sweep under torchrun: every rank ran it, one writes
            return
        try:
            summarize_folder(folder, plot=self.plot, echo=self.echo)
        except UserInputError as error:  # a folder that cannot be written: one line, no trace
            log.error("sweep summary not written: %s", error)
        except Exception:  # the runs are on disk whatever happens here
            log.exception("sweep summary failed; rebuild it with: sparsenet-report %s", folder)
