"""A composed config turned into typed settings, once, before any work.

`parse_config(cfg)` checks every value and returns `RunSettings`: the fixed groups as their
schema dataclasses (sparsenet/config/schema.py), the regularizer and the schedule built, and
the model, dataset and optimizers as specs whose options are checked now and which are built
when the run needs them. The stages read these settings only, never the raw config; every
bad value is one `ConfigError` naming its full key, the value and what is allowed.

What needs the model (a regularizer's layer patterns, a regularizer with no group in it) is
checked by `check_regularizer_fits` right after the model is built, before the data is read;
what needs the data (train_subset within the split) by the dataset builders, before training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from sparsenet.config.checks import Integer, Number, Sizes
from sparsenet.config.components import PARTIAL, TARGET, as_dict, build, call, check_options
from sparsenet.config.components import select as select_component
from sparsenet.config.schema import (
    LOGGER_SCHEMAS,
    DenseConfig,
    FinetuneConfig,
    MlflowLoggerConfig,
    ReportConfig,
    RunKeys,
    TensorBoardLoggerConfig,
    TrainConfig,
    composition_error,
    to_settings,
)
from sparsenet.data import DATASETS
from sparsenet.errors import ConfigError
from sparsenet.loggers import check_installed
from sparsenet.models import MODELS
from sparsenet.pipeline.initial_weights import PretrainedWeights, apply_init, resolve_init
from sparsenet.pipeline.schedules import SCHEDULES, Schedule
from sparsenet.pruning.budget import BudgetSettings, prune_settings_for
from sparsenet.pruning.criteria import PruneSettings
from sparsenet.regularizers.base import Regularizer, regularizable_layers
from sparsenet.regularizers.combined import Combined
from sparsenet.regularizers.partial import Partial
from sparsenet.runtime import select_device

# Keys of the dataset node that are not builder options: the loader's workers, and what the
# model config interpolates (checked against the data when it is read).
DATASET_KEYS = {
    "num_workers": Integer(low=0),
    "num_classes": Integer(low=2),
    "input_shape": Sizes(length=3, what="channels, height, width"),
}
# Options of every torch optimizer that must be >= 0 (torch refuses some only when it steps).
OPTIMIZER_NONNEGATIVE = ("weight_decay", "momentum", "eps")


@dataclass(frozen=True)
class BuilderSpec:
    """A registered builder (model or dataset) and its checked options, built later."""

    path: str
    name: str
    builder: Callable
    options: dict

    def build(self, **extra: Any) -> Any:
        return call(self.path, self.name, self.builder, {**self.options, **extra})

    def as_config(self) -> dict:
        return {"name": self.name, **self.options}


@dataclass(frozen=True)
class ModelSpec(BuilderSpec):
    """The model's builder and options, and the weights it starts from (`model.weights`)."""

    weights: Path | PretrainedWeights | None = None  # (the MLP builders' `init`: their scheme)

    def build(self, **extra: Any) -> Any:
        return apply_init(super().build(**extra), self.weights, self.as_config())


@dataclass(frozen=True)
class DatasetSpec(BuilderSpec):
    num_workers: int = 0
    num_classes: int = 2
    input_shape: tuple[int, int, int] = (1, 1, 1)


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer class and its options (lr apart: each stage gives its own)."""

    path: str
    label: str
    factory: Callable
    options: dict
    lr: float  # the learning rate of the stage that uses it

    def build(self, parameters, lr: float) -> torch.optim.Optimizer:
        return call(
            self.path, self.label, self.factory, {"params": parameters, "lr": lr, **self.options}
        )


@dataclass(frozen=True)
class FinetuneSettings:
    """finetune.*: `optimizer` is the training one (finetune.optimizer null) or its own, with
    finetune.lr (null: that optimizer config's lr)."""

    epochs: int
    regularize: bool
    optimizer: OptimizerSpec

    @property
    def lr(self) -> float:
        return self.optimizer.lr


@dataclass(frozen=True)
class DenseSettings:
    """dense.*: the dense stage's epochs, the training optimizer at dense.lr (null: its own
    lr), and the folder of cached dense networks."""

    epochs: int
    optimizer: OptimizerSpec
    cache_dir: Path


@dataclass(frozen=True)
class LoggerSettings:
    """logger=...: the options of each tracking logger chosen (None: not chosen). csv needs
    none: history.csv and metrics.json are always written."""

    tensorboard: TensorBoardLoggerConfig | None = None
    mlflow: MlflowLoggerConfig | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n in ("tensorboard", "mlflow") if getattr(self, n) is not None)


