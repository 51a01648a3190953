"""Data-parallel runs: one process per device, the model in DistributedDataParallel (DDP).

Launchers. `train.distributed=auto` (the default) reads from the environment whether the run is
one process of several:
  - torchrun (or any launcher setting the same variables): RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT;
  - a submitit job of several tasks (hydra/launcher=slurm with tasks_per_node > 1 or nodes > 1;
    slurm_local with tasks_per_node > 1): `submitit.JobEnvironment()` gives global_rank,
    local_rank and num_tasks; MASTER_ADDR is the job's first node (127.0.0.1 on one node) and
    MASTER_PORT, unless set, 20000 + a hash of the job id (so concurrent jobs differ).
`train.distributed=off` ignores submitit's variables; a torchrun world of several processes is
refused then (every process would write the same run folder).

Backend nccl on CUDA, each process on cuda:(LOCAL_RANK mod visible GPUs): a task that sees only
its own GPU uses cuda:0. gloo on CPU.

Why the results are a single process's (W processes, global batch B = train.batch_size):
  - every process draws the same order from seed + epoch and takes its contiguous part of each
    global batch (sparsenet.data.loaders.shard_bounds), so W processes see the B samples the
    single process sees, and all take the same number of steps;
  - process r's loss is W / n * sum of CE over its part + R(w), n the global batch's size. DDP
    averages gradients: grad = (1/n) sum over the global batch of grad CE + grad R, the single
    process's gradient, also for a last batch that does not split evenly (see engine.py);
  - so the parameters stay identical on every process (the same averaged gradient, optimizer
    step and `after_step` of the regularizer, which reads only the weights), every process
    prunes the same units (`check_identical` compares the pruned shapes) and the pruned model is
    wrapped in DDP again for fine-tuning;
  - BatchNorm: batch statistics are per process unless train.sync_batchnorm=true (CUDA only:
    torch's SyncBatchNorm); running statistics are rank 0's (DDP broadcasts them before each
    forward, `sync_buffers` after each epoch). A model with BatchNorm matches a single process
    only with sync_batchnorm.
Float sums run in another order, so the weights agree to ~1e-6, not bit for bit.

Rank 0 alone writes (checkpoints, metrics.json, history.csv, model/) and decides whether a run
is skipped or resumed; the others receive its decision and checkpoint (`from_main`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from sparsenet.errors import ConfigError, UserInputError
from sparsenet.runtime import select_device

MODES = ("auto", "off")
TORCHRUN_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: rank of world_size processes, local_rank on its node."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    launcher: str = "none"  # torchrun | submitit | none

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def detect(mode: str = "auto") -> Ranks:
    """The process's ranks according to its launcher (see the module docstring)."""
    if mode not in MODES:
        raise ConfigError(f"train.distributed={mode!r} is not allowed; allowed: {', '.join(MODES)}")
    env = os.environ
    torchrun = None
    if all(key in env for key in TORCHRUN_KEYS):
        torchrun = Ranks(
            int(env["RANK"]), int(env["LOCAL_RANK"]), int(env["WORLD_SIZE"]), "torchrun"
        )
    if mode == "off":
        if torchrun is not None and torchrun.distributed:
            raise ConfigError(
                f"train.distributed='off' but this is process {torchrun.rank} of "
                f"{torchrun.world_size} started by torchrun: they would all write the same run "
                "folder; allowed: auto, or start one process"
            )
        return Ranks()
    if torchrun is not None:
        return torchrun
    if env.get("SUBMITIT_EXECUTOR"):
        return _submitit_ranks()
    return Ranks()


def _submitit_ranks() -> Ranks:
    """Ranks of a submitit task; exports MASTER_ADDR/PORT for the env:// rendezvous."""
    import submitit  # the launcher's own dependency: present whenever it set SUBMITIT_EXECUTOR

    job = submitit.JobEnvironment()
    if job.num_tasks <= 1:
        return Ranks()
    if job.num_nodes > 1:
        os.environ.setdefault("MASTER_ADDR", job.hostnames[0])
    else:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(20000 + zlib.crc32(str(job.job_id).encode()) % 20000))
    return Ranks(job.global_rank, job.local_rank, job.num_tasks, "submitit")


def launcher_rank() -> int:
    """This process's rank from the environment alone (before any config is read): 0 unless
    torchrun or a submitit job of several tasks says otherwise."""
    try:
        return detect("auto").rank
    except Exception:  # noqa: BLE001 - an odd environment: the run itself will say what is wrong
        return 0


