"""Re-running a command resumes it: run folders are named from the command's overrides (not
the time), so the same command finds the same folder, skips runs that completed with the same
resolved config and continues unfinished ones from their last checkpoint."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from sparsenet.checkpoint import check_run_checkpoint, set_aside_checkpoint
from sparsenet.config.schema import hashed_when_changed
from sparsenet.errors import CheckpointError
from sparsenet.runtime import atomic_torch_save, atomic_write_bytes, safe_torch_load

# Overrides that change where data is read or how progress is shown, or only describe the run
# (`reference`: the paper figures a bundle is held against), not what a run computes.
# `train.distributed` says whether to use the launcher's processes; like their number, which is
# no config key, it does not change what is computed (a run may resume on another count).
log = logging.getLogger(__name__)

IGNORED_KEYS = (
    "dataset.root",
    "dataset.download",
    "dataset.num_workers",
    "dataset.cache_dir",
    "dense.cache_dir",
    "train.progress",
    "train.distributed",
    "resume",
    "name",
    "reference",
    "logger",
)
# Nodes ignored with every key under them: where a run is tracked (logger=..., and any
# logger.mlflow.tracking_uri=... override) is not what it computes. A run re-run with another
# logger is the same run, in the same folder, and is skipped or resumed as such.
IGNORED_NODES = ("logger",)
# Keys added after runs were made: hashed only when set away from the value that reproduces
# those runs, so their folders keep their hash (a re-run still finds them completed). Declared
# on the schema field (`setting(..., hash_unless=...)` in sparsenet/config/schema.py).
HASHED_WHEN_CHANGED = {**hashed_when_changed(), "model.weights": None}  # model: no fixed schema
MAX_DIRNAME = 120
RESOLVER = "sparsenet.dirname"


def run_dirname(overrides: Iterable[str]) -> str:
    """A folder name from the command-line overrides: sorted, ignored keys dropped, '/' made
    safe, long names cut and suffixed with a hash so they stay unique."""
    kept = sorted(
        str(o) for o in overrides if not ignored_key(str(o).split("=", 1)[0].lstrip("+~"))
    )
    name = ",".join(kept).replace("/", "_") or "defaults"
    if len(name) > MAX_DIRNAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[: MAX_DIRNAME - 11]}-{digest}"
    return name


def ignored_key(key: str) -> bool:
    """Whether a config key (`a.b.c`, or a group override `logger`) is no setting of what a
    run computes: IGNORED_KEYS and everything under IGNORED_NODES."""
    return key in IGNORED_KEYS or key.split(".", 1)[0].split("/", 1)[0] in IGNORED_NODES


def register_resolvers() -> None:
    """`${sparsenet.dirname:${hydra.overrides.task}}` in conf/config.yaml."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, lambda overrides: run_dirname(overrides))


def config_hash(cfg: DictConfig | dict) -> str:
    """Hash of the resolved config without the keys that do not change results."""
    resolved = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)
    resolved = json.loads(json.dumps(resolved, sort_keys=True, default=str))
    if "dense" not in resolved.get("stages", ()):  # read by that stage only, and added after
        resolved.pop("dense", None)  # runs were made: they keep their hash
    budget = resolved.get("budget")
    if isinstance(budget, dict) and budget.get("target") is None:  # no budget: runs made
        resolved.pop("budget")  # before budgets existed keep their hash
    _drop_null_costs(resolved.get("regularizer"))
    for key in (*IGNORED_KEYS, *HASHED_WHEN_CHANGED):
        node = resolved
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if not isinstance(node, dict) or leaf not in node:
            continue
        if key in IGNORED_KEYS or node[leaf] == HASHED_WHEN_CHANGED[key]:
            del node[leaf]
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]


def _drop_null_costs(node: object) -> None:
    """Remove `cost: null` anywhere in the regularizer node (its parts and inner ones too):
    cost-aware weights were added after runs were made, and null is what those runs did."""
    if isinstance(node, dict):
        if "cost" in node and node["cost"] is None:
            del node["cost"]
        for value in node.values():
            _drop_null_costs(value)


def describe_failure(metrics: dict) -> str | None:
    """One line from a failed run's "failure" record: `diverged in train epoch 2: <reason>`
    (None when there is none). A failed run is skipped like a completed one: the same config
    and seed would fail the same way; resume=false runs it again."""
    failure = metrics.get("failure")
    if not isinstance(failure, dict):
        return None
    where = f"{failure.get('stage', '?')} epoch {failure.get('epoch', '?')}"
    return f"diverged in {where}: {failure.get('reason', 'no reason recorded')}"


