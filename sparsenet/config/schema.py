"""Typed schemas of the config: one dataclass per group, the YAML files checked against them.

`RunConfig` is registered in Hydra's ConfigStore as `sparsenet_schema` and heads the defaults
list of conf/config.yaml, so every YAML file and command-line override is merged into typed
nodes: OmegaConf refuses an unknown key or a value of the wrong type at composition, naming
the full key. Each field carries its `Check` (`checks.setting`), which `Schema.__post_init__`
runs when the group is turned into its dataclass (`OmegaConf.to_object`), and whose `allowed`
text the composition errors reuse (`composition_error`), so a value gets the same message
whichever layer refuses it.

Groups whose keys depend on the choice (dataset, model, regularizer, optimizer, scheduler) are
`Any` here; their options are checked against the typed signature of the component they
select (`components.py`). Values live in the YAML files only: these fields have no defaults
(MISSING), so adding a key is one field here plus its value in the group's YAML file.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from sparsenet.config.checks import (
    NOT_HASHED_AT,
    Boolean,
    Check,
    Choice,
    Integer,
    Number,
    Schema,
    Text,
    describe_type,
    setting,
)
from sparsenet.errors import ConfigError
from sparsenet.pruning.budget import BudgetSettings
from sparsenet.pruning.criteria import PruneSettings

SCHEMA_NAME = "sparsenet_schema"
STAGE_NAMES = ("dense", "train", "prune", "finetune")
DISTRIBUTED_MODES = ("auto", "off")
DEVICE_NAMES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Device(Check):
    """auto | cpu | cuda | cuda:N (whether CUDA is there is checked when the device is chosen)."""

    optional: bool = False
    allowed: str = "auto, cpu, cuda, cuda:N"

    def check(self, key: str, value: Any) -> str:
        ok = isinstance(value, str) and (
            value in DEVICE_NAMES or (value.startswith("cuda:") and value[5:].isdigit())
        )
        if not ok:
            raise ConfigError(key, value, "is not a device", self.allowed)
        return value


@dataclass
class TrainConfig(Schema):
    """conf/train/: the training stage and how every stage runs on the device."""

    epochs: int = setting(Integer(low=0))
    batch_size: int = setting(Integer(low=1))  # the global batch (DDP splits it)
    eval_batch_size: int = setting(Integer(low=1))
    device: str = setting(Device())
    progress: bool = setting(Boolean())
    num_threads: int | None = setting(Integer(low=1, optional=True))
    amp: bool = setting(Boolean())
    channels_last: bool = setting(Boolean())
    flush_denormal: bool = setting(Boolean())
    compile: bool = setting(Boolean())
    distributed: str = setting(Choice(DISTRIBUTED_MODES))
    sync_batchnorm: bool = setting(Boolean(), hash_unless=False)
    label_smoothing: float = setting(Number(low=0, below=1), hash_unless=0.0)
    # false: no weight decay on BatchNorm weights and biases (parameters with one dimension)
    decay_norm_and_bias: bool = setting(Boolean(), hash_unless=True)


@dataclass
class ReportConfig(Schema):
    """conf/report/: what is measured after each stage."""

    latency_batch_size: int = setting(Integer(low=1))
    latency_repeats: int = setting(Integer(low=1))
    train_accuracy: bool = setting(Boolean())
    small_weight: float = setting(Number(low=0))  # |w| below it counts as zero (paper A)


@dataclass
class FinetuneConfig(Schema):
    """conf/finetune/: fine-tuning of the pruned network. `lr` null: the optimizer's own lr;
    `optimizer` null: the training optimizer (else a full optimizer config, `_target_`)."""

    epochs: int = setting(Integer(low=0))
    lr: float | None = setting(Number(above=0, optional=True))
    regularize: bool = setting(Boolean())
    optimizer: Any = None


@dataclass
class DenseConfig(Schema):
    """conf/dense/: the `dense` stage, plain training before `train` (no regularizer) whose
    network is cached by its own configuration and reused by every run that asks for the same
    one (sparsenet/pipeline/dense_cache.py). `lr` null: the optimizer's own lr; `cache_dir`:
    where the cached networks live (a shared filesystem on a cluster)."""

    epochs: int = setting(Integer(low=1))
    lr: float | None = setting(Number(above=0, optional=True))
    cache_dir: str = setting(Text())


@dataclass
class CsvLoggerConfig(Schema):
    """conf/logger/csv.yaml: history.csv and metrics.json, which every run writes anyway."""


@dataclass
class TensorBoardLoggerConfig(Schema):
    """conf/logger/tensorboard.yaml: event files in <run>/tensorboard/."""

    every_n_steps: int = setting(Integer(low=1))


@dataclass
class MlflowLoggerConfig(Schema):
    """conf/logger/mlflow.yaml: `tracking_uri` null is the local store in `local_dir` (SQLite
    database and artifact folder, no server); any other value is MLflow's tracking URI."""

    tracking_uri: str | None = setting(Text(optional=True))
    local_dir: str = setting(Text())
    experiment: str = setting(Text())
    every_n_steps: int = setting(Integer(low=1))
    close_timeout_s: float = setting(Number(above=0))


# The logger node holds one entry per chosen logger (`logger=[tensorboard,mlflow]` merges both
# files, each of which holds only its own entry), so its keys depend on the choice: `Any` in
# RunConfig, each entry checked against its schema above by settings.parse_config.
LOGGER_SCHEMAS = {
    "csv": CsvLoggerConfig,
    "tensorboard": TensorBoardLoggerConfig,
    "mlflow": MlflowLoggerConfig,
}