@dataclass(frozen=True)
class RunSettings:
    seed: int
    stages: tuple[str, ...]
    name: str
    resume: bool
    train: TrainConfig
    report: ReportConfig
    prune: PruneSettings  # under a budget: the cut to it (budget.prune_settings_for)
    finetune: FinetuneSettings
    dense: DenseSettings
    optimizer: OptimizerSpec
    scheduler: Schedule
    regularizer: Regularizer
    model: ModelSpec
    dataset: DatasetSpec
    config: dict  # the resolved config, as recorded in metrics.json
    logger: LoggerSettings = LoggerSettings()
    budget: BudgetSettings = dataclasses.field(default_factory=BudgetSettings)


def _resolved(cfg: DictConfig) -> dict:
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as error:
        raise composition_error(error) from None


def parse_optimizer(path: str, node: Any, lr_key: str, lr: Any = None) -> OptimizerSpec:
    """The optimizer config at `path`; `lr` (given at `lr_key`) overrides the node's own."""
    node = as_dict(node)
    label, factory = select_component(path, node, base=torch.optim.Optimizer)
    options = {k: v for k, v in node.items() if k not in (TARGET, PARTIAL)}
    options = check_options(path, label, factory, options)
    own_lr = options.pop("lr", None)
    chosen = own_lr if lr is None else lr
    if chosen is None:
        raise ConfigError(
            lr_key, None, "takes the optimizer config's lr, but it has none", "a number > 0"
        )
    chosen = Number(above=0)(lr_key, chosen)
    for key in OPTIMIZER_NONNEGATIVE:
        if options.get(key) is not None:
            Number(low=0)(f"{path}.{key}", options[key])
    spec = OptimizerSpec(path, label, factory, options, chosen)
    # torch checks some values (betas, say) only in the constructor: one on a single
    # parameter surfaces them now, not after hours of training.
    spec.build([nn.Parameter(torch.zeros(1))], chosen)
    return spec


def _builder_options(path: str, node: dict, registry, config_keys=()) -> tuple[str, Callable, dict]:
    name, builder = select_component(path, node, registry)
    options = {k: v for k, v in node.items() if k != "name" and k not in config_keys}
    options = check_options(path, f"{path} '{name}'", builder, options, ("name", *config_keys))
    return name, builder, options


def parse_regularizer(node: Any) -> Regularizer:
    return build("regularizer", as_dict(node), base=Regularizer)


def parse_config(cfg: DictConfig) -> RunSettings:
    """Every value of `cfg` checked (module docstring); nothing is read or written."""
    resolved = _resolved(cfg)
    keys = to_settings(
        RunKeys, {k: resolved.get(k) for k in ("seed", "stages", "name", "resume")}, ""
    )
    train = to_settings(TrainConfig, resolved["train"], "train")
    select_device(train.device)  # "CUDA is not available here" before any work
    report = to_settings(ReportConfig, resolved["report"], "report")
    budget = to_settings(BudgetSettings, resolved["budget"], "budget")
    prune = prune_settings_for(budget, to_settings(PruneSettings, resolved["prune"], "prune"))
    optimizer = parse_optimizer("optimizer", resolved["optimizer"], "optimizer.lr")
    finetune = _parse_finetune(resolved["finetune"], optimizer)
    dense = to_settings(DenseConfig, resolved["dense"], "dense")
    dense_lr = optimizer.lr if dense.lr is None else dense.lr
    dense_settings = DenseSettings(
        dense.epochs, dataclasses.replace(optimizer, lr=dense_lr), Path(dense.cache_dir)
    )
    scheduler = build("scheduler", as_dict(resolved["scheduler"]), SCHEDULES)
    regularizer = parse_regularizer(resolved["regularizer"])
    if budget.active and not regularizer.active:
        raise ConfigError(
            "regularizer.strength",
            regularizer.strength,
            f"leaves nothing to control: budget.target={budget.target} moves the strength of "
            f"a regularizer ({type(regularizer).__name__} is off)",
            "a regularizer with strength > 0 (its starting point), or budget.target=null",
        )
    model_node = as_dict(resolved["model"])
    model = ModelSpec(
        "model",
        *_builder_options("model", model_node, MODELS, ("weights",)),
        weights=resolve_init(model_node.get("weights"), model_node),
    )
    dataset = _parse_dataset(resolved["dataset"])
    logger = parse_logger(resolved.get("logger"))
    return RunSettings(
        seed=keys.seed,
        stages=keys.stages,
        name=keys.name,
        resume=keys.resume,
        train=train,
        report=report,
        prune=prune,
        finetune=finetune,
        dense=dense_settings,
        optimizer=optimizer,
        scheduler=scheduler,
        regularizer=regularizer,
        model=model,
        dataset=dataset,
        config=resolved,
        logger=logger,
        budget=budget,
    )