CHECKPOINT_FILE = "checkpoint.pt"
LOCK_FILE = ".lock"


@contextlib.contextmanager
def run_folder_lock(run_dir: Path) -> Iterator[None]:
    """Hold `<run_dir>/.lock` (an exclusive flock) while a run reads and writes its folder.

    Two processes on one run folder (the same command twice, or a launcher's orphaned worker
    still finishing after its sweep was killed) would otherwise race on the checkpoint and
    metrics: the second waits for the first, then finds its results (or its checkpoint).
    The lock dies with its process, so a killed run never leaves the folder locked."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            log.warning("waiting for %s, which is running in %s", holder, run_dir)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


HYDRA_RECORD = ".hydra"  # Hydra's copy of the job's config (hydra.output_subdir)
KEPT_RECORD = "results"  # <run>/.hydra/results/: the record of the results on disk
RECORD_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


def keep_hydra_record(run_dir: Path) -> None:
    """Keep the config record of the results just written (Hydra rewrites .hydra/ at every
    start, even of a run that is then skipped or refused)."""
    source = run_dir / HYDRA_RECORD
    if not source.is_dir():
        return
    kept = source / KEPT_RECORD
    kept.mkdir(exist_ok=True)
    for name in RECORD_FILES:
        if (source / name).is_file():
            atomic_write_bytes(kept / name, (source / name).read_bytes())


def restore_hydra_record(run_dir: Path) -> None:
    """Put back the record of the results on disk over what this invocation's Hydra wrote,
    so a skipped or refused run's .hydra/ never disagrees with its metrics.json."""
    kept = run_dir / HYDRA_RECORD / KEPT_RECORD
    for name in RECORD_FILES:
        if (kept / name).is_file():
            atomic_write_bytes(run_dir / HYDRA_RECORD / name, (kept / name).read_bytes())


def rng_state() -> dict:
    """The global RNGs (CPU torch, CUDA if any, Python, NumPy) as plain data (weights_only)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, key, internal, *rest = state["python"]
    random.setstate((version, tuple(key), internal, *rest))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))


def save_checkpoint(run_dir: Path, state: dict) -> None:
    """Written atomically after every epoch and every stage: a kill loses at most one epoch."""
    atomic_torch_save(state, Path(run_dir) / CHECKPOINT_FILE)


class UnusableCheckpoint(Exception):
    """A checkpoint that passed `check_run_checkpoint` but could not be put back (a schedule
    state of another kind, optimizer state of other shapes, a stage the run does not have):
    `run.run_experiment` sets it aside and starts the run over, as `load_checkpoint` does
    with one that fails the checks."""


@contextlib.contextmanager
def applying_checkpoint(what: str) -> Iterator[None]:
    """Any error while restoring `what` from the checkpoint becomes UnusableCheckpoint."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - whatever the damage, the remedy is the same
        raise UnusableCheckpoint(
            f"cannot restore {what}: {type(error).__name__}: {error}"
        ) from error


def check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Raise ValueError if a loaded per-parameter state tensor (momentum, Adam's moments) has
    another shape than its parameter: `load_state_dict` does not check, and the first step
    would fail. Every optimizer sparsenet offers keeps such state in the parameter's shape;
    scalars (`step`) are not compared."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != param.shape:
                    raise ValueError(
                        f"optimizer state '{key}' has shape {tuple(value.shape)}, "
                        f"its parameter {tuple(param.shape)}"
                    )


def load_checkpoint(run_dir: Path, expected_hash: str, model=None) -> dict | None:
    """The run's last checkpoint if it belongs to this config, else None. Only tensors and
    plain containers are read (weights_only=True): a checkpoint cannot run code, and one
    that tries is refused (CheckpointError) rather than silently replaced. One that loads
    but that the run could not continue from (a key missing, a shape that does not fit
    `model`) is set aside as checkpoint.pt.bad and the run starts over, instead of failing
    on it at every re-run."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        state = safe_torch_load(path)
    except CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - a damaged checkpoint means: start over
        set_aside_checkpoint(path, f"unreadable ({error})")
        return None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a sparsenet checkpoint (not a dict of states)")
    if state.get("config_hash") != expected_hash:
        return None
    try:
        check_run_checkpoint(state, path, model)
    except CheckpointError as error:
        set_aside_checkpoint(path, error)
        return None
    return state
