"""One experiment run: build everything from the config, run the stages, write results.

Outputs in the run folder:
  metrics.json   per stage: test_acc, params, nonzero_params, macs, layers, wall_s, latency_ms
  history.csv    per epoch of each training stage
  model/         the final model as shape spec + plain state_dict (see checkpoint.py)
  tensorboard/, mlflow_run.json   with logger=tensorboard / mlflow (sparsenet/loggers/)

In a data-parallel run (torchrun, or a submitit job of several tasks; see distributed.py)
every process runs this, and rank 0 alone reads the previous results and checkpoint (its
decision goes to all) and writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig

from sparsenet.checkpoint import narrow_to_spec, save_pruned, set_aside_checkpoint
from sparsenet.data import check_matches_config, data_fingerprint
from sparsenet.data.loaders import make_loader
from sparsenet.errors import ConfigError, OutputError, RunDiverged, UserInputError
from sparsenet.loggers import open_loggers, track_completed
from sparsenet.measure import dense_layer_units, describe_model, measure_latency_ms
from sparsenet.pipeline import distributed
from sparsenet.pipeline.distributed import Ranks
from sparsenet.pipeline.engine import evaluate
from sparsenet.pipeline.resume import (
    CHECKPOINT_FILE,
    UnusableCheckpoint,
    applying_checkpoint,
    config_hash,
    describe_failure,
    keep_hydra_record,
    load_checkpoint,
    restore_hydra_record,
    run_folder_lock,
    set_rng_state,
)
from sparsenet.pipeline.settings import RunSettings, check_regularizer_fits, parse_config
from sparsenet.pipeline.stages import STAGES, RunContext
from sparsenet.reporting.runs import METRICS_SCHEMA  # the format's version, beside its reader
from sparsenet.runtime import (
    atomic_write_bytes,
    atomic_write_json,
    flush_denormals,
    seed_everything,
    set_num_threads,
)

METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
log = logging.getLogger(__name__)


def build_context(settings: RunSettings, run_dir: Path, ranks: Ranks | None = None) -> RunContext:
    """Model, regularizer, data and loaders of a run from its parsed settings; for process
    `ranks` of a data-parallel run, the loaders give that process's parts."""
    ranks = ranks or Ranks()
    train = settings.train
    flush_denormals(train.flush_denormal)
    set_num_threads(train.num_threads)
    seed_everything(settings.seed)  # the same on every process: identical initial weights
    device = distributed.rank_device(ranks, train.device)
    # The model before the data: what the regularizer refuses in it (a layer pattern that
    # matches nothing) fails before minutes of reading. No data builder draws from the global
    # RNG, so the model's initialisation is the same in either order.
    model = settings.model.build()
    regularizer = settings.regularizer
    check_regularizer_fits(regularizer, model)
    model = model.to(device)
    spec = settings.dataset
    data = spec.build()
    # num_classes / input_shape are for the model config to interpolate: checked, not passed.
    check_matches_config(data, spec.num_classes, spec.input_shape)
    if train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader_options = dict(
        num_workers=spec.num_workers,
        device=device,
        pin_memory=device.type == "cuda",
        rank=ranks.rank,
        world_size=ranks.world_size,
    )
    train_loader = make_loader(
        data.train,
        train.batch_size,
        shuffle=True,
        seed=settings.seed,
        augment=data.train_augment,
        **loader_options,
    )
    test_loader = make_loader(
        data.test, train.eval_batch_size, shuffle=False, seed=settings.seed, **loader_options
    )
    ctx = RunContext(settings, run_dir, device, model, data, train_loader, test_loader, regularizer)
    ctx.ranks = ranks
    if settings.report.train_accuracy:
        ctx.train_eval_loader = make_loader(
            data.train, train.eval_batch_size, shuffle=False, seed=settings.seed, **loader_options
        )
    return ctx


