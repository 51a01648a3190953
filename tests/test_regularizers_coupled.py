"""The `coupled` structure: groups from the network graph, checked against groups written out
by hand for small networks (a LeNet-like chain through Flatten, a residual block, BatchNorm)."""

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from sparsenet.pruning import prune_dead_units
from sparsenet.regularizers import GroupLasso, SparseGroupLasso


def _chain():
    """conv1 1->3 (3x3) -> conv2 3->4 (3x3) -> flatten (4 x 2 x 2) -> fc1 16->5 -> fc2 5->2."""
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 3, 3),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(3, 4, 3),
            relu2=nn.ReLU(),
            flatten=nn.Flatten(),
            fc1=nn.Linear(16, 5),
            relu3=nn.ReLU(),
            fc2=nn.Linear(5, 2),
        )
    )


def _chain_groups(m):
    """Each prunable unit's slices, by hand: its row and the next layer's columns."""
    groups = []
    for c in range(3):
        groups.append([m.conv1.weight[c], m.conv2.weight[:, c]])
    for c in range(4):  # channel c of conv2 feeds fc1 columns 4c .. 4c+3 (2 x 2 positions)
        groups.append([m.conv2.weight[c], m.fc1.weight[:, 4 * c : 4 * c + 4]])
    for o in range(5):
        groups.append([m.fc1.weight[o], m.fc2.weight[:, o]])
    return groups


def _naive_coupled(groups, sqrt_weighting=True):
    total = 0.0
    for slices in groups:
        flat = torch.cat([s.reshape(-1) for s in slices])
        c = math.sqrt(len(flat)) if sqrt_weighting else 1.0
        total = total + c * torch.sqrt((flat * flat).sum())
    return total


@pytest.mark.parametrize("sqrt_weighting", [True, False])
def test_coupled_value_and_gradient_match_hand_groups(sqrt_weighting):
    model = _chain()
    reg = GroupLasso(0.5, "coupled", sqrt_weighting=sqrt_weighting)
    reg.bind(model, torch.zeros(1, 1, 6, 6))
    value = reg(model)
    value.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ref = 0.5 * _naive_coupled(_chain_groups(model), sqrt_weighting)
    ref.backward()
    torch.testing.assert_close(value.detach(), ref.detach())
    for name, p in model.named_parameters():
        if name.endswith("weight"):
            torch.testing.assert_close(grads[name], p.grad)
        else:
            assert name not in grads  # biases are not regularized
    assert reg._coupled.num_groups == 12
    sizes = {
        root: reg._coupled.sizes[first : first + n].tolist()
        for root, first, n in reg._coupled.roots
    }
    assert sizes == {"conv1": [9 + 36] * 3, "conv2": [27 + 20] * 4, "fc1": [16 + 2] * 5}


def test_coupled_layer_multipliers_follow_the_root_layer():
    model = _chain()
    reg = GroupLasso(1.0, "coupled", sqrt_weighting=False, layers={"conv2": None, "fc1": 2.0})
    reg.bind(model, torch.zeros(1, 1, 6, 6))
    groups = _chain_groups(model)
    ref = _naive_coupled(groups[:3], False) + 2.0 * _naive_coupled(groups[7:], False)
    torch.testing.assert_close(reg(model).detach(), ref.detach())


def test_coupled_sgl_adds_l1_of_the_layers():
    model = _chain()
    reg = SparseGroupLasso(1.0, "coupled", form="statistics", alpha=0.2)
    reg.bind(model, torch.zeros(1, 1, 6, 6))
    l1 = sum(m.weight.abs().sum() for m in (model.conv1, model.conv2, model.fc1, model.fc2))
    ref = 0.8 * _naive_coupled(_chain_groups(model)) + 0.2 * l1
    torch.testing.assert_close(reg(model).detach(), ref.detach())


class _Residual(nn.Module):
    """stem 1->4 (+BN) -> x + conv_b(relu(conv_a(x))) -> pool -> fc 4->3."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv_a = nn.Conv2d(4, 2, 3, padding=1)
        self.conv_b = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = x + self.conv_b(torch.relu(self.conv_a(x)))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("include_batchnorm", [False, True])
def test_coupled_groups_hold_residual_partners_and_optionally_batchnorm(include_batchnorm):
    torch.manual_seed(0)
    model = _Residual()
    with torch.no_grad():
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.5, 0.5)
    reg = GroupLasso(1.0, "coupled", sqrt_weighting=False, include_batchnorm=include_batchnorm)
    reg.bind(model, torch.zeros(1, 1, 5, 5))
    m = model
    groups = []
    for c in range(4):  # the residual channel: stem row, conv_b row, conv_a and fc columns
        slices = [m.stem.weight[c], m.conv_b.weight[c], m.conv_a.weight[:, c], m.fc.weight[:, c]]
        if include_batchnorm:
            slices += [m.bn.weight[c : c + 1], m.bn.bias[c : c + 1]]
        groups.append(slices)
    for c in range(2):  # conv_a's channels: its row and conv_b's column
        groups.append([m.conv_a.weight[c], m.conv_b.weight[:, c]])
    ref = _naive_coupled(groups, sqrt_weighting=False)
    value = reg(model)
    torch.testing.assert_close(value.detach(), ref.detach())
    value.backward()
    assert (model.bn.weight.grad is not None) == include_batchnorm


def test_coupled_proximal_zeroes_whole_groups_and_pruning_removes_them():
    model = _chain()
    with torch.no_grad():  # make fc1 unit 2 and conv2 channel 1 small
        model.fc1.weight[2].mul_(1e-3)
        model.fc2.weight[:, 2].mul_(1e-3)
        model.conv2.weight[1].mul_(1e-3)
        model.fc1.weight[:, 4:8].mul_(1e-3)
    reg = GroupLasso(1.0, "coupled", sqrt_weighting=False, proximal=True)
    example = torch.zeros(1, 1, 6, 6)
    reg.bind(model, example)
    assert float(reg(model)) == 0.0
    g0 = _chain_groups(model)[0]  # conv1 channel 0
    norm0 = float(torch.sqrt(sum((s.detach() ** 2).sum() for s in g0)))
    before = model.conv1.weight[0].detach().clone()
    reg.after_step(model, lr=0.01)  # threshold 0.01: only the two small groups die
    assert torch.all(model.fc1.weight[2] == 0) and torch.all(model.fc2.weight[:, 2] == 0)
    assert torch.all(model.conv2.weight[1] == 0) and torch.all(model.fc1.weight[:, 4:8] == 0)
    # a surviving group is scaled by 1 - tau / ||w_g|| as a whole
    torch.testing.assert_close(model.conv1.weight[0].detach(), before * (1 - 0.01 / norm0))
    result = prune_dead_units(model, torch.randn(8, 1, 6, 6), threshold=0.0)
    assert result.removed == {"conv2": [1], "fc1": [2]}
    reg.bind(model, example)  # after pruning, the groups are rebuilt from the narrow model
    assert reg._coupled.num_groups == 3 + 3 + 4
    reg.proximal = False
    assert torch.isfinite(reg(model))


def test_coupled_needs_bind():
    with pytest.raises(RuntimeError, match="needs bind"):
        GroupLasso(1.0, "coupled")(_chain())
