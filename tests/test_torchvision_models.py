"""`model=torchvision`: any torchvision classification architecture, adapted to the data,
pruned exactly (depthwise convs, squeeze-excitation, channel shuffles and splits), regularized
by every regularizer, and started from torchvision's pretrained weights by name."""

from __future__ import annotations

import logging
import urllib.error

import pytest
import torch
import torchvision
from conftest import randomize_batchnorm
from torch import nn

from sparsenet.cli import config_choices
from sparsenet.errors import ConfigError, UserInputError
from sparsenet.models import get_model
from sparsenet.pipeline.settings import check_regularizer_fits, parse_config
from sparsenet.pruning import PruneSettings, UnitGroups, check_prunable, prune_units
from sparsenet.pruning.groups import SliceIndex
from sparsenet.pruning.prunable import NotPrunable

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GREY = (1, 28, 28)  # MNIST's shape: the smallest input, and a stem with another channel count
# one of each kind the issue names: depthwise + inverted residual, squeeze-excitation,
# grouped convs, channel split + shuffle + concatenation
ARCHS = ("mobilenet_v2", "efficientnet_b0", "regnet_x_400mf", "shufflenet_v2_x1_0")


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_pruned_network_computes_what_the_masked_dense_one_does(arch):
    generator = torch.Generator().manual_seed(0)
    model = get_model("torchvision", arch=arch, num_classes=10, input_shape=GREY).eval()
    randomize_batchnorm(model, generator)
    x = torch.randn(6, *GREY, generator=generator)
    groups = UnitGroups(model, x[:1])
    index = SliceIndex(groups.groups, ("out",), torch.device("cpu"))
    dead = torch.rand(index.num_units, generator=generator) < 0.4  # 40% of the units, anywhere
    index.scale_((~dead).float())  # zero their incoming weights: the masked dense network
    masked = model(x)
    before = sum(p.numel() for p in model.parameters())
    prune_units(model, x[:1], PruneSettings(threshold=0.0), calibration=x)
    after = sum(p.numel() for p in model.parameters())
    assert after < 0.8 * before  # the network really shrank
    scale = float(masked.abs().max())
    assert float((model(x) - masked).abs().max()) <= 1e-4 * max(1.0, scale)
    # what is left is a plain torchvision network again: it runs at another batch size
    assert model(torch.randn(1, *GREY, generator=generator)).shape == (1, 10)


def test_stem_and_classifier_follow_the_data():
    model = get_model("torchvision", arch="resnet18", num_classes=10, input_shape=GREY)
    assert (model.conv1.in_channels, model.conv1.stride) == (1, (1, 1))
    assert isinstance(model.maxpool, nn.Identity)  # 28 px: no 4x reduction in the stem
    assert model.fc.out_features == 10
    # ImageNet-size input: the stem stays torchvision's own
    big = get_model("torchvision", arch="resnet18", num_classes=1000, input_shape=(3, 96, 96))
    assert big.conv1.stride == (2, 2) and isinstance(big.maxpool, nn.MaxPool2d)


def test_a_name_torchvision_does_not_list_gets_one_line_with_close_names():
    with pytest.raises(ConfigError) as refused:
        get_model("torchvision", arch="mobilenetv2", num_classes=10, input_shape=GREY)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("arch='mobilenetv2' is not a torchvision classification")
    assert "mobilenet_v2" in message


def test_an_architecture_that_cannot_take_the_input_size_is_refused_before_training():
    with pytest.raises(ConfigError, match=r"arch='vit_b_16' cannot run on inputs of shape"):
        get_model("torchvision", arch="vit_b_16", num_classes=10, input_shape=(3, 32, 32))


class _ChannelFlip(nn.Module):
    """Reverses the channel order: an op torch-pruning takes for element-wise."""

    def forward(self, x):
        return x.flip(1)


def test_a_network_whose_units_cannot_be_removed_exactly_is_refused_in_one_line():
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), _ChannelFlip(), nn.Conv2d(4, 3, 3)
    )
    with pytest.raises(NotPrunable) as refused:
        check_prunable(net, torch.zeros(1, *GREY))
    assert "removing dead units changes its outputs" in str(refused.value)
    assert "\n" not in str(refused.value)


