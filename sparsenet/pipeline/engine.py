"""The training and evaluation loops. Kept minimal: this is the hot path of every sweep."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sparsenet.errors import ConfigError
from sparsenet.regularizers.base import Regularizer

SCHEDULES = ("cosine", "multistep", "constant")


def make_schedule(
    optimizer: torch.optim.Optimizer,
    name: str,
    total_steps: int,
    *,
    milestones: Iterable[float] = (0.5, 0.75),
    gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LR factor. cosine: 0.5 (1 + cos(pi t / T)); multistep: gamma^(#milestones
    passed), milestones given as fractions of the run; constant: 1."""
    total = max(total_steps, 1)
    if name == "cosine":
        factor = lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))  # noqa: E731
    elif name == "multistep":
        marks = sorted(float(m) for m in milestones)
        factor = lambda step: gamma ** sum(step >= m * total for m in marks)  # noqa: E731
    elif name == "constant":
        factor = lambda step: 1.0  # noqa: E731
    else:
        raise ConfigError(
            f"scheduler.name='{name}' is not a schedule; allowed: {', '.join(SCHEDULES)}"
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass(frozen=True)
class StepSettings:
    """How a step runs on the device (GPU concerns; all off by default, results identical).

    amp: autocast to float16 (CUDA, with a GradScaler) or bfloat16 (CPU); the regularizer is
    computed outside autocast, in float32. channels_last: NHWC activations for Conv layers,
    faster on tensor-core GPUs."""

    amp: bool = False
    channels_last: bool = False

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
) -> dict[str, float]:
    """One pass over `loader`; loss = cross-entropy + R(model). Returns epoch means."""
    model.train()
    regularize = regularizer is not None and regularizer.active
    scaler = scaler or settings.grad_scaler(device)
    amp_dtype = settings.amp_dtype(device)
    total_loss = torch.zeros((), device=device)
    total_reg = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    bar = tqdm(loader, desc=description, leave=False, disable=not progress, mininterval=1.0)
    for batch in bar:
        x, y = _to(batch, device, settings.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=settings.amp):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        if regularize:
            reg = regularizer(model)
            total_reg += reg.detach() * len(y)
            loss = loss + reg
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if regularize:
            regularizer.after_step(model, optimizer.param_groups[0]["lr"])
        if scheduler is not None:
            scheduler.step()
        total_loss += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    loss_value = float(total_loss) / max(seen, 1)
    if not math.isfinite(loss_value):
        raise FloatingPointError(f"training loss became {loss_value} in {description}")
    return {
        "loss": loss_value,
        "reg": float(total_reg) / max(seen, 1),
        "train_acc": 100.0 * float(correct) / max(seen, 1),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, device: torch.device, settings: StepSettings = StepSettings()
) -> dict[str, float]:
    """Test loss and accuracy (percent) in eval mode."""
    model.eval()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for batch in loader:
        x, y = _to(batch, device, settings.channels_last)
        with torch.autocast(device.type, dtype=settings.amp_dtype(device), enabled=settings.amp):
            logits = model(x)
        total_loss += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    return {
        "test_loss": float(total_loss) / max(seen, 1),
        "test_acc": 100.0 * float(correct) / max(seen, 1),
    }