def _measure(ctx: RunContext, dense_units: dict[str, int]) -> dict:
    input_shape = tuple(ctx.data.input_shape)
    report = ctx.settings.report
    figures = evaluate(ctx.model, ctx.test_loader, ctx.device)
    if report.train_accuracy:
        # On the training split as the training stage sees it (with its augmentation, if any).
        train_figures = evaluate(ctx.model, ctx.train_eval_loader, ctx.device)
        figures.update({f"train_{k.removeprefix('test_')}": v for k, v in train_figures.items()})
    figures.update(describe_model(ctx.model, input_shape, dense_units, report.small_weight))
    latency = None
    if ctx.ranks.is_main:  # timed alone: the others wait for its figure
        latency = measure_latency_ms(
            ctx.model,
            input_shape,
            report.latency_batch_size,
            ctx.device,
            repeats=report.latency_repeats,
        )
    figures["latency_ms"] = distributed.broadcast_object(latency)
    return figures


def run_experiment(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Run the stages named in the config's `stages` and return the metrics written to
    metrics.json. The config is parsed into typed settings first (every value checked).

    A run that diverges returns its metrics with status `failed`. Bad input (UserInputError)
    is raised, after leaving `{"status": "error", "error": message}` in a run folder that has
    no metrics.json yet, so a sweep's summary lists the run with its reason."""
    run_dir = Path(run_dir)
    ranks = Ranks()
    try:
        settings = parse_config(cfg)  # every value, before anything is read or written
        train = settings.train
        ranks = distributed.detect(train.distributed)
        distributed.check_settings(ranks, train.batch_size, train.sync_batchnorm, train.device)
        device = distributed.rank_device(ranks, train.device)
        lock = run_folder_lock(run_dir) if ranks.is_main else contextlib.nullcontext()
        with lock, distributed.process_group(ranks, device):
            try:
                metrics = _run(settings, run_dir, ranks)
            except UnusableCheckpoint as error:  # passed the checks, failed when put back
                if ranks.is_main:
                    set_aside_checkpoint(run_dir / CHECKPOINT_FILE, error)
                distributed.barrier()
                metrics = _run(settings, run_dir, ranks)  # from the start, as without one
            distributed.barrier()  # the outputs are written when any process returns
            return metrics
    except UserInputError as error:
        if ranks.is_main:
            _record_error(run_dir, error)
        raise


def _record_error(run_dir: Path, error: UserInputError) -> None:
    metrics_file = run_dir / METRICS_FILE
    if metrics_file.exists() or isinstance(error, OutputError):
        return  # never over results (another config's, say), nor where writing just failed
    try:
        atomic_write_json(metrics_file, {"status": "error", "error": str(error)})
    except OutputError:
        pass


def _run(settings: RunSettings, run_dir: Path, ranks: Ranks) -> dict:
    """A run's identity is its config (hash) and its data (fingerprint): the data is read
    first, so results are reused only on the same data wherever it lies."""
    chash = config_hash(settings.config)
    ctx = build_context(settings, run_dir, ranks)
    fingerprint = data_fingerprint(ctx.data)

    def find_previous() -> tuple[dict | None, dict | None]:
        previous = _previous_run(run_dir / METRICS_FILE, chash, fingerprint, settings.resume)
        if previous is not None:
            return previous, None
        if not settings.resume:
            return None, None
        checkpoint = load_checkpoint(run_dir, chash, ctx.model)
        if (
            checkpoint is not None
            and checkpoint.get("data_fingerprint", fingerprint) != fingerprint
        ):
            log.warning("ignoring %s: it was made on other data", run_dir / CHECKPOINT_FILE)
            return None, None
        return None, checkpoint

    # Rank 0 reads the folder; every process gets its decision and the same checkpoint.
    previous, checkpoint = distributed.from_main(ranks, find_previous)
    ctx.config_hash = chash
    ctx.data_fingerprint = fingerprint
    if previous is not None:
        if ranks.is_main:
            restore_hydra_record(run_dir)
            track_completed(ctx, previous, _read_history(run_dir))  # a logger new to it
        return previous
    dense_units = dense_layer_units(ctx.model)
    first_stage = _restore(ctx, checkpoint) if checkpoint else 0
    with open_loggers(ctx, resumed=checkpoint is not None) as ctx.loggers:
        return _run_stages(ctx, checkpoint, first_stage, dense_units)


def _run_stages(
    ctx: RunContext, checkpoint: dict | None, first_stage: int, dense_units: dict[str, int]
) -> dict:
    settings, run_dir, ranks = ctx.settings, ctx.run_dir, ctx.ranks
    metrics: dict = {
        "schema": METRICS_SCHEMA,
        "status": "running",
        "config_hash": ctx.config_hash,
        "data_fingerprint": ctx.data_fingerprint,
        "config": settings.config,
        "regularizer": ctx.regularizer.describe(),
        "device": str(ctx.device),
        "num_threads": torch.get_num_threads(),
        "world_size": ranks.world_size,
        "stages": ctx.stage_metrics,
    }
    for index, name in enumerate(settings.stages):
        if index < first_stage:
            continue
        ctx.stage_index = index
        resumed = checkpoint is not None and index == checkpoint["stage_index"]
        # A resumed stage adds the time its earlier processes spent (paper A compares times).
        ctx.stage_wall_before = float(checkpoint.get("stage_wall_s", 0.0)) if resumed else 0.0
        ctx.stage_started = time.perf_counter()
        try:
            extra = STAGES[name](ctx)
        except RunDiverged as diverged:
            return _record_failure(ctx, metrics, diverged)
        wall = ctx.stage_wall_s()
        metrics["stages"][name] = {**_measure(ctx, dense_units), "wall_s": round(wall, 3), **extra}
        if ranks.is_main:
            atomic_write_json(run_dir / METRICS_FILE, metrics)
        ctx.loggers.stage_end(ctx, name, metrics["stages"][name])
        ctx.save_checkpoint(index + 1, 0)
    metrics["summary"] = summarize(metrics["stages"])
    metrics["status"] = "completed"
    if not ranks.is_main:
        return metrics
    if ctx.history:
        atomic_write_bytes(
            run_dir / HISTORY_FILE, pd.DataFrame(ctx.history).to_csv(index=False).encode()
        )
    save_pruned(
        ctx.model.cpu(),
        run_dir / "model",
        settings.model.as_config(),
        config=metrics["config"],
        metrics=metrics,
    )
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)  # model/ now holds the result
    keep_hydra_record(run_dir)
    ctx.loggers.finish(metrics)  # the files above are written: loggers attach them
    return metrics