REGULARIZERS = [name for name in config_choices("regularizer") if name != "none"]


@pytest.mark.parametrize(
    ("regularizer", "arch"),
    [  # one pair in the fast suite, the rest in the slow group (each trains a network)
        pytest.param(r, ARCHS[i % len(ARCHS)], marks=() if i == 0 else pytest.mark.slow)
        for i, r in enumerate(REGULARIZERS)
    ],
)
def test_every_regularizer_drives_the_groups_of_torchvision_networks(
    regularizer, arch, compose_cfg
):
    cfg = compose_cfg(
        "experiment=smoke",
        "model=torchvision",
        f"model.arch={arch}",
        f"regularizer={regularizer}",
        "regularizer.strength=1e-3",
    )
    settings = parse_config(cfg)
    model = settings.model.build()
    example = torch.zeros(1, *settings.dataset.input_shape)
    check_regularizer_fits(settings.regularizer, model)
    settings.regularizer.bind(model, example)
    value = settings.regularizer(model)
    assert torch.isfinite(value) and float(value.detach()) > 0
    value.backward()
    # every prunable unit group gets a gradient from the penalty on its outgoing weights
    # (the layer-wise ones: every regularized layer)
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
    groups = UnitGroups(model, example)
    roots = {n.rsplit(".", 1)[0] for n in with_grad}
    assert any(name in roots for name in (g.name for g in groups)), with_grad


# --- pretrained weights by name ---------------------------------------------------------------


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """torch hub's cache in a temporary folder, and a network that never answers."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _settings(compose_cfg, *more):
    return parse_config(
        compose_cfg("experiment=smoke", "model=torchvision", "model.arch=mobilenet_v2", *more)
    )


def test_pretrained_weights_offline_say_where_to_put_the_file(hub, compose_cfg):
    settings = _settings(compose_cfg, "model.weights=IMAGENET1K_V1")
    with pytest.raises(UserInputError) as refused:
        settings.model.build()
    message = str(refused.value)
    assert "\n" not in message
    assert f"put that file at {hub / 'mobilenet_v2-b0353104.pth'}" in message
    assert "set model.weights to a local copy" in message


def test_pretrained_weights_fill_all_but_the_classifier_and_fit_the_stem(hub, compose_cfg, caplog):
    # the file torchvision publishes: 1000 classes, RGB stem (random values stand in for it)
    torch.manual_seed(5)
    published = torchvision.models.mobilenet_v2(num_classes=1000).state_dict()
    hub.mkdir(parents=True)
    torch.save(published, hub / "mobilenet_v2-b0353104.pth")
    settings = _settings(compose_cfg, "model.weights=IMAGENET1K_V1")  # fake data: 1x28x28
    with caplog.at_level(logging.INFO):
        model = settings.model.build()
    state = model.state_dict()
    grey_stem = published["features.0.0.weight"].sum(dim=1, keepdim=True)
    torch.testing.assert_close(state["features.0.0.weight"], grey_stem, rtol=0, atol=1e-6)
    for key in ("features.5.conv.1.0.weight", "features.18.1.running_var"):
        torch.testing.assert_close(state[key], published[key], rtol=0, atol=0)
    assert state["classifier.1.weight"].shape == (10, 1280)  # replaced, not copied
    assert "classifier classifier.1 replaced (1000 classes in the file, 10 here" in caplog.text


def test_an_unknown_weights_name_lists_the_known_ones(compose_cfg):
    with pytest.raises(ConfigError) as refused:
        _settings(compose_cfg, "model.weights=IMAGENET1K_V9")
    assert "is not a pretrained weights name of mobilenet_v2" in str(refused.value)
    assert "IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT" in str(refused.value)


def test_a_weights_name_on_a_sparsenet_model_is_refused(compose_cfg):
    with pytest.raises(ConfigError, match="only model=torchvision has"):
        parse_config(compose_cfg("experiment=smoke", "model.weights=IMAGENET1K_V1"))
