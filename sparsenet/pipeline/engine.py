"""The training and evaluation loops. Kept minimal: this is the hot path of every sweep."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sparsenet.pipeline.distributed import all_reduce_sum
from sparsenet.regularizers.base import Regularizer


def parameter_groups(model: nn.Module, decay_norm_and_bias: bool = True) -> list[dict]:
    """The optimizer's parameter groups: all in one, or (decay_norm_and_bias=false) the
    one-dimensional parameters (biases, BatchNorm weights and biases) in a group of their own
    with weight_decay 0, as short CIFAR schedules usually do."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if decay_norm_and_bias:
        return [{"params": parameters}]
    return [
        {"params": [p for p in parameters if p.ndim > 1]},
        {"params": [p for p in parameters if p.ndim <= 1], "weight_decay": 0.0},
    ]


@dataclass(frozen=True)
class StepSettings:
    """How a step runs on the device (GPU concerns; all off by default, results identical).

    amp: autocast to float16 (CUDA, with a GradScaler) or bfloat16 (CPU); the regularizer is
    computed outside autocast, in float32. channels_last: NHWC activations for Conv layers,
    faster on tensor-core GPUs."""

    amp: bool = False
    channels_last: bool = False
    label_smoothing: float = 0.0  # training loss only; test loss stays the plain CE

    def amp_dtype(self, device: torch.device) -> torch.dtype:
        return torch.float16 if device.type == "cuda" else torch.bfloat16

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(device.type, enabled=self.amp and device.type == "cuda")


def _to(batch, device: torch.device, channels_last: bool = False):
    x, y = batch
    if x.device != device:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def train_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    regularizer: Regularizer | None,
    device: torch.device,
    *,
    description: str = "train",
    progress: bool = True,
    settings: StepSettings = StepSettings(),
    scaler: torch.amp.GradScaler | None = None,
    regularized: nn.Module | None = None,
    on_step: Callable[[torch.Tensor, torch.Tensor | None], None] | None = None,
) -> dict[str, float]:
    """One pass over `loader`; loss = cross-entropy + R(model). Returns epoch means.

    `regularized` is the module the regularizer reads (default `model`); it differs when
    `model` wraps it (DistributedDataParallel, torch.compile), whose module names differ.
    `on_step(loss, reg)` (the tracking loggers', sparsenet/loggers/) gets each step's detached
    loss and R (None unregularized) before the schedule moves the lr on.

    Data-parallel (`loader.world_size` W > 1, `model` in DDP): this process's part of a global
    batch of n samples gets loss W / n * sum of its CE + R. DDP averages the gradients over
    the processes, so the step follows (1/n) sum of grad CE over the whole batch + grad R, the
    gradient of a single process, even for parts of unequal size. The returned figures are
    sums over all processes, the same on each."""
    model.train()
    regularized = model if regularized is None else regularized
    regularize = regularizer is not None and regularizer.active
    scaler = scaler or settings.grad_scaler(device)
    amp_dtype = settings.amp_dtype(device)
    world = getattr(loader, "world_size", 1)
    global_sizes = loader.global_batch_sizes() if world > 1 else None
    total_ce = torch.zeros((), device=device)  # sum over samples
    total_reg = torch.zeros((), device=device)  # sum over samples of the step's R
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    bar = tqdm(loader, desc=description, leave=False, disable=not progress, mininterval=1.0)
    for step, batch in enumerate(bar):
        x, y = _to(batch, device, settings.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=settings.amp):
            logits = model(x)
            if global_sizes is None:
                loss = F.cross_entropy(logits, y, label_smoothing=settings.label_smoothing)
                total_ce += loss.detach() * len(y)
            else:
                ce_sum = F.cross_entropy(
                    logits, y, reduction="sum", label_smoothing=settings.label_smoothing
                )
                total_ce += ce_sum.detach()
                loss = ce_sum * (world / global_sizes[step])
        if regularize:
            reg = regularizer(regularized)
            total_reg += reg.detach() * len(y)
            loss = loss + reg
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if regularize:
            regularizer.after_step(regularized, optimizer.param_groups[0]["lr"])
        if on_step is not None:
            on_step(loss.detach(), reg.detach() if regularize else None)
        if scheduler is not None:
            scheduler.step()
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    if world > 1:
        total_ce, total_reg, correct, seen = all_reduce_sum(
            [total_ce, total_reg, correct, torch.tensor(seen, device=device)]
        )
    count = max(int(seen), 1)
    loss_value = (float(total_ce) + float(total_reg)) / count
    if not math.isfinite(loss_value):
        raise FloatingPointError(f"training loss became {loss_value} in {description}")
    return {
        "loss": loss_value,
        "reg": float(total_reg) / count,
        "train_acc": 100.0 * float(correct) / count,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, device: torch.device, settings: StepSettings = StepSettings()
) -> dict[str, float]:
    """Test loss and accuracy (percent) in eval mode. With a sharded loader (world_size > 1:
    each process evaluates its part) the sums are reduced over the processes."""
    model.eval()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for batch in loader:
        x, y = _to(batch, device, settings.channels_last)
        if len(y) == 0:  # a process's part of a batch smaller than the world
            continue
        with torch.autocast(device.type, dtype=settings.amp_dtype(device), enabled=settings.amp):
            logits = model(x)
        total_loss += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    if getattr(loader, "world_size", 1) > 1:
        total_loss, correct, seen = all_reduce_sum(
            [total_loss, correct, torch.tensor(seen, device=device)]
        )
    count = max(int(seen), 1)
    return {
        "test_loss": float(total_loss) / count,
        "test_acc": 100.0 * float(correct) / count,
    }
