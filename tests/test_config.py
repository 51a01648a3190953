"""Every choice of every config group composes, and what it names can be built."""

import pytest
import torch
from omegaconf import OmegaConf

from sparsenet.cli import config_choices
from sparsenet.pipeline.settings import parse_config, parse_optimizer, parse_regularizer


def _choices(group: str) -> list[str]:
    choices = config_choices(group)
    assert choices, f"conf/{group}/ has no YAML files"
    return choices


def test_default_config_is_the_documented_experiment(compose_cfg):
    cfg = compose_cfg()
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


def test_data_root_comes_from_the_environment(monkeypatch, tmp_path, compose_cfg):
    monkeypatch.setenv("SPARSENET_DATA", str(tmp_path))
    assert compose_cfg().dataset.root == str(tmp_path)
    monkeypatch.delenv("SPARSENET_DATA")
    assert compose_cfg().dataset.root == "./data"


@pytest.mark.parametrize("name", config_choices("dataset"))
def test_dataset_configscompose_cfg(name, compose_cfg):
    cfg = compose_cfg(f"dataset={name}")
    assert cfg.dataset.name == name
    assert len(cfg.dataset.input_shape) == 3 and cfg.dataset.num_classes >= 2


@pytest.mark.parametrize("name", config_choices("model"))
def test_model_configs_build_and_run(name, compose_cfg):
    cfg = compose_cfg(f"model={name}", "dataset=cifar10")
    model = parse_config(cfg).model.build().eval()
    with torch.no_grad():
        out = model(torch.randn(2, *cfg.dataset.input_shape))
    assert out.shape == (2, cfg.dataset.num_classes)


@pytest.mark.parametrize("name", config_choices("regularizer"))
def test_regularizer_configs_instantiate(name, compose_cfg):
    cfg = compose_cfg(f"regularizer={name}")
    regularizer = parse_regularizer(cfg.regularizer)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2, 3))
    value = regularizer(model)
    assert value.ndim == 0 and torch.isfinite(value)


@pytest.mark.parametrize("name", config_choices("optimizer"))
def test_optimizer_configs_instantiate(name, compose_cfg):
    cfg = compose_cfg(f"optimizer={name}")
    params = [torch.nn.Parameter(torch.ones(2))]
    optimizer = parse_optimizer("optimizer", cfg.optimizer, "optimizer.lr", 0.5).build(params, 0.5)
    assert optimizer.param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize("group", ["scheduler", "prune", "train", "finetune", "report"])
def test_other_groupscompose_cfg(group, compose_cfg):
    for name in _choices(group):
        compose_cfg(f"{group}={name}")


@pytest.mark.parametrize("name", config_choices("experiment"))
def test_experiment_bundlescompose_cfg(name, compose_cfg):
    cfg = compose_cfg(f"experiment={name}")
    assert cfg.dataset.name and cfg.model.name
