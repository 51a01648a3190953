"""Every config value checked before any work starts, so a typo fails in a second, not after
hours of training on a cluster.

`validate_config(cfg)` runs first in `run_experiment`: types, ranges and choices of every
group (run keys, train, optimizer, scheduler, regularizer, prune, finetune, dataset, model,
report), each bad value raising ConfigError with one line, `<key>=<value> ...: <what is
allowed>`. What needs the model (layer patterns, a regularizer with no groups in it) is
checked by `check_regularizer_fits` right after the model is built, before the data is read;
what needs the data (train_subset within the split) by the dataset builders, before training.

Where a component already validates its own values (regularizer constructors, PruneSettings,
finetune_settings, the dataset builders) that check is reused, not repeated; this module adds
what no component owns and makes every message name the full config key.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import hydra
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from sparsenet.data import DATASETS
from sparsenet.errors import ConfigError, UserInputError
from sparsenet.models import MODELS
from sparsenet.pipeline.distributed import MODES
from sparsenet.pipeline.engine import SCHEDULES, make_schedule
from sparsenet.pipeline.stages import STAGES, check_stage_configs, finetune_settings
from sparsenet.regularizers.base import Regularizer, regularizable_layers
from sparsenet.regularizers.combined import Combined
from sparsenet.regularizers.partial import Partial
from sparsenet.runtime import select_device

# Keys of each group that are not passed to a builder; a new key needs adding here (the
# default config must validate, which every run test checks).
TRAIN_KEYS = {
    "epochs": "an integer >= 0",
    "batch_size": "an integer >= 1",
    "eval_batch_size": "an integer >= 1",
    "device": "auto, cpu, cuda or cuda:N",
    "progress": "true or false",
    "num_threads": "null or an integer >= 1",
    "amp": "true or false",
    "channels_last": "true or false",
    "flush_denormal": "true or false",
    "compile": "true or false",
    "distributed": "auto or off",
    "sync_batchnorm": "true or false",
}
REPORT_KEYS = ("latency_batch_size", "latency_repeats", "train_accuracy", "small_weight")
DATASET_CONFIG_KEYS = ("name", "num_workers", "num_classes", "input_shape")  # not builder options
SCHEDULE_OPTIONS = {"cosine": (), "constant": (), "multistep": ("milestones", "gamma")}


# --- one value ----------------------------------------------------------------------------
def _show(value: Any) -> str:
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=True)
    return repr(value) if isinstance(value, str) else str(value)


def check_integer(key: str, value: Any, low: int | None = None, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        allowed = "an integer" + (f" >= {low}" if low is not None else "")
        raise ConfigError(f"{key}={_show(value)} must be {'null or ' if optional else ''}{allowed}")


def check_number(
    key: str, value: Any, *, low: float | None = None, above: float | None = None, high=None
) -> float:
    """A finite number (int or float, not a bool or a string) within the given bounds."""
    parts = [f">= {low:g}"] if low is not None else []
    parts += [f"> {above:g}"] if above is not None else []
    parts += [f"<= {high:g}"] if high is not None else []
    allowed = "a finite number" + (f" {' and '.join(parts)}" if parts else "")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{key}={_show(value)} must be {allowed}")
    if (
        (low is not None and value < low)
        or (above is not None and value <= above)
        or (high is not None and value > high)
    ):
        raise ConfigError(f"{key}={_show(value)} is out of range; allowed: {allowed}")
    return float(value)


def check_boolean(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={_show(value)} must be true or false")


def check_choice(key: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={_show(value)} is not allowed; allowed: {', '.join(allowed)}")


def check_known_keys(group: str, cfg: Mapping, allowed: Sequence[str]) -> None:
    unknown = sorted(set(map(str, cfg)) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{group}.{unknown[0]} is not a key of {group}; allowed: {', '.join(sorted(allowed))}"
        )


# --- the groups ---------------------------------------------------------------------------
def _check_run_keys(cfg: DictConfig) -> None:
    check_integer("seed", cfg.get("seed"), 0)
    stages = cfg.get("stages")
    if not isinstance(stages, ListConfig | list) or not stages:
        raise ConfigError(f"stages={_show(stages)} must be a non-empty list of {', '.join(STAGES)}")
    for name in stages:
        if name not in STAGES:
            raise ConfigError(
                f"stages={_show(stages)}: '{name}' is not a stage; allowed: {', '.join(STAGES)}"
            )
    check_boolean("resume", cfg.get("resume"))


def _check_train(train: DictConfig) -> None:
    check_known_keys("train", train, TRAIN_KEYS)
    check_integer("train.epochs", train.get("epochs"), 0)
    check_integer("train.batch_size", train.get("batch_size"), 1)
    check_integer("train.eval_batch_size", train.get("eval_batch_size"), 1)
    check_integer("train.num_threads", train.get("num_threads"), 1, optional=True)
    for key in ("progress", "amp", "channels_last", "flush_denormal", "compile", "sync_batchnorm"):
        if key in train:
            check_boolean(f"train.{key}", train[key])
    check_choice("train.distributed", train.get("distributed", "auto"), MODES)
    device = train.get("device")
    if not isinstance(device, str):
        raise ConfigError(f"train.device={_show(device)} must be one of {TRAIN_KEYS['device']}")
    select_device(device)  # its own message, including "CUDA is not available here"


def _dummy_parameters() -> list[nn.Parameter]:
    return [nn.Parameter(torch.zeros(2))]


def check_optimizer(key: str, optimizer: DictConfig, lr: Any, lr_key: str) -> None:
    """An optimizer config with learning rate `lr` (the value of `lr_key`): built on a dummy
    parameter, so whatever torch refuses (a bad beta, an unknown argument) is refused here,
    naming the key."""
    if not isinstance(optimizer, DictConfig) or "_target_" not in optimizer:
        raise ConfigError(f"{key}={_show(optimizer)} must be an optimizer config with _target_")
    check_number(lr_key, lr, above=0)
    for name, low in (("weight_decay", 0), ("momentum", 0), ("eps", 0)):
        if optimizer.get(name) is not None:
            check_number(f"{key}.{name}", optimizer.get(name), low=low)
    try:
        hydra.utils.instantiate(optimizer, lr=lr, _partial_=True)(_dummy_parameters())
    except InstantiationException as error:
        raise instantiation_error(error, key) from None
    except (TypeError, ValueError) as error:  # raised by the optimizer's constructor
        raise ConfigError(constructor_message(key, optimizer._target_, error)) from None


def _check_scheduler(scheduler: DictConfig) -> None:
    name = scheduler.get("name")
    check_choice("scheduler.name", name, SCHEDULES)
    options = {k: v for k, v in scheduler.items() if k != "name"}
    check_known_keys("scheduler", options, SCHEDULE_OPTIONS[name])
    if name == "multistep":
        if "gamma" in options:
            check_number("scheduler.gamma", options["gamma"], above=0)
        milestones = options.get("milestones", [])
        if not isinstance(milestones, ListConfig | list) or not all(
            isinstance(m, int | float) and not isinstance(m, bool) and 0 <= m <= 1
            for m in milestones
        ):
            _must_be(
                "scheduler.milestones", milestones, "a list of fractions of the stage, in [0, 1]"
            )
    optimizer = torch.optim.SGD(_dummy_parameters(), lr=1.0)
    make_schedule(optimizer, name, 1, **options)


def _check_report(report: DictConfig) -> None:
    check_known_keys("report", report, REPORT_KEYS)
    check_integer("report.latency_batch_size", report.get("latency_batch_size"), 1)
    check_integer("report.latency_repeats", report.get("latency_repeats"), 1)
    check_boolean("report.train_accuracy", report.get("train_accuracy", False))
    check_number("report.small_weight", report.get("small_weight", 1e-3), low=0)


_ANNOTATION_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "int": lambda key, v: check_integer(key, v),
    "float": lambda key, v: check_number(key, v),
    "bool": check_boolean,
    "str": lambda key, v: None if isinstance(v, str) else _must_be(key, v, "a string"),
    "Sequence[int]": lambda key, v: _check_sizes(key, v),
}


def _must_be(key: str, value: Any, what: str) -> None:
    raise ConfigError(f"{key}={_show(value)} must be {what}")


def _check_sizes(key: str, value: Any) -> None:
    if not isinstance(value, ListConfig | list | tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value
    ):
        _must_be(key, value, "a list of integers >= 1")


def check_builder_options(
    group: str, name: str, builder: Callable, options: Mapping[str, Any], config_keys=()
) -> None:
    """Options of a registered builder: each must be a parameter of it, of the type its
    annotation names (int, float, bool, str, Sequence[int], optionally `| None`)."""
    parameters = inspect.signature(builder).parameters
    for key, value in options.items():
        if key not in parameters:
            allowed = sorted({*parameters, *config_keys})
            raise ConfigError(
                f"{group}.{key} is not an option of {group} '{name}'; allowed: {', '.join(allowed)}"
            )
        annotation = parameters[key].annotation
        text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
        kinds = [part.strip() for part in text.split("|")]
        if "None" in kinds and value is None:
            continue
        checks = [_ANNOTATION_CHECKS[k] for k in kinds if k in _ANNOTATION_CHECKS]
        if len(checks) == 1:
            checks[0](f"{group}.{key}", value)


def _check_dataset(dataset: DictConfig) -> None:
    name = dataset.get("name")
    check_choice("dataset.name", name, DATASETS.names())
    options = {k: v for k, v in dataset.items() if k not in DATASET_CONFIG_KEYS}
    check_builder_options("dataset", name, DATASETS.get(name), options, DATASET_CONFIG_KEYS)
    for key in ("train_subset", "test_subset"):
        check_integer(f"dataset.{key}", options.get(key), 1, optional=True)
    if "image_size" in options:
        check_integer("dataset.image_size", options["image_size"], 1)
    check_integer("dataset.num_workers", dataset.get("num_workers", 0), 0)
    check_integer("dataset.num_classes", dataset.get("num_classes"), 2)
    shape = dataset.get("input_shape")
    _check_sizes("dataset.input_shape", shape)
    if len(shape) != 3:
        _must_be("dataset.input_shape", shape, "[channels, height, width]")


def _check_model(model: DictConfig) -> None:
    name = model.get("name")
    check_choice("model.name", name, MODELS.names())
    options = {k: v for k, v in model.items() if k != "name"}
    check_builder_options("model", name, MODELS.get(name), options, ("name",))


def _check_finetune(cfg: DictConfig) -> None:
    check_known_keys("finetune", cfg.finetune, ("epochs", "lr", "regularize", "optimizer"))
    if "finetune" in cfg.stages:
        settings = finetune_settings(cfg)
        key = "finetune.optimizer" if cfg.finetune.get("optimizer") is not None else "optimizer"
        check_optimizer(key, settings.optimizer, settings.lr, "finetune.lr")


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first bad value of `cfg`; nothing is read or written."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as error:
        raise ConfigError(omegaconf_message(error)) from None
    _check_run_keys(cfg)
    _check_train(cfg.train)
    check_optimizer("optimizer", cfg.optimizer, cfg.optimizer.get("lr"), "optimizer.lr")
    _check_scheduler(cfg.scheduler)
    build_regularizer(cfg)
    check_stage_configs(cfg)  # prune.* (PruneSettings) and finetune.* (finetune_settings)
    _check_finetune(cfg)
    _check_dataset(cfg.dataset)
    _check_model(cfg.model)
    _check_report(cfg.report)


# --- the regularizer ----------------------------------------------------------------------
def build_regularizer(cfg: DictConfig) -> Regularizer:
    """Instantiate cfg.regularizer; its own checks' errors come out as ConfigError naming the
    full key (`regularizer.parts.sgl.alpha=2 ...`), not as Hydra's wrapped traceback."""
    try:
        regularizer = hydra.utils.instantiate(cfg.regularizer)
    except InstantiationException as error:
        raise instantiation_error(error, "regularizer") from None
    if not isinstance(regularizer, Regularizer):
        raise ConfigError(
            f"regularizer._target_={cfg.regularizer.get('_target_')!r} is not a Regularizer "
            "subclass; allowed: the classes in sparsenet.regularizers"
        )
    return regularizer