def _read_history(run_dir: Path) -> list[dict]:
    """history.csv's rows ([] when there is none, or it cannot be read)."""
    try:
        return pd.read_csv(run_dir / HISTORY_FILE).to_dict("records")
    except (OSError, ValueError):
        return []


def _record_failure(ctx: RunContext, metrics: dict, diverged: RunDiverged) -> dict:
    """A diverged run ends here: metrics.json says `failed` and where (the stages done keep
    their figures), history.csv shows the epochs up to it. The checkpoint goes: the same
    config and seed would diverge again, so a re-run skips this run (see _previous_run)."""
    metrics["status"] = "failed"
    metrics["failure"] = {
        "stage": diverged.stage,
        "epoch": diverged.epoch,
        "reason": diverged.reason,
    }
    if not ctx.ranks.is_main:  # every process diverged alike (the loss is reduced over all)
        return metrics
    if ctx.history:
        atomic_write_bytes(
            ctx.run_dir / HISTORY_FILE, pd.DataFrame(ctx.history).to_csv(index=False).encode()
        )
    atomic_write_json(ctx.run_dir / METRICS_FILE, metrics)
    (ctx.run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
    keep_hydra_record(ctx.run_dir)
    ctx.loggers.finish(metrics)
    log.error("run failed: %s -> %s", describe_failure(metrics), ctx.run_dir / METRICS_FILE)
    return metrics


def _restore(ctx: RunContext, checkpoint: dict) -> int:
    """Put the run back where its checkpoint left it; returns the stage to start from.
    A stage interrupted mid-way continues from its last epoch (see stages._resume_stage)."""
    stage = checkpoint["stage_index"]
    stages = ctx.settings.stages
    with applying_checkpoint("the model, history and data order"):
        if not 0 <= stage <= len(stages):
            raise IndexError(f"stage_index {stage} is not one of this run's 0..{len(stages)}")
        source = str(ctx.run_dir / CHECKPOINT_FILE)
        narrow_to_spec(ctx.model, checkpoint["model_spec"], source=source)
        ctx.model.load_state_dict(checkpoint["model_state"])
        ctx.model.to(ctx.device)
        ctx.history = list(checkpoint["history"])
        ctx.stage_metrics = dict(checkpoint["stages"])
        ctx.resume_state = checkpoint
        ctx.train_loader.set_epoch(checkpoint["loader_epoch"])
        set_rng_state(checkpoint["rng"])
    where = stages[stage] if stage < len(stages) else "the end"
    if ctx.ranks.is_main:
        log.info("resuming %s: %s, after epoch %s", ctx.run_dir, where, checkpoint["stage_epoch"])
    return stage


def _previous_run(metrics_file: Path, chash: str, fingerprint: str, resume: bool) -> dict | None:
    """The completed metrics to return instead of running again, if any.

    A folder that holds another config's run (the YAML defaults changed since, say), or a run
    on other data (another dataset.root, edited files), is not overwritten unless
    resume=false. Runs recorded before data fingerprints existed match any data."""
    if not resume or not metrics_file.is_file():
        return None
    try:
        recorded = json.loads(metrics_file.read_text())
    except (OSError, ValueError):
        recorded = {}
    recorded = recorded if isinstance(recorded, dict) else {}
    other_data = recorded.get("data_fingerprint")
    if other_data is not None and other_data != fingerprint:
        restore_hydra_record(metrics_file.parent)
        raise ConfigError(
            f"{metrics_file.parent} holds a run on other data (fingerprint {other_data}, this "
            f"data {fingerprint}: dataset.root or its files changed); choose a new folder with "
            "name=... or run it again on this data with resume=false"
        )
    other = recorded.get("config_hash")
    if other == chash and recorded.get("status") == "completed":
        log.info(
            "already completed with this config: %s (resume=false runs it again)", metrics_file
        )
        return recorded
    if other == chash and recorded.get("status") == "failed":
        log.info(
            "already failed with this config (%s): %s (resume=false runs it again)",
            describe_failure(recorded),
            metrics_file,
        )
        return recorded
    if other is not None and other != chash:
        restore_hydra_record(metrics_file.parent)
        raise ConfigError(
            f"{metrics_file.parent} holds a run of another config (hash {other}, this one "
            f"{chash}); choose a new folder with name=... or overwrite it with resume=false"
        )
    return None


def summarize(stages: dict) -> dict:
    """Compression of the final stage against the first one (dense: train, or the dense
    stage whose accuracy is then recorded too)."""
    names = list(stages)
    first, last = stages[names[0]], stages[names[-1]]
    dense = {"dense_test_acc": stages["dense"]["test_acc"]} if "dense" in stages else {}
    return {
        **dense,
        "final_stage": names[-1],
        "test_acc": last["test_acc"],
        "params_kept_pct": round(100 * last["params"] / first["params"], 3),
        "macs_kept_pct": round(100 * last["macs"] / first["macs"], 3),
        "compression": round(first["params"] / last["params"], 3),
        "mac_reduction": round(first["macs"] / last["macs"], 3),
        "speedup": round(first["latency_ms"] / last["latency_ms"], 3),
        "total_wall_s": round(sum(s["wall_s"] for s in stages.values()), 3),
    }
