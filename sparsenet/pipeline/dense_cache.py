"""The dense-network cache: one trained dense network per configuration, shared by every run.

The field's recipe trains a network once and compresses it many times (Torch-Pruning's CIFAR
benchmark, the SSL paper): a sweep of 5 strengths x 3 seeds needs 3 dense networks, not 15.
The `dense` stage (sparsenet/pipeline/stages.py) asks this cache first and trains only on a
miss.

Identity of a dense network (`dense_identity`): everything that determines it and nothing
else, hashed by the same rule as a run's identity (`resume.config_hash`: keys that say where
the data lies or how progress is shown are dropped):
    dataset, model (with model.weights), optimizer (at the lr the dense stage uses: dense.lr,
    else optimizer.lr), scheduler, train.* but train.epochs, dense.epochs, seed
and the data's fingerprint (`sparsenet.data.data_fingerprint`): the same files anywhere
match, other files never do. The regularizer, prune.*, finetune.* and report.* do not enter.
The stage reseeds before training, so the network is a function of this identity alone,
whichever run trains it.

One folder per identity, `<dense.cache_dir>/<model>-<dataset>-seed<seed>-<hash>/`:
    model/        the trained network (`checkpoint.save_pruned`; `model.weights=<folder>`
                  starts any run from it)
    dense.json    status "completed", the identity's config, the data fingerprint, the
                  stage's figures and its per-epoch history
    .lock         held (flock, `resume.run_folder_lock`) from the lookup to the store

Concurrency: the first run to take the lock trains while the others wait, then finds the
network; a killed trainer releases the lock and the next run trains (its own checkpoint
resumes only its own run). `model/` is written under a temporary name and renamed, and
`dense.json` last, so a folder without `dense.json` is never taken for a trained network.
flock works across machines on the shared filesystems clusters use (NFSv4, Lustre, GPFS).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from sparsenet.checkpoint import load_pruned, save_pruned
from sparsenet.pipeline.resume import config_hash, run_folder_lock
from sparsenet.pipeline.settings import RunSettings
from sparsenet.runtime import atomic_write_json

log = logging.getLogger(__name__)

RECORD_FILE = "dense.json"
MODEL_FOLDER = "model"
RECORD_SCHEMA = 1


def dense_identity(settings: RunSettings) -> dict:
    """The config that determines the dense network (module docstring), from the run's
    resolved config."""
    config = settings.config
    train = {k: v for k, v in config["train"].items() if k != "epochs"}
    dense = {k: v for k, v in config["dense"].items() if k not in ("cache_dir", "lr")}
    # the lr the dense stage trains at (dense.lr, else optimizer.lr), not the train stage's
    optimizer = {**config["optimizer"], "lr": settings.dense.optimizer.lr}
    return {
        "dataset": config["dataset"],
        "model": config["model"],
        "optimizer": optimizer,
        "scheduler": config["scheduler"],
        "train": train,
        "dense_stage": dense,  # not "dense": config_hash drops that node outside a dense run
        "seed": config["seed"],
    }


@dataclass(frozen=True)
class DenseEntry:
    """The cache folder of one dense network."""

    folder: Path
    identity: dict
    data_fingerprint: str

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Held from lookup to store: one run trains, the others wait, then reuse."""
        with run_folder_lock(self.folder):
            yield

    def lookup(self) -> dict | None:
        """The record of the trained network, or None when there is none yet (or it is
        damaged: it is then trained again and replaced)."""
        path = self.folder / RECORD_FILE
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            log.warning("dense cache: ignoring %s (%s); training again", path, error)
            return None
        same = (
            isinstance(record, dict)
            and record.get("status") == "completed"
            and record.get("identity") == self.identity
            and record.get("data_fingerprint") == self.data_fingerprint
        )
        if not same:
            log.warning("dense cache: %s does not record this network; training again", path)
            return None
        return record

    def load(self) -> nn.Module:
        """The cached network (checked against its spec before any tensor is allocated)."""
        return load_pruned(self.folder / MODEL_FOLDER)

    def store(self, model: nn.Module, model_config: dict, figures: dict, history: list) -> None:
        """Write the trained network and its record (module docstring: model/ by rename, the
        record last)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        staging = self.folder / f"{MODEL_FOLDER}.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        save_pruned(model, staging, model_config)
        final = self.folder / MODEL_FOLDER
        shutil.rmtree(final, ignore_errors=True)  # a leftover of an unrecorded attempt
        os.replace(staging, final)
        record = {
            "schema": RECORD_SCHEMA,
            "status": "completed",
            "identity": self.identity,
            "data_fingerprint": self.data_fingerprint,
            "figures": figures,
            "history": history,
        }
        atomic_write_json(self.folder / RECORD_FILE, record)


def dense_entry(settings: RunSettings, data_fingerprint: str) -> DenseEntry:
    """The cache folder for this run's dense network (module docstring)."""
    identity = dense_identity(settings)
    key = config_hash({**identity, "data_fingerprint": data_fingerprint})
    name = f"{settings.model.name}-{settings.dataset.name}-seed{settings.seed}-{key}"
    return DenseEntry(settings.dense.cache_dir / name, identity, data_fingerprint)
