"""Removal is exact on every registry model: zero random unit groups (BatchNorm shift or bias
left non-zero, residual channels zeroed in every coupled producer), prune, and the narrow
network computes what the masked dense one computed, in eval mode, within 1e-4, also at an
input size other than the calibration one.

Which layers are coupled is written down here from the architectures (plain chains, residual
stages), not read from torch-pruning, and the expected unit counts follow from what was zeroed.
"""

import re

import pytest
import torch
from torch import nn

from sparsenet.models import get_model, list_models
from sparsenet.pruning import FoldedConv2d, prune_dead_units

pytestmark = pytest.mark.usefixtures("one_torch_thread")


INPUT_SHAPES = {"resnet18": (3, 64, 64), "resnet50": (3, 64, 64)}  # small ImageNet inputs
CIFAR_SHAPE = (3, 32, 32)
MNIST_SHAPE = (1, 28, 28)
OTHER_SIZE = {"vgg16": (48, 40), "resnet20": (40, 40), "resnet56": (24, 28)}
OTHER_SIZE.update({"resnet18": (48, 56), "resnet50": (56, 48)})
UNITS_PER_GROUP = 3


def _input_shape(name: str) -> tuple[int, int, int]:
    if name in INPUT_SHAPES:
        return INPUT_SHAPES[name]
    return CIFAR_SHAPE if name.startswith(("vgg", "resnet")) else MNIST_SHAPE


def _producer_sets(name: str, model: nn.Module) -> list[list[str]]:
    """Groups of layers that must be zeroed together to kill a unit: one layer for a plain
    chain or a block's inner conv, every writer of a residual stage for a stage channel."""
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hidden = layers[:-1]
    if name in ("mlp", "lenet300_100", "lenet5", "cnn332k"):
        return [[n] for n in hidden]
    if name == "vgg16":
        return [[n] for n in ("features.conv1_1", "features.conv3_3", "features.conv5_3")]
    modules = dict(model.named_modules())
    blocks = [n for n in modules if re.fullmatch(r"layer\d\.\d+", n)]
    last = "conv3" if hasattr(modules[blocks[0]], "conv3") else "conv2"
    sets = []
    for stage in sorted({b.split(".")[0] for b in blocks}):
        writers = [f"{b}.{last}" for b in blocks if b.startswith(stage + ".")]
        projection = [
            f"{stage}.0.{p}.0" for p in ("shortcut", "downsample") if f"{stage}.0.{p}.0" in modules
        ]
        if stage == "layer1" and not projection:
            writers.append("conv1")  # the stem writes layer1's identity stream
        sets.append(writers + projection)
    layer2 = [b for b in blocks if b.startswith("layer2.")]
    inner = [f"{blocks[0]}.conv1", f"{layer2[0]}.conv1"]  # a block's own channels
    if last == "conv3":
        inner += [f"{blocks[-1]}.conv2", "conv1"]  # bottleneck middle; stem (layer1 projects)
    return sets + [[n] for n in inner]


def _norm_after(modules: dict, producer: str) -> nn.Module | None:
    """The BatchNorm right after a producer conv, by the models' naming."""
    candidates = [
        re.sub(r"conv(\d)$", r"bn\1", producer),
        re.sub(r"conv(\d_\d)$", r"bn\1", producer),
        re.sub(r"\.0$", ".1", producer),
    ]
    for c in candidates:
        if c != producer and isinstance(modules.get(c), nn.BatchNorm2d):
            return modules[c]
    return None


def _prepare(name: str):
    torch.manual_seed(0)
    shape = _input_shape(name)
    model = get_model(name, num_classes=10, input_shape=shape)
    x = torch.randn(4, *shape)
    # Realistic BatchNorm statistics (one pass in train mode), then non-zero shifts.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    modules = dict(model.named_modules())
    expected = {n: m.weight.shape[0] for n, m in modules.items() if isinstance(m, nn.Conv2d)}
    expected.update({n: m.weight.shape[0] for n, m in modules.items() if isinstance(m, nn.Linear)})
    zeroed = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.uniform_(-0.1, 0.3)
        for producers in _producer_sets(name, model):
            n = modules[producers[0]].weight.shape[0]
            units = torch.randperm(n)[:UNITS_PER_GROUP]
            # Constant outputs: positive for the first two units (they pass the ReLU),
            # negative for the third (a zero after the ReLU).
            shift = torch.tensor([0.5, 0.25, -0.5])[: len(units)] * torch.rand(len(units)).add(1)
            for p in producers:
                layer = modules[p]
                layer.weight[units] = 0
                norm = _norm_after(modules, p)
                if norm is not None:
                    norm.running_mean[units] = 0
                    norm.bias[units] = shift
                elif layer.bias is not None:
                    layer.bias[units] = shift
                expected[p] = n - len(units)
            zeroed += len(units)
        # Logits of order 1, so 1e-4 is a relative precision (and float32 noise stays far below).
        head = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][-1]
        scale = float(model(x).abs().max())
        head.weight /= scale
        head.bias /= scale
    return model, x, expected, zeroed


# `torchvision` (any torchvision architecture): its dead units cannot be chosen from layer
# names as `_producer_sets` does; tests/test_torchvision_models.py checks the same equivalence
# on its unit groups (mobilenet_v2, efficientnet_b0, regnet_x_400mf, shufflenet_v2_x1_0).
NAMED_LAYER_MODELS = [name for name in list_models() if name != "torchvision"]


@pytest.mark.parametrize("name", NAMED_LAYER_MODELS)
def test_pruned_network_equals_the_masked_dense_network(name):
    model, x, expected, zeroed = _prepare(name)
    other = None
    if name in OTHER_SIZE:
        other = torch.randn(2, x.shape[1], *OTHER_SIZE[name])
    with torch.no_grad():
        reference = model(x)
        reference_other = model(other) if other is not None else None

    result = prune_dead_units(model, x[:1], threshold=0.0, calibration=x)

    modules = dict(model.named_modules())
    kept = {
        n: m.weight.shape[0] for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear))
    }
    assert kept == expected
    for n, m in modules.items():  # every BatchNorm is as wide as the conv before it
        if isinstance(m, nn.BatchNorm2d):
            producer = re.sub(r"bn(\d(_\d)?)$", r"conv\1", n) if n.split(".")[-1][:2] == "bn" else n
            producer = re.sub(r"\.1$", ".0", producer)
            assert m.num_features == kept[producer], n
    assert result.units_removed == zeroed
    assert sum(map(len, result.removed.values())) == zeroed
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference, atol=1e-4, rtol=0)
        if other is not None:
            # The border fold is computed for the input's size at run time: exact there too.
            torch.testing.assert_close(model(other), reference_other, atol=1e-4, rtol=0)
    padded = name.startswith(("vgg", "resnet"))
    assert bool(result.folded) == padded
    assert all(isinstance(modules[n], FoldedConv2d) for n in result.folded)


def test_without_the_border_term_the_same_pruning_is_visibly_off():
    """The check above is sharp: the bias-only fold misses the border contribution of the
    constant channels by far more than 1e-4 on the same setup."""
    model, x, _, _ = _prepare("resnet20")
    with torch.no_grad():
        reference = model(x)
    result = prune_dead_units(model, x[:1], threshold=0.0, calibration=x, fold="bias")
    with torch.no_grad():
        deviation = float((model(x) - reference).abs().max())
    assert deviation > 1e-2 and result.folded == [] and max(result.fold_error.values()) > 1e-2
