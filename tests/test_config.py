"""Every choice of every config group composes, and what it names can be built."""

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sparsenet.cli import config_choices
from sparsenet.models import get_model


def _compose(*overrides: str):
    with initialize_config_module(config_module="sparsenet.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _choices(group: str) -> list[str]:
    choices = config_choices(group)
    assert choices, f"conf/{group}/ has no YAML files"
    return choices


def test_default_config_is_the_documented_experiment():
    cfg = _compose()
    assert (cfg.dataset.name, cfg.model.name) == ("mnist", "lenet5")
    assert cfg.regularizer._target_.endswith("GroupLasso")
    assert list(cfg.stages) == ["train", "prune", "finetune"]
    for key in (
        "dataset.root",
        "dataset.download",
        "dataset.format",
        "dataset.train_subset",
        "train.epochs",
        "train.batch_size",
        "train.device",
        "optimizer.lr",
        "regularizer.strength",
        "prune.threshold",
        "finetune.epochs",
        "finetune.lr",
        "seed",
    ):
        assert OmegaConf.select(cfg, key, default="<absent>") != "<absent>", key


def test_data_root_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSENET_DATA", str(tmp_path))
    assert _compose().dataset.root == str(tmp_path)
    monkeypatch.delenv("SPARSENET_DATA")
    assert _compose().dataset.root == "./data"


@pytest.mark.parametrize("name", config_choices("dataset"))
def test_dataset_configs_compose(name):
    cfg = _compose(f"dataset={name}")
    assert cfg.dataset.name == name
    assert len(cfg.dataset.input_shape) == 3 and cfg.dataset.num_classes >= 2


@pytest.mark.parametrize("name", config_choices("model"))
def test_model_configs_build_and_run(name):
    cfg = _compose(f"model={name}", "dataset=cifar10")
    kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    model = get_model(kwargs.pop("name"), **kwargs).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *cfg.dataset.input_shape))
    assert out.shape == (2, cfg.dataset.num_classes)


@pytest.mark.parametrize("name", config_choices("regularizer"))
def test_regularizer_configs_instantiate(name):
    cfg = _compose(f"regularizer={name}")
    regularizer = instantiate(cfg.regularizer)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2, 3))
    value = regularizer(model)
    assert value.ndim == 0 and torch.isfinite(value)


@pytest.mark.parametrize("name", config_choices("optimizer"))
def test_optimizer_configs_instantiate(name):
    cfg = _compose(f"optimizer={name}")
    params = [torch.nn.Parameter(torch.ones(2))]
    optimizer = instantiate(cfg.optimizer, lr=0.5)(params)
    assert optimizer.param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize("group", ["scheduler", "prune", "train", "finetune", "report"])
def test_other_groups_compose(group):
    for name in _choices(group):
        _compose(f"{group}={name}")


@pytest.mark.parametrize("name", config_choices("experiment"))
def test_experiment_bundles_compose(name):
    cfg = _compose(f"experiment={name}")
    assert cfg.dataset.name and cfg.model.name
