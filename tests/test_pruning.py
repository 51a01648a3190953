"""Physical removal: the pruned (narrow) network must compute what the dense network computes
with the removed groups zeroed. Expected unit counts are worked out from which groups the test
zeroes, not read back from the pruner."""

import pytest
import torch
from torch import nn

from sparsenet.pruning import prune_dead_units, unit_norms


def _randomize_batchnorm(model: nn.Module) -> None:
    """Non-trivial BN statistics and shifts, so a zeroed filter still emits a constant."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(0.2, 1.0)  # positive: survives the ReLU


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 3)
    ).eval()


def _convnet() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 5, 3),
        nn.BatchNorm2d(5),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5 * 4 * 4, 4),
    )
    _randomize_batchnorm(model)
    return model.eval()


def test_mlp_dead_incoming_and_dead_outgoing_units_are_removed_exactly():
    model = _mlp()
    with torch.no_grad():
        model[0].weight[[1, 4]] = 0  # hidden-1 units 1, 4: no input, output relu(bias) != 0
        model[0].bias[[1, 4]] = torch.tensor([0.7, 0.3])
        model[4].weight[:, 2] = 0  # hidden-2 unit 2: nothing leaves it
    x = torch.randn(32, 6)
    expected = model(x)

    result = prune_dead_units(model, x[:1], threshold=0.0, calibration=x)

    assert [model[0].out_features, model[2].in_features] == [6, 6]
    assert [model[2].out_features, model[4].in_features] == [6, 6]
    assert model[4].out_features == 3  # the output layer is never pruned
    assert sorted(result.removed.values()) == [[1, 4], [2]]
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)


def test_conv_filters_with_batchnorm_shift_fold_into_the_next_layer():
    model = _convnet()
    with torch.no_grad():
        model[0].weight[2] = 0  # conv1 filter 2: output is the BN shift, a non-zero constant
        model[0].bias[2] = 0.4
        model[3].weight[[0, 3]] = 0  # conv2 filters 0, 3: constant maps into the Linear via Flatten
    x = torch.randn(16, 1, 8, 8)
    expected = model(x)

    prune_dead_units(model, x[:1], threshold=0.0, calibration=x)

    assert [model[0].out_channels, model[1].num_features, model[3].in_channels] == [5, 5, 5]
    assert [model[3].out_channels, model[4].num_features] == [3, 3]
    # each conv2 channel feeds 4*4 = 16 Linear inputs: 80 - 2*16 = 48
    assert model[7].in_features == 48
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)


def test_threshold_removes_small_groups_like_zeroing_them():
    model = _mlp()
    with torch.no_grad():
        model[0].weight[3] *= 1e-7  # norm far below the threshold, not exactly zero
    masked = _mlp()
    masked.load_state_dict(model.state_dict())
    with torch.no_grad():
        masked[0].weight[3] = 0
    x = torch.randn(32, 6)

    prune_dead_units(model, x[:1], threshold=1e-4, calibration=x)

    assert model[0].out_features == 7
    torch.testing.assert_close(model(x), masked(x), atol=1e-5, rtol=0)


def test_min_units_keeps_a_layer_alive():
    model = _mlp()
    with torch.no_grad():
        model[2].weight.mul_(1e-9)
        model[2].weight[5, 0] = 1e-6  # the largest of the dead units
    x = torch.randn(8, 6)
    prune_dead_units(model, x[:1], threshold=1e-3, calibration=x, min_units=1)
    # hidden-2 keeps its largest unit (row 5); hidden-1 units now all have outgoing norm
    # <= 1e-3 too, and keep the one with the largest (column 0): the 1e-6 entry survives.
    assert (model[2].out_features, model[2].in_features) == (1, 1)
    assert model[2].weight.item() == pytest.approx(1e-6)


def test_negative_threshold_is_refused():
    model = _mlp()
    with pytest.raises(ValueError, match=r"prune.threshold=-1"):
        prune_dead_units(model, torch.randn(1, 6), threshold=-1.0)


def test_unit_norms_by_hand():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, 4.0], [1.0, 0.0]]))
        model[2].weight.copy_(torch.tensor([[0.0, 2.0]]))
    in_norm, out_norm = unit_norms(model, torch.randn(1, 2))["0"]
    # unit 0: incoming (3, 4) -> 5, outgoing 0; unit 1: incoming (1, 0) -> 1, outgoing 2
    assert in_norm.tolist() == pytest.approx([5.0, 1.0])
    assert out_norm.tolist() == pytest.approx([0.0, 2.0])