def rank_device(ranks: Ranks, name: str) -> torch.device:
    """train.device for this process: under DDP `cuda`/`auto` become cuda:LOCAL_RANK."""
    device = select_device(name)
    if not ranks.distributed or device.type != "cuda":
        return device
    if name.startswith("cuda:"):
        raise ConfigError(
            f"train.device={name!r} pins one GPU, but this run has {ranks.world_size} processes, "
            "each on its own GPU (cuda:LOCAL_RANK); allowed: auto or cuda"
        )
    device = torch.device("cuda", ranks.local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def check_settings(ranks: Ranks, batch_size: int, sync_batchnorm: bool, device_name: str) -> None:
    """What only a distributed run can get wrong, refused on every process alike (before the
    process group starts, so no process waits for one that gave up)."""
    if not ranks.distributed:
        return
    if batch_size % ranks.world_size:
        raise ConfigError(
            f"train.batch_size={batch_size} is the global batch and must split evenly over the "
            f"{ranks.world_size} processes of this run; allowed: a multiple of {ranks.world_size}"
        )
    if sync_batchnorm and select_device(device_name).type != "cuda":
        raise ConfigError(
            "train.sync_batchnorm=true needs CUDA devices (torch's SyncBatchNorm runs on GPUs "
            "only); allowed: false on CPU"
        )


@contextmanager
def process_group(ranks: Ranks, device: torch.device) -> Iterator[None]:
    """The default process group for the run (none for one process). One started by a caller
    (a test spawning processes, say) is used as it is and left open."""
    if not ranks.distributed or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend,
        rank=ranks.rank,
        world_size=ranks.world_size,
        device_id=device if device.type == "cuda" else None,
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


# --- collectives: no-ops in a single process ------------------------------------------------
def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(value: T) -> T:
    """Rank 0's `value` on every process (any picklable object)."""
    if world_size() == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def from_main(ranks: Ranks, compute: Callable[[], T]) -> T:
    """`compute()` run on rank 0 only, its result (or the UserInputError it raised, raised on
    every process) handed to all: decisions that read files are rank 0's alone."""
    if not ranks.distributed:
        return compute()
    outcome: Any = None
    if ranks.is_main:
        try:
            outcome = ("value", compute())
        except UserInputError as error:
            outcome = ("error", error)
    kind, payload = broadcast_object(outcome)
    if kind == "error":
        raise payload
    return payload


def all_reduce_sum(values: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sums over the processes of scalar tensors (float64 on the way: exact counts)."""
    if world_size() == 1:
        return values
    packed = torch.stack([v.detach().to(torch.float64).reshape(()) for v in values])
    dist.all_reduce(packed)
    return [packed[i].to(v.dtype) for i, v in enumerate(values)]


def sync_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) everywhere: after an epoch each process
    holds the statistics of its own last batch, and evaluation and pruning read them."""
    if world_size() == 1:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def check_identical(value: Any, what: str) -> None:
    """Raise if `value` (plain JSON data) differs between the processes."""
    if world_size() == 1:
        return
    digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
    digests: list[Any] = [None] * world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) > 1:
        raise RuntimeError(f"{what} differs between the processes of this run: {digests}")


# --- the model ------------------------------------------------------------------------------
def wrap(model: nn.Module, device: torch.device, *, sync_batchnorm: bool = False) -> nn.Module:
    """The model to train with under DDP (the model itself in a single process). The wrapper
    shares the parameters and buffers of `model`, which keeps its own module types (the
    regularizer, pruning and checkpoints work on it)."""
    if world_size() == 1:
        return model
    inner = _sync_batchnorm_view(model) if sync_batchnorm else model
    return nn.parallel.DistributedDataParallel(
        inner, device_ids=[device] if device.type == "cuda" else None
    )


def _sync_batchnorm_view(model: nn.Module) -> nn.Module:
    """A copy of the module tree with SyncBatchNorm in place of BatchNorm, sharing every
    parameter and buffer with `model` (torch's converter would change `model` itself, and the
    shape specs and pruning know BatchNorm, not SyncBatchNorm)."""

    def tree(module: nn.Module) -> nn.Module:
        clone = copy.copy(module)  # shallow: the same parameter and buffer tensors
        clone.__dict__["_modules"] = {name: tree(child) for name, child in module._modules.items()}
        return clone

    return nn.SyncBatchNorm.convert_sync_batchnorm(tree(model))
