"""The figures a stage reports, against values worked out by hand on tiny weights."""

from __future__ import annotations

import torch
from torch import nn

from sparsenet.measure import describe_model, layer_units


def _two_layer_net() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        # columns = input units: col 0 sums to 2e-4 (dead at 1e-3), col 1 to 0.5, col 2 to 2e-3
        net[0].weight.copy_(torch.tensor([[1e-4, 0.2, 1e-3], [1e-4, 0.3, 1e-3]]))
        net[0].bias.zero_()
        # col 0 (hidden unit 0) sums to 0 (exact zeros), col 1 to 2
        net[2].weight.copy_(torch.tensor([[0.0, 1.0], [0.0, -1.0]]))
        net[2].bias.fill_(0.5)
    return net


def test_paper_a_alive_inputs_and_small_weights():
    rows = layer_units(_two_layer_net(), small_weight=1e-3)
    first, second = rows
    # |w| < 1e-3: the two 1e-4 entries (1e-3 itself is not below the threshold)
    assert (first["small_weights"], first["inputs_alive"], first["inputs_total"]) == (2, 2, 3)
    assert (second["small_weights"], second["inputs_alive"], second["zero_weights"]) == (2, 1, 2)


def test_small_weight_share_is_over_all_layer_weights():
    figures = describe_model(_two_layer_net(), (3,), {}, small_weight=1e-3)
    assert figures["small_weight_share"] == round(4 / 10, 6)  # 2 + 2 of 6 + 4 weights
    assert figures["nonzero_params"] == 6 + 2 + 2  # layer 0 bias zero, layer 2 bias 0.5


def test_conv_inputs_are_input_channels():
    conv = nn.Conv2d(3, 4, 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(0.1)
        conv.weight[:, 1] = 0.0  # input channel 1 has no outgoing weight
    (row,) = layer_units(nn.Sequential(conv))
    assert (row["inputs_alive"], row["inputs_total"], row["small_weights"]) == (2, 3, 16)