def _parts(regularizer: Regularizer, key: str = "regularizer") -> Iterator[tuple[str, Any]]:
    """(config key, regularizer) of every layer-wise regularizer inside this one."""
    if isinstance(regularizer, Combined):
        for name, part in regularizer.parts.items():
            yield from _parts(part, f"{key}.parts.{name}")
    elif isinstance(regularizer, Partial):
        yield key, regularizer  # its layers are the inner's, its exempt units its own
    else:
        yield key, regularizer


def _rekey(message: str, key: str) -> str:
    """A regularizer names its keys `regularizer.<key>`; nested in a config at `key` (a part
    of a combination, a partial's inner) they are `<key>.<key>`."""
    return re.sub(r"(?<![\w.])regularizer\.", f"{key}.", message)


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
            raise ConfigError(
                _rekey(str(error), key if inner is part else key + ".inner")
            ) from None
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


# --- messages of wrapped errors -----------------------------------------------------------
def instantiation_error(error: InstantiationException, key: str) -> ConfigError:
    """One line for a failed `hydra.utils.instantiate`: the component's own ConfigError with
    its key made full, or what the constructor refused, naming the config node."""
    found = re.search(r"full_key: (\S+)", str(error))
    full_key = found.group(1) if found else key
    cause = error.__cause__
    if isinstance(cause, UserInputError):
        return ConfigError(_rekey(str(cause), full_key))
    target = re.search(r"target '([^']+)'", str(error))
    if cause is None:  # the target itself: "Error locating target 'x.Y'"
        return ConfigError(f"{full_key}._target_: {str(error).splitlines()[0]}")
    return ConfigError(constructor_message(full_key, target.group(1) if target else "", cause))


def constructor_message(key: str, target: str, error: BaseException) -> str:
    """What a constructor refused, as `<key>.<option> is not an option of <target>` or
    `<key> (<target>): <its message>`."""
    unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(error))
    if unexpected:
        return f"{key}.{unexpected.group(1)} is not an option of {target or key}"
    return f"{key}{f' ({target})' if target else ''}: {' '.join(str(error).split())}"


def omegaconf_message(error: OmegaConfBaseException) -> str:
    """`<key>: <what OmegaConf says>` on one line (an interpolation that does not resolve, a
    value of the wrong type for a typed node)."""
    first = str(error).splitlines()[0].strip()
    key = getattr(error, "full_key", None)
    return f"{key}: {first}" if key else first