def _parse_finetune(node: Mapping, train_optimizer: OptimizerSpec) -> FinetuneSettings:
    """finetune.optimizer null: the training optimizer's spec, at finetune.lr (null: its lr;
    finetune.lr was checked by the schema)."""
    finetune = to_settings(FinetuneConfig, node, "finetune")
    if finetune.optimizer is None:
        lr = train_optimizer.lr if finetune.lr is None else finetune.lr
        spec = dataclasses.replace(train_optimizer, lr=lr)
    else:
        spec = parse_optimizer("finetune.optimizer", finetune.optimizer, "finetune.lr", finetune.lr)
    return FinetuneSettings(finetune.epochs, finetune.regularize, spec)


def _parse_dataset(node: Any) -> DatasetSpec:
    node = as_dict(node)
    name, builder, options = _builder_options("dataset", node, DATASETS, tuple(DATASET_KEYS))
    declared = {
        key: check(f"dataset.{key}", node.get(key, 0 if key == "num_workers" else None))
        for key, check in DATASET_KEYS.items()
    }
    return DatasetSpec("dataset", name, builder, options, **declared)


def parse_logger(node: Any) -> LoggerSettings:
    """The `logger` node: {name: options} of the chosen loggers, the others null (see
    LOGGER_SCHEMAS). An entry without its YAML file's keys was set on the command line
    without choosing the logger (`logger.mlflow.tracking_uri=...` alone)."""
    node = {} if node is None else as_dict(node)
    allowed = ", ".join(LOGGER_SCHEMAS)
    chosen = {}
    for name, options in node.items():
        if name not in LOGGER_SCHEMAS:
            raise ConfigError(f"logger.{name}", ConfigError.NO_VALUE, "is not a logger", allowed)
        if options is None:
            continue
        schema = LOGGER_SCHEMAS[name]
        missing = [f.name for f in dataclasses.fields(schema) if f.name not in options]
        if missing:
            raise ConfigError(
                f"logger.{name}",
                ConfigError.NO_VALUE,
                f"has no {missing[0]}: its keys apply once the logger is chosen",
                f"logger={name} (or logger=[...,{name}]) before logger.{name}.* overrides",
            )
        chosen[name] = to_settings(schema, options, f"logger.{name}")
    check_installed(tuple(chosen))
    return LoggerSettings(tensorboard=chosen.get("tensorboard"), mlflow=chosen.get("mlflow"))


# Groups read by the stage of the same name only.
STAGE_ONLY_GROUPS = ("dense", "prune", "finetune")


def unused_stage_overrides(stages: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """Overrides of a group whose stage is not run (`stages=[train] finetune.epochs=5`):
    they change nothing, which the user should hear about."""
    unused = []
    for override in overrides:
        key = str(override).split("=", 1)[0].lstrip("+~")
        group = key.split(".", 1)[0].split("/", 1)[0]
        if group in STAGE_ONLY_GROUPS and group not in stages:
            unused.append(str(override))
    return unused


# --- the regularizer against the model ------------------------------------------------------
def _parts(regularizer: Regularizer, key: str = "regularizer") -> Iterator[tuple[str, Any]]:
    """(config path, regularizer) of every layer-wise regularizer inside this one."""
    if isinstance(regularizer, Combined):
        for name, part in regularizer.parts.items():
            yield from _parts(part, f"{key}.parts.{name}")
    else:
        yield key, regularizer  # a partial one: its layers are the inner's


def check_regularizer_fits(regularizer: Regularizer, model: nn.Module) -> None:
    """Before training: every `layers` pattern matches a layer, and every active part has
    groups in this model (structure=shape on an MLP, say, would silently do nothing)."""
    layers = regularizable_layers(model)
    listing = ", ".join(f"{n} ({type(m).__name__})" for n, m in layers) or "(none)"
    for key, part in _parts(regularizer):
        inner = part.inner if isinstance(part, Partial) else part
        try:
            inner.check_layer_patterns(model)
        except ConfigError as error:
            raise error.at(key if inner is part else f"{key}.inner") from None
        if part.active and regularizer.active and not part.targets(model):
            settings = {
                k: v
                for k, v in inner.describe().items()
                if k in ("structure", "group_types", "layers") and v not in ({}, None)
            }
            shown = ", ".join(f"{k}={v}" for k, v in settings.items())
            raise ConfigError(
                f"{key} ({type(inner).__name__}{', ' + shown if shown else ''}) has no group in "
                f"any layer of this model; its layers: {listing}; allowed: settings with groups "
                "in these layers, or regularizer=none"
            )
