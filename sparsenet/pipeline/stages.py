"""The three stages. Each mutates the run's model and returns its stage-specific figures;
`run.py` times each stage and measures the model after it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from torch import nn

from sparsenet.data import DataSplits
from sparsenet.pipeline.engine import evaluate, make_schedule, train_epoch
from sparsenet.pruning import prune_dead_units
from sparsenet.regularizers.base import Regularizer


@dataclass
class RunContext:
    cfg: DictConfig
    run_dir: Path
    device: torch.device
    model: nn.Module
    data: DataSplits
    train_loader: Any
    test_loader: Any
    regularizer: Regularizer
    history: list[dict] = field(default_factory=list)


def _fit(
    ctx: RunContext, stage: str, epochs: int, lr: float, regularizer: Regularizer | None
) -> dict:
    cfg = ctx.cfg
    optimizer = hydra.utils.instantiate(cfg.optimizer, lr=lr)(ctx.model.parameters())
    total_steps = epochs * len(ctx.train_loader)
    sched_cfg = {k: v for k, v in cfg.scheduler.items() if k != "name"}
    scheduler = make_schedule(optimizer, cfg.scheduler.name, total_steps, **sched_cfg)
    progress = bool(cfg.train.progress)
    if regularizer is not None:
        example = torch.zeros(1, *ctx.data.input_shape, device=ctx.device)
        regularizer.bind(ctx.model, example)
    last: dict = {}
    for epoch in range(1, epochs + 1):
        lr_now = optimizer.param_groups[0]["lr"]
        stats = train_epoch(
            ctx.model,
            ctx.train_loader,
            optimizer,
            scheduler,
            regularizer,
            ctx.device,
            description=f"{stage} {epoch}/{epochs}",
            progress=progress,
        )
        stats.update(evaluate(ctx.model, ctx.test_loader, ctx.device))
        last = {"stage": stage, "epoch": epoch, "lr": lr_now, **stats}
        ctx.history.append(last)
        if progress:
            print(
                f"[{stage}] epoch {epoch}/{epochs}  loss {stats['loss']:.4f}  "
                f"reg {stats['reg']:.4f}  train {stats['train_acc']:.2f}%  "
                f"test {stats['test_acc']:.2f}%",
                flush=True,
            )
    return {"epochs": epochs, "final_loss": last.get("loss"), "final_reg": last.get("reg")}


def train_stage(ctx: RunContext) -> dict:
    """Train from scratch with loss = CE + R(model)."""
    return _fit(
        ctx, "train", int(ctx.cfg.train.epochs), float(ctx.cfg.optimizer.lr), ctx.regularizer
    )


def _calibration_batch(ctx: RunContext, size: int) -> torch.Tensor:
    data = ctx.data.train
    n = min(size, len(data))
    return torch.stack([data[i][0] for i in range(n)]).to(ctx.device)


def prune_stage(ctx: RunContext) -> dict:
    """Physically remove units whose coupled group norm is at or below prune.threshold."""
    cfg = ctx.cfg.prune
    calibration = _calibration_batch(ctx, int(cfg.calibration_samples))
    result = prune_dead_units(
        ctx.model,
        calibration[:1],
        float(cfg.threshold),
        calibration=calibration,
        min_units=int(cfg.min_units),
    )
    return {
        "threshold": float(cfg.threshold),
        "removed_units": {k: len(v) for k, v in result.removed.items()},
        "fold_error": result.fold_error,
    }


def finetune_stage(ctx: RunContext) -> dict:
    """Retrain the narrow model; the regularizer stays on only if finetune.regularize."""
    cfg = ctx.cfg.finetune
    regularizer = ctx.regularizer if cfg.regularize else None
    return _fit(ctx, "finetune", int(cfg.epochs), float(cfg.lr), regularizer)


STAGES = {"train": train_stage, "prune": prune_stage, "finetune": finetune_stage}
