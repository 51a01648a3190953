"""The stages (dense, train, prune, finetune). Each mutates the run's model and returns its stage-specific figures;
`run.py` times each stage and measures the model after it. Stages read the run's typed
settings (`ctx.settings`, see settings.py), never the raw config.

Data-parallel runs (see distributed.py): every process runs every stage on its own copy of
the model, identical on all; training steps go through a DistributedDataParallel wrapper made
per stage (pruning changes the shapes), and only rank 0 writes checkpoints."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsenet.checkpoint import shape_spec
from sparsenet.data import DataSplits
from sparsenet.data.loaders import make_loader
from sparsenet.errors import RunDiverged
from sparsenet.loggers.base import Loggers
from sparsenet.pipeline import distributed
from sparsenet.pipeline.dense_cache import dense_entry
from sparsenet.pipeline.distributed import Ranks
from sparsenet.pipeline.engine import StepSettings, evaluate, parameter_groups, train_epoch
from sparsenet.pipeline.resume import (
    applying_checkpoint,
    check_optimizer_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from sparsenet.pipeline.schedules import make_schedule
from sparsenet.pipeline.settings import OptimizerSpec, RunSettings
from sparsenet.pruning import prune_units
from sparsenet.pruning.budget import StrengthController
from sparsenet.pruning.recalibrate import batchnorms, recalibrate_batchnorm
from sparsenet.regularizers.base import Regularizer
from sparsenet.runtime import seed_everything

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    settings: RunSettings
    run_dir: Path
    device: torch.device
    model: nn.Module
    data: DataSplits
    train_loader: Any
    test_loader: Any
    regularizer: Regularizer
    history: list[dict] = field(default_factory=list)
    config_hash: str = ""
    data_fingerprint: str = ""  # sparsenet.data.data_fingerprint of the run's data
    stage_index: int = 0  # position in settings.stages of the stage running now
    stage_metrics: dict = field(default_factory=dict)  # figures of the stages already done
    resume_state: dict | None = None  # a checkpoint to continue the current stage from
    train_eval_loader: Any = None  # the training split in order, for report.train_accuracy
    ranks: Ranks = field(default_factory=Ranks)  # this process's place in a data-parallel run
    # Wall time of the current stage: seconds spent in earlier processes (a resumed stage)
    # plus this process's since `stage_started` (time.perf_counter()).
    stage_wall_before: float = 0.0
    stage_started: float = field(default_factory=time.perf_counter)
    loggers: Loggers = field(default_factory=Loggers)  # tracking (sparsenet/loggers/), rank 0's

    def stage_wall_s(self) -> float:
        return self.stage_wall_before + (time.perf_counter() - self.stage_started)

    def save_checkpoint(self, stage_index: int, stage_epoch: int, **training_state) -> None:
        """Everything needed to continue after `stage_epoch` epochs of stage `stage_index`
        (optimizer and scheduler states mid-stage), as tensors and plain data. Rank 0 only:
        the state is the same on every process."""
        if not self.ranks.is_main:
            return
        save_checkpoint(
            self.run_dir,
            {
                "config_hash": self.config_hash,
                "data_fingerprint": self.data_fingerprint,
                "stage_index": stage_index,
                "stage_epoch": stage_epoch,
                "loader_epoch": getattr(self.train_loader, "epoch", 0),
                "model_spec": shape_spec(self.model),
                "model_state": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "rng": rng_state(),
                "history": self.history,
                "stages": self.stage_metrics,
                # the stage's wall time so far (0 for a stage not started yet)
                "stage_wall_s": self.stage_wall_s() if stage_index == self.stage_index else 0.0,
                **{k: v.state_dict() for k, v in training_state.items()},
            },
        )


def _fit(
    ctx: RunContext,
    stage: str,
    epochs: int,
    optimizer_spec: OptimizerSpec,
    regularizer: Regularizer | None,
    controller: StrengthController | None = None,
) -> dict:
    """Train `epochs` epochs with the optimizer of `optimizer_spec` (at its lr) and the run's
    schedule over this stage's steps; `controller` (a budget) moves the regularizer's strength
    after every step (sparsenet/pruning/budget.py)."""
    run = ctx.settings
    groups = parameter_groups(ctx.model, run.train.decay_norm_and_bias)
    optimizer = optimizer_spec.build(groups, optimizer_spec.lr)
    total_steps = epochs * len(ctx.train_loader)
    scheduler = make_schedule(optimizer, run.scheduler, total_steps)
    progress = run.train.progress and ctx.ranks.is_main  # bars and lines: rank 0's
    settings = StepSettings(
        amp=run.train.amp,
        channels_last=run.train.channels_last,
        label_smoothing=run.train.label_smoothing,
    )
    scaler = settings.grad_scaler(ctx.device)
    if regularizer is not None:
        example = torch.zeros(1, *ctx.data.input_shape, device=ctx.device)
        regularizer.bind(ctx.model, example)
        if controller is not None:
            controller.bind(
                ctx.model,
                example,
                regularizer,
                total_steps,
                lr_at=lambda step: (
                    optimizer_spec.lr * run.scheduler.factor(step, max(total_steps, 1))
                ),
                momentum=float(optimizer.param_groups[0].get("momentum", 0.0)),
            )
            # every process starts from rank 0's strength (float sums may differ in the last
            # bits between devices; the proximal step would carry that difference)
            controller.configured = distributed.broadcast_object(controller.configured)
            controller.apply_strength()
    training_state = {} if controller is None else {"budget": controller}
    # Wrapped and compiled per stage: pruning changes the shapes. Parameters stay those of
    # ctx.model, which the regularizer reads and evaluation runs (each process its part).
    train_model = distributed.wrap(ctx.model, ctx.device, sync_batchnorm=run.train.sync_batchnorm)
    eval_model = ctx.model
    if run.train.compile:
        eval_model = torch.compile(ctx.model)
        train_model = eval_model if train_model is ctx.model else torch.compile(train_model)
    start_epoch = _resume_stage(ctx, optimizer, scheduler, scaler, training_state)
    last: dict = ctx.history[-1] if start_epoch else {}
    for epoch in range(start_epoch + 1, epochs + 1):
        lr_now = optimizer.param_groups[0]["lr"]
        on_step = ctx.loggers.steps(ctx, optimizer)  # counts from the epochs done
        if controller is not None:
            on_step = _also(on_step, controller.step)
        try:
            stats = train_epoch(
                train_model,
                ctx.train_loader,
                optimizer,
                scheduler,
                regularizer,
                ctx.device,
                description=f"{stage} {epoch}/{epochs}",
                progress=progress,
                settings=settings,
                scaler=scaler,
                regularized=ctx.model,
                on_step=on_step,
            )
        except FloatingPointError as error:  # the engine's check of the epoch's loss
            raise RunDiverged(stage, epoch, str(error)) from error
        distributed.sync_buffers(ctx.model)
        stats.update(evaluate(eval_model, ctx.test_loader, ctx.device, settings))
        if not math.isfinite(stats["test_loss"]):
            # The last step of the epoch can break the weights after the loss was taken.
            raise RunDiverged(stage, epoch, f"test loss became {stats['test_loss']}")
        last = {"stage": stage, "epoch": epoch, "lr": lr_now, **stats}
        if controller is not None:
            last.update(controller.epoch_figures())
        ctx.history.append(last)
        # Logged before the checkpoint: a process killed in between logs this epoch again
        # when resumed, and the loggers keep one point per step (see sparsenet/loggers/).
        ctx.loggers.epoch_end(ctx, regularizer)
        ctx.save_checkpoint(
            ctx.stage_index,
            epoch,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            **training_state,
        )
        if ctx.ranks.is_main:
            log.info(
                "[%s] epoch %d/%d  loss %.4f  reg %.4f  train %.2f%%  test %.2f%%",
                stage,
                epoch,
                epochs,
                stats["loss"],
                stats["reg"],
                stats["train_acc"],
                stats["test_acc"],
            )
    figures = {"epochs": epochs, "final_loss": last.get("loss"), "final_reg": last.get("reg")}
    if controller is not None:
        figures["budget"] = controller.figures()
        if ctx.ranks.is_main:
            log.info(
                "budget: strength %.3g (configured %.3g), projected %s %.1f%% of dense "
                "(budget %.1f%%)",
                controller.regularizer.strength,
                controller.configured,
                controller.budget.target,
                100 * (controller.projected or 1.0),
                100 * controller.budget.keep,
            )
    return figures


def _also(first, second):
    """A step callback calling `first(loss, reg)` (if any), then `second()`."""

    def both(loss, reg):
        if first is not None:
            first(loss, reg)
        second()

    return both


def _resume_stage(ctx: RunContext, optimizer, scheduler, scaler, training_state=None) -> int:
    """Epochs of this stage already done according to ctx.resume_state (restoring the
    optimizer, schedule, scaler, RNGs and data order, and `training_state`'s other objects
    such as a budget's controller), else 0."""
    state, ctx.resume_state = ctx.resume_state, None
    if not state or state["stage_index"] != ctx.stage_index or state["stage_epoch"] == 0:
        return 0
    with applying_checkpoint("the optimizer, schedule and data order"):
        optimizer.load_state_dict(state["optimizer"])
        check_optimizer_state(optimizer)
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        for key, value in (training_state or {}).items():
            value.load_state_dict(state[key])
        set_rng_state(state["rng"])
        ctx.train_loader.set_epoch(state["loader_epoch"])
    return int(state["stage_epoch"])


def dense_stage(ctx: RunContext) -> dict:
    """Train without the regularizer for dense.epochs, or take the network of the same
    configuration from the dense cache (dense_cache.py). Either way the run continues with
    the same weights, history, random state and data order."""
    run = ctx.settings
    entry = dense_entry(run, ctx.data_fingerprint)
    lock = entry.lock() if ctx.ranks.is_main else contextlib.nullcontext()
    with lock:
        record = distributed.from_main(ctx.ranks, entry.lookup)
        if record is not None:
            ctx.resume_state = None  # a checkpoint of this run's own unfinished dense training
            ctx.model.load_state_dict(entry.load().state_dict())
            ctx.history = list(record["history"])
            figures = {**record["figures"], "reused": True}
            if ctx.ranks.is_main:
                log.info("dense: reusing the network of %s", entry.folder)
        else:
            seed_everything(run.seed)  # the network is a function of its identity only
            if ctx.resume_state is None:
                ctx.train_loader.set_epoch(0)
            figures = _fit(ctx, "dense", run.dense.epochs, run.dense.optimizer, None)
            figures.update(
                lr=run.dense.optimizer.lr,
                trained_wall_s=round(ctx.stage_wall_s(), 3),
                cache=str(entry.folder),
            )
            if ctx.ranks.is_main:
                entry.store(ctx.model, run.model.as_config(), figures, ctx.history)
                log.info("dense: stored the network in %s", entry.folder)
            figures = {**figures, "reused": False}
    seed_everything(run.seed + 1)  # the train stage starts from the same state either way
    ctx.train_loader.set_epoch(run.dense.epochs)
    return figures


def train_stage(ctx: RunContext) -> dict:
    """Train with loss = CE + R(model), under a budget with the strength it controls."""
    run = ctx.settings
    controller = None
    if run.budget.active:
        controller = StrengthController(run.budget, run.prune.threshold)
    return _fit(ctx, "train", run.train.epochs, run.optimizer, ctx.regularizer, controller)


def calibration_batch(ctx: RunContext, size: int) -> torch.Tensor:
    """`size` training samples drawn with the run's seed (the same ones on every rerun)."""
    data = ctx.data.train
    n = min(size, len(data))
    generator = torch.Generator().manual_seed(ctx.settings.seed)
    order = torch.randperm(len(data), generator=generator)[:n].sort().values.tolist()
    return torch.stack([data[i][0] for i in order]).to(ctx.device)


def recalibration_batches(ctx: RunContext, count: int):
    """`count` batches of a training loader of its own (shuffled with the run's seed,
    augmented as in training, the whole batch on every process, so every process computes the
    same statistics); the training loader's epochs are left alone."""
    loader = make_loader(
        ctx.data.train,
        ctx.settings.train.batch_size,
        shuffle=True,
        seed=ctx.settings.seed,
        augment=ctx.data.train_augment,
        device=ctx.device,
    )  # no workers: a few batches, fewer than a worker pool's start-up costs
    used = 0
    while used < count and len(loader):  # another epoch when the training split is small
        for inputs, _ in loader:
            yield inputs.to(ctx.device)
            used += 1
            if used == count:
                return


def prune_stage(ctx: RunContext) -> dict:
    """Remove the units chosen by prune.criterion (see sparsenet.pruning.criteria), folding
    their contribution into the consumers (prune.fold)."""
    settings = ctx.settings.prune
    calibration = calibration_batch(ctx, settings.calibration_samples)
    result = prune_units(ctx.model, calibration[:1], settings, calibration=calibration)
    # Every process pruned its own copy; identical weights give identical choices.
    distributed.check_identical(shape_spec(ctx.model), "the pruned model's layer shapes")
    figures = {}
    if settings.recalibrate_batches and batchnorms(ctx.model):
        figures["recalibrated_batches"] = recalibrate_batchnorm(
            ctx.model, recalibration_batches(ctx, settings.recalibrate_batches)
        )
        distributed.sync_buffers(ctx.model)  # rank 0's statistics everywhere
    figures |= {
        "criterion": settings.criterion,
        "threshold": settings.threshold,
        "removed_units": {k: len(v) for k, v in result.removed.items()},
        "units_removed": result.units_removed,
        "units_total": result.units_total,
        "folded_layers": result.folded,
        "fold_error": result.fold_error,
    }
    if ctx.ranks.is_main:
        for layer, units in result.removed.items():
            log.info("prune: %s loses %d units %s", layer, len(units), list(units)[:32])
        log.info(
            "prune: %d of %d units removed (%s criterion)",
            result.units_removed,
            result.units_total,
            settings.criterion,
        )
    if settings.criterion == "relative":
        figures["relative"] = settings.relative
    if settings.criterion == "ratio":
        figures.update(
            target=settings.target, ratio=settings.ratio, scope=settings.scope, cut=result.cut
        )
        if result.target_kept is not None:
            figures["target_kept"] = result.target_kept
    if ctx.settings.budget.active:
        figures["budget"] = {"target": settings.target, "keep": ctx.settings.budget.keep}
    return figures


def finetune_stage(ctx: RunContext) -> dict:
    """Retrain the narrow model with its own optimizer settings; the regularizer stays on
    only if finetune.regularize."""
    settings = ctx.settings.finetune
    regularizer = ctx.regularizer if settings.regularize else None
    figures = _fit(ctx, "finetune", settings.epochs, settings.optimizer, regularizer)
    return {**figures, "lr": settings.lr, "optimizer": settings.optimizer.label}


STAGES = {
    "dense": dense_stage,
    "train": train_stage,
    "prune": prune_stage,
    "finetune": finetune_stage,
}