@dataclass(frozen=True)
class StagesCheck(Check):
    optional: bool = False
    allowed: str = f"a non-empty list of {', '.join(STAGE_NAMES)}"

    def check(self, key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list | tuple) or not value:
            raise self.refuse(key, value)
        for name in value:
            if name not in STAGE_NAMES:
                raise ConfigError(
                    key, list(value), f"names '{name}', not a stage", ", ".join(STAGE_NAMES)
                )
        repeated = sorted({name for name in value if list(value).count(name) > 1})
        if repeated:  # metrics, checkpoints and the summary key each stage by its name
            raise ConfigError(
                key, list(value), f"names {repeated[0]} twice", "each stage at most once"
            )
        if "dense" in value and value[0] != "dense":  # it starts from the initial weights
            raise ConfigError(
                key, list(value), "has dense after another stage", "dense as the first stage"
            )
        return tuple(value)


@dataclass(frozen=True)
class FolderName(Check):
    """One folder level under outputs/runs/ or outputs/sweeps/ (it must not climb out)."""

    optional: bool = False
    allowed: str = "a non-empty folder name of letters, digits, '.', '_', '-' (not . or ..)"

    def check(self, key: str, value: Any) -> str:
        ok = isinstance(value, str) and value not in ("", ".", "..")
        if not ok or not all(c.isalnum() or c in "._-" for c in value):
            raise ConfigError(key, value, "is not a folder name", self.allowed)
        return value


@dataclass
class RunKeys(Schema):
    """The top-level keys of a run (conf/config.yaml)."""

    seed: int = setting(Integer(low=0))
    stages: list[str] = setting(StagesCheck())
    name: str = setting(FolderName())
    resume: bool = setting(Boolean())


@dataclass
class RunConfig(RunKeys):
    """The whole config's shape: the run's keys (RunKeys) and one node per config group."""

    dataset: Any = MISSING
    model: Any = MISSING
    regularizer: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    train: TrainConfig = MISSING
    prune: PruneSettings = MISSING
    budget: BudgetSettings = MISSING
    finetune: FinetuneConfig = MISSING
    dense: DenseConfig = MISSING
    report: ReportConfig = MISSING
    logger: Any = MISSING  # {name: options} of the chosen loggers (LOGGER_SCHEMAS)
    # An experiment bundle's published figures (conf/experiment/): read by the results page,
    # not by the run; free-form.
    reference: Any = None


def hashed_when_changed() -> dict[str, Any]:
    """`group.key -> value` of every field declared with `hash_unless` (checks.setting)."""
    found: dict[str, Any] = {}
    for group, schema in (
        ("", RunKeys),
        ("train", TrainConfig),
        ("report", ReportConfig),
        ("finetune", FinetuneConfig),
        ("prune", PruneSettings),
        ("budget", BudgetSettings),
    ):
        for f in fields(schema):
            if NOT_HASHED_AT in f.metadata:
                found[f"{group}.{f.name}".lstrip(".")] = f.metadata[NOT_HASHED_AT]
    return found


def register_schemas() -> None:
    """Put `RunConfig` in Hydra's ConfigStore (idempotent); call before composing."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=RunConfig)


def to_settings(schema: type, node: DictConfig | dict, path: str) -> Any:
    """The group at `path` as its dataclass, every check run; errors name `path.<key>`."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except ConfigError as error:
        raise error.at(path) from None
    except OmegaConfBaseException as error:
        raise composition_error(error, path) from None


def _field_check(error: OmegaConfBaseException) -> tuple[Check | None, Any]:
    """The schema field the error is about: (its check, its annotated type)."""
    parent = getattr(error, "parent_node", None)
    owner = getattr(getattr(parent, "_metadata", None), "object_type", None)
    if owner is None or not is_dataclass(owner):
        return None, None
    try:
        hints = typing.get_type_hints(owner)
    except Exception:  # noqa: BLE001 - a plugin's schema whose annotations do not resolve
        hints = {}
    for f in fields(owner):
        if f.name == str(getattr(error, "key", "")):
            return f.metadata.get("check"), hints.get(f.name, f.type)
    return None, None


def schema_keys(error: OmegaConfBaseException) -> str:
    """The keys of the typed group (a schema dataclass) an OmegaConf error is about, sorted
    and comma-separated; '' when the node has no schema."""
    owner = getattr(getattr(error.parent_node, "_metadata", None), "object_type", None)
    if owner is None or not is_dataclass(owner):
        return ""
    return ", ".join(sorted(f.name for f in fields(owner)))


def composition_error(error: OmegaConfBaseException, path: str = "") -> ConfigError:
    """OmegaConf's refusal as one ConfigError built from the error's fields (key, value, the
    schema field's check), never from its message text."""
    key = str(getattr(error, "full_key", "") or getattr(error, "key", "") or "")
    if path and key and not key.startswith(path + "."):
        key = f"{path}.{key}"
    key = key or path or "config"
    if isinstance(error, ConfigKeyError):
        allowed = schema_keys(error) or None
        return ConfigError(key, ConfigError.NO_VALUE, "is not a config key", allowed)
    if isinstance(error, ValidationError):
        check, hint = _field_check(error)
        if check is not None:
            return ConfigError(key, error.value, f"must be {check.text()}")
        what = describe_type(hint) if hint is not None else "of another type"
        return ConfigError(key, error.value, f"must be {what}")
    reason = getattr(error, "msg", None) or type(error).__name__
    return ConfigError(key, ConfigError.NO_VALUE, " ".join(str(reason).split()))
