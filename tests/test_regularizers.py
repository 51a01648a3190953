"""Group norms and group-lasso values checked against numbers worked out by hand."""

import math

import pytest
import torch
from torch import nn

from sparsenet.regularizers import group_norms, group_size
from sparsenet.regularizers.base import NoRegularizer
from sparsenet.regularizers.group_lasso import GroupLasso

# Linear weight (n_out=3, n_in=2)
W = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])


def test_linear_group_norms_by_hand():
    # rows: |(3,4)| = 5, |(0,0)| = 0, |(1,0)| = 1
    assert group_norms(W, "out").tolist() == pytest.approx([5.0, 0.0, 1.0])
    # columns: |(3,0,1)| = sqrt(10), |(4,0,0)| = 4
    assert group_norms(W, "in").tolist() == pytest.approx([math.sqrt(10), 4.0])
    # whole layer: sqrt(9 + 16 + 1) = sqrt(26)
    assert group_norms(W, "layer").tolist() == pytest.approx([math.sqrt(26)])
    assert group_size(W, "out") == 2 and group_size(W, "in") == 3


def test_conv_group_norms_by_hand():
    # Conv weight (N=2, C=2, 1, 2): filter 0 = [[1, 2], [2, 4]], filter 1 = [[0, 0], [0, 3]]
    w = torch.tensor([[[[1.0, 2.0]], [[2.0, 4.0]]], [[[0.0, 0.0]], [[0.0, 3.0]]]])
    # filters: sqrt(1+4+4+16) = 5, sqrt(9) = 3
    assert group_norms(w, "out").tolist() == pytest.approx([5.0, 3.0])
    # input channels: c0 -> (1,2,0,0) = sqrt(5); c1 -> (2,4,0,3) = sqrt(29)
    assert group_norms(w, "in").tolist() == pytest.approx([math.sqrt(5), math.sqrt(29)])
    # shape positions (c, y, x) across filters: (0,0,0)->(1,0)=1, (0,0,1)->(2,0)=2,
    # (1,0,0)->(2,0)=2, (1,0,1)->(4,3)=5
    assert group_norms(w, "shape").tolist() == pytest.approx([1.0, 2.0, 2.0, 5.0])


def _one_layer(weight: torch.Tensor) -> nn.Module:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
    return nn.Sequential(layer)


def test_group_lasso_value_with_and_without_sqrt_weighting():
    model = _one_layer(W)
    # out groups have |g| = 2: sqrt(2) * (5 + 0 + 1)
    assert float(GroupLasso(1.0, "out")(model)) == pytest.approx(math.sqrt(2) * 6)
    # in groups have |g| = 3, strength 0.5: 0.5 * sqrt(3) * (sqrt(10) + 4)
    value = float(GroupLasso(0.5, "in")(model))
    assert value == pytest.approx(0.5 * math.sqrt(3) * (math.sqrt(10) + 4))
    # SSL weighting (c_g = 1)
    assert float(GroupLasso(1.0, "out", sqrt_weighting=False)(model)) == pytest.approx(6.0)


def test_group_lasso_gradient_is_unit_direction_per_group():
    model = _one_layer(W)
    GroupLasso(1.0, "out", sqrt_weighting=False)(model).backward()
    grad = model[0].weight.grad
    # d||w_g||/dw_g = w_g / ||w_g||: (3,4)/5 and (1,0)/1; the zero group gets 0 (subgradient)
    torch.testing.assert_close(grad, torch.tensor([[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]]))


def test_layer_patterns_scale_and_exclude():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(W)
        model[2].weight.fill_(1.0)
    only_first = GroupLasso(1.0, "out", sqrt_weighting=False, layers={"2": None})
    assert float(only_first(model)) == pytest.approx(6.0)
    doubled = GroupLasso(1.0, "out", sqrt_weighting=False, layers={"0": 2.0, "2": None})
    assert float(doubled(model)) == pytest.approx(12.0)
    # second layer alone: two rows of three ones: 2 * sqrt(3)
    second = GroupLasso(1.0, "out", sqrt_weighting=False, layers={"0": None})
    assert float(second(model)) == pytest.approx(2 * math.sqrt(3))


def test_shape_structure_skips_linear_layers():
    model = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([3.0, 4.0]).reshape(2, 1, 1, 1))
    # one shape group (c=0, y=0, x=0) holding (3, 4): norm 5
    assert float(GroupLasso(1.0, "shape", sqrt_weighting=False)(model)) == pytest.approx(5.0)


def test_proximal_step_is_group_soft_thresholding():
    model = _one_layer(torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]]))
    reg = GroupLasso(1.0, "out", sqrt_weighting=False, proximal=True)
    assert float(reg(model)) == 0.0  # the penalty is handled by the prox, not the gradient
    reg.after_step(model, lr=1.0)
    # norm 5 -> 4 (scaled by 1 - 1/5); norm 0.5 <= 1 -> exact zero; zero stays zero
    torch.testing.assert_close(
        model[0].weight.detach(), torch.tensor([[2.4, 3.2], [0.0, 0.0], [0.0, 0.0]])
    )


def test_proximal_step_on_input_groups():
    model = _one_layer(torch.tensor([[3.0, 0.1], [4.0, 0.0]]))
    GroupLasso(1.0, "in", sqrt_weighting=False, proximal=True).after_step(model, lr=2.5)
    # column 0 norm 5 -> scaled by 1 - 2.5/5 = 0.5; column 1 norm 0.1 -> zero
    torch.testing.assert_close(model[0].weight.detach(), torch.tensor([[1.5, 0.0], [2.0, 0.0]]))


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="^structure='rows' is not a group structure"):
        GroupLasso(1.0, "rows")
    with pytest.raises(ValueError, match="^strength=-1.0 is out of range"):
        GroupLasso(-1.0)


def test_no_regularizer_is_zero():
    reg = NoRegularizer()
    assert float(reg(_one_layer(W))) == 0.0 and not reg.active
