"""logger=tensorboard: event files in <run>/tensorboard/, read by TensorBoard.

    tensorboard --logdir outputs/sweeps/<name>

shows every run of a study as one TensorBoard run (named by its folder: its overrides), the
points of base.py on the global step axis, and in the HParams tab one row per run: its
flattened config against its `final/*` figures.

Resuming: TensorBoard keeps every event file of a folder. A run continued from its checkpoint
at global step s opens its folder with `purge_step = s + 1`: TensorBoard then discards the
earlier files' events after s (those of the epoch the killed process did not finish), and the
continued run writes them anew. A run that starts over (no checkpoint, resume=false) removes
the folder first: it held an abandoned attempt.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sparsenet.loggers.base import RunEnd, RunInfo, Scalars

FOLDER = "tensorboard"  # inside the run folder
KEPT_PREFIXES = ("step/", "epoch/")  # the points a continued record may already hold


def has_events(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("events.out.tfevents.*"))


class TensorBoardLogger:
    name = "tensorboard"

    def __init__(self, every_n_steps: int) -> None:
        self.every_n_steps = every_n_steps
        self.writer = None
        self.floor = -1  # steps <= floor of KEPT_PREFIXES are in the record already

    def start(self, info: RunInfo) -> bool:
        from torch.utils.tensorboard import SummaryWriter

        folder = info.run_dir / FOLDER
        purge_step = None
        if info.replay:
            if has_events(folder):
                return False
        elif info.fresh:
            shutil.rmtree(folder, ignore_errors=True)
        elif has_events(folder):
            purge_step = info.resume_step + 1
            self.floor = info.resume_step
        # flush_secs: events also reach the disk between our flushes (at every epoch's end).
        self.writer = SummaryWriter(str(folder), purge_step=purge_step, flush_secs=30)
        return True

    def log_scalars(self, values: Scalars, step: int) -> None:
        for tag, value in values.items():
            if step <= self.floor and tag.startswith(KEPT_PREFIXES):
                continue
            self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def finish(self, end: RunEnd) -> None:
        """The HParams tab's row: the config, and as metrics the final figures (also logged
        as scalars, where the tab reads their values); the stage table as text."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        summaries = hparams_summary({**end.hparams, "status": end.status}, end.final)
        for summary in summaries:
            self.writer.file_writer.add_summary(summary, end.step)
        self.log_scalars(end.final, end.step)
        if end.table:  # markdown: four leading spaces keep the columns aligned
            text = "\n".join("    " + line for line in end.table.splitlines())
            self.writer.add_text("summary", text, end.step)
        self.writer.flush()

    def close(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()
