"""Model zoo: every registered model builds, runs, matches a hand-counted size and is traceable."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from omegaconf import OmegaConf
from torch import nn

from sparsenet.models import MODELS, get_model, list_models
from sparsenet.models.mlp import build_mlp
from sparsenet.models.resnet_cifar import resnet_cifar

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "model"

# Smaller than the builders' defaults where that keeps the tests fast (ImageNet nets at 64x64).
TEST_SHAPES = {"resnet18": (3, 64, 64), "resnet50": (3, 64, 64), "torchvision": (3, 32, 32)}

# Parameter counts worked out by hand; (num_classes, count). conv = k*k*C_in*C_out (+ C_out
# bias), BN = 2*C, Linear = n_in*n_out + n_out.
EXPECTED_PARAMS = {
    # 784*400+400 = 314,000; 400*300+300 = 120,300; 300*100+100 = 30,100; 100*10+10 = 1,010
    "mlp": (10, 465_410),
    # 784*300+300 = 235,500; 300*100+100 = 30,100; 100*10+10 = 1,010
    "lenet300_100": (10, 266_610),
    # conv1 25*1*20+20 = 520; conv2 25*20*50+50 = 25,050; fc1 800*500+500 = 400,500;
    # fc2 500*10+10 = 5,010
    "lenet5": (10, 431_080),
    # conv1 25*1*32+32 = 832; conv2 25*32*64+64 = 51,264; fc1 1024*270+270 = 276,750;
    # fc2 270*10+10 = 2,710
    "cnn332k": (10, 331_556),
    # bias-free convs: 9*(3*64 + 64*64 + 64*128 + 128*128 + 128*256 + 2*256*256 + 256*512
    #   + 5*512*512) = 9*1,634,496 = 14,710,464; BN 2*(2*64 + 2*128 + 3*256 + 6*512) = 8,448;
    # fc 512*10+10 = 5,130.  Sum 14,724,042.
    "vgg16": (10, 14_724_042),
    # stem 9*3*16 + 2*16 = 464; 16-ch block 2*(9*16*16 + 32) = 4,672;
    # first 32-ch block 9*16*32+64 + 9*32*32+64 + (16*32+64) = 14,528; other 32-ch block
    # 2*(9*32*32 + 64) = 18,560; first 64-ch block 9*32*64+128 + 9*64*64+128 + (32*64+128)
    # = 57,728; other 64-ch block 2*(9*64*64 + 128) = 73,984; fc 64*10+10 = 650.
    # n=3: 464 + 3*4,672 + 14,528 + 2*18,560 + 57,728 + 2*73,984 + 650 = 272,474
    "resnet20": (10, 272_474),
    # n=9: 464 + 9*4,672 + 14,528 + 8*18,560 + 57,728 + 8*73,984 + 650 = 855,770
    "resnet56": (10, 855_770),
    # torchvision's published sizes (ImageNet, 1000 classes)
    "resnet18": (1000, 11_689_512),
    "resnet50": (1000, 25_557_032),
    # the default arch, mobilenet_v2, unadapted at 3x224x224 (torchvision's published size)
    "torchvision": (1000, 3_504_872),
}


def input_shape_for(name: str) -> tuple[int, ...]:
    """The test input shape: an override, else the builder's own default."""
    if name in TEST_SHAPES:
        return TEST_SHAPES[name]
    return tuple(inspect.signature(MODELS.get(name)).parameters["input_shape"].default)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list_models())
def test_forward_shape(name: str) -> None:
    shape = input_shape_for(name)
    # a list, as OmegaConf hands it over from ${dataset.input_shape}
    model = get_model(name, num_classes=10, input_shape=list(shape)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("name", list_models())
def test_param_count(name: str) -> None:
    assert name in EXPECTED_PARAMS, f"add a hand-computed parameter count for '{name}'"
    num_classes, expected = EXPECTED_PARAMS[name]
    assert n_params(get_model(name, num_classes=num_classes)) == expected


@pytest.mark.parametrize("name", list_models())
def test_dependency_graph_builds(name: str) -> None:
    shape = input_shape_for(name)
    model = get_model(name, num_classes=10, input_shape=shape)
    example = torch.randn(1, *shape)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    assert any(True for _ in graph.get_all_groups(root_module_types=(nn.Conv2d, nn.Linear)))


@pytest.mark.parametrize("name", list_models())
def test_config_file(name: str) -> None:
    """conf/model/<name>.yaml exists, names the model and passes only arguments it accepts."""
    path = CONF_DIR / f"{name}.yaml"
    assert path.is_file(), f"missing {path}"
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    assert cfg.pop("name") == name
    accepted = inspect.signature(MODELS.get(name)).parameters
    assert {"num_classes", "input_shape"} <= set(cfg) <= set(accepted)


def test_resnet_option_b_couples_shortcut_with_block() -> None:
    """The stage-2 projection's out-channels and the block's conv2 form one prunable group."""
    model = get_model("resnet20")
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 32, 32))
    block = model.layer2[0]
    group = graph.get_pruning_group(block.conv2, tp.prune_conv_out_channels, idxs=[0])
    modules = {item.dep.target.module for item in group}
    assert block.shortcut[0] in modules and model.layer2[1].conv1 in modules


def test_resnet_cifar_depths() -> None:
    # n=5: 464 + 5*4,672 + 14,528 + 4*18,560 + 57,728 + 4*73,984 + 650 = 466,906
    assert n_params(resnet_cifar(32)) == 466_906
    with pytest.raises(ValueError):
        resnet_cifar(21)


def test_mlp_hidden_sizes_configurable() -> None:
    # 784*50+50 = 39,250; 50*10+10 = 510
    assert n_params(get_model("mlp", hidden=[50])) == 39_760
    linears = [m for m in build_mlp(12, [5, 4], 3) if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(12, 5), (5, 4), (4, 3)]


def test_paper_a_init() -> None:
    torch.manual_seed(0)
    model = get_model("mlp", init="paper_a")
    for layer in (m for m in model.modules() if isinstance(m, nn.Linear)):
        assert torch.all(layer.bias == 0.1)
        assert layer.weight.abs().max() <= 0.2  # truncated at 2 std
    # N(0, 0.1) truncated at +-2 std has std 0.1 * sqrt(1 - 4*phi(2)/(2*Phi(2) - 1)) ~= 0.0880
    assert model.fc1.weight.std().item() == pytest.approx(0.0880, abs=0.002)
    with pytest.raises(ValueError):
        get_model("mlp", init="nope")
