"""Inference copies with BatchNorm folded (sparsenet/deploy.py): the same outputs as the
network in eval mode, no BatchNorm left where a plain Conv2d feeds it alone, pruned networks
included, and the trained network untouched."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_batchnorm
from torch import nn

from sparsenet.deploy import conv_bn_pairs, for_inference
from sparsenet.models import get_model
from sparsenet.pruning import PruneSettings, prune_units

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@torch.no_grad()
def test_a_folded_resnet_computes_what_the_network_does_in_eval_mode():
    generator = torch.Generator().manual_seed(0)
    model = get_model("resnet20", num_classes=10, input_shape=(3, 32, 32)).eval()
    randomize_batchnorm(model, generator)
    x = torch.randn(4, 3, 32, 32, generator=generator)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deployed = for_inference(model)
    assert _batchnorms(model) == 21  # stem + 2 per block x 9 blocks + 2 shortcuts
    assert _batchnorms(deployed) == 0
    assert torch.allclose(deployed(x), model(x), atol=1e-4, rtol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@torch.no_grad()
def test_a_pruned_network_folds_and_keeps_its_outputs():
    """After pruning, consumers of removed units become FoldedConv2d (a border term after the
    convolution), whose BatchNorm does not fold: those stay, the others go."""
    generator = torch.Generator().manual_seed(1)
    model = get_model("resnet20", num_classes=10, input_shape=(3, 32, 32)).eval()
    randomize_batchnorm(model, generator)
    x = torch.randn(4, 3, 32, 32, generator=generator)
    with torch.no_grad():
        model.layer1[0].conv1.weight[:3].zero_()  # three dead units inside a block
    prune_units(model, x[:1], PruneSettings(threshold=0.0), calibration=x)
    expected = model(x)
    deployed = for_inference(model)
    kept = [bn for _, bn in conv_bn_pairs(model)]
    assert _batchnorms(deployed) == _batchnorms(model) - len(kept)
    assert len(kept) == 20  # all but layer1.0's second BN: conv2 there reads the removed units
    assert "layer1.0.bn2" not in kept
    assert torch.allclose(deployed(x), expected, atol=1e-4, rtol=1e-4)


def test_a_conv_output_read_twice_is_not_folded():
    class TwoReaders(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.bn = nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    assert conv_bn_pairs(TwoReaders()) == []
