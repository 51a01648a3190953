"""Special cases worked out by hand: all-zero and single-element groups, paper A's partial
counts, proximal steps, SSL's zeroing, layer maps, composition, validation, and every config
of conf/regularizer/ on the real models."""

import json
import math

import pytest
import torch
from torch import nn

from sparsenet.cli import config_choices
from sparsenet.models import get_model
from sparsenet.pipeline.settings import parse_regularizer
from sparsenet.regularizers import (
    L1,
    L1L2,
    L2,
    SSL,
    Combined,
    GroupLasso,
    Partial,
    SparseGroupLasso,
    Variance,
)


def _one(weight: torch.Tensor) -> nn.Module:
    """A one-layer model holding `weight` (Linear for 2-D, Conv2d for 4-D)."""
    if weight.dim() == 2:
        layer = nn.Linear(weight.shape[1], weight.shape[0])
    else:
        layer = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]))
    with torch.no_grad():
        layer.weight.copy_(weight)
    return nn.Sequential(layer)


def _grad(reg, model):
    model.zero_grad()
    value = reg(model)
    value.backward()
    return float(value.detach()), model[0].weight.grad


# --- all-zero and single-element groups ---------------------------------------------------
@pytest.mark.parametrize(
    "reg",
    [
        GroupLasso(1.0, "out"),
        GroupLasso(1.0, "in"),
        SparseGroupLasso(1.0, "out"),
        SSL(1.0, {"filter": 1, "channel": 1, "neuron": 1, "depth": 1}),
        L1L2(1.0, mode="filter_norms"),
        L1L2(1.0, mode="per_filter"),
        L1L2(1.0, mode="layer"),
        Variance(1.0, estimator="histogram"),
        Variance(1.0, estimator="gaussian"),
    ],
    ids=lambda r: type(r).__name__ + "_" + str(getattr(r, "structure", getattr(r, "mode", ""))),
)
@pytest.mark.parametrize("shape", [(3, 4), (3, 2, 2, 2)], ids=["linear", "conv"])
def test_all_zero_weights_give_finite_value_and_gradient(reg, shape):
    model = _one(torch.zeros(shape))
    if isinstance(reg, Variance):
        reg.init_std["0"] = 0.1
    value, grad = _grad(reg, model)
    assert math.isfinite(value) and torch.all(torch.isfinite(grad))
    if not isinstance(reg, Variance):  # every norm-based term is 0 with a 0 (sub)gradient
        assert value == 0.0 and torch.all(grad == 0)


def test_zero_group_among_others_gets_zero_gradient():
    w = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    value, grad = _grad(L1L2(1.0, mode="per_filter"), _one(w))
    # ratios 7/5, 0 (zero filter), 1/1
    assert value == pytest.approx(7 / 5 + 1)
    assert torch.all(grad[1] == 0) and torch.all(torch.isfinite(grad))
    value, grad = _grad(L1L2(1.0, mode="filter_norms"), _one(w))
    # filter norms (5, 0, 1): l1 6, l2 sqrt(26)
    assert value == pytest.approx(6 / math.sqrt(26))
    assert torch.all(grad[1] == 0)
    value, _ = _grad(L1L2(1.0, mode="layer"), _one(w))
    assert value == pytest.approx(8 / math.sqrt(26))


def test_single_element_groups_reduce_to_l1():
    """n_out = 1 and `in` groups: every group is one weight, sqrt(|g|) = 1, R_GL = ||w||_1."""
    w = torch.tensor([[0.5, -2.0, 0.0]])
    value, grad = _grad(GroupLasso(1.0, "in"), _one(w))
    assert value == pytest.approx(2.5)
    torch.testing.assert_close(grad, torch.tensor([[1.0, -1.0, 0.0]]))
    value, grad = _grad(SparseGroupLasso(1.0, "in", form="scardapane"), _one(w))
    assert value == pytest.approx(5.0)  # R_GL + ||w||_1 = 2 ||w||_1
    # a 1x1 conv with one filter: shape groups are single weights too
    value, _ = _grad(GroupLasso(1.0, "shape", sqrt_weighting=False), _one(w.reshape(1, 3, 1, 1)))
    assert value == pytest.approx(2.5)
    # a single non-zero entry has l1/l2 = 1
    value, _ = _grad(L1L2(1.0, mode="per_filter"), _one(torch.tensor([[0.0, -3.0]])))
    assert value == pytest.approx(1.0)


# --- paper A's partial regularization ------------------------------------------------------
def test_partial_counts_for_paper_a_mlp():
    model = get_model("mlp")
    reg = Partial(GroupLasso(1.0, "in"), 1e-4, beta=8)
    counts = {}
    for name, module, _ in reg.targets(model):
        n = module.weight.shape[1]
        kept = len(reg.kept_units(n))
        counts[name] = (kept, n - kept)
    assert counts == {"fc1": (686, 98), "fc2": (350, 50), "fc3": (263, 37), "fc4": (88, 12)}
    penalized = sum(
        k * m.weight.shape[0]
        for (k, _), (_, m, _) in zip(counts.values(), reg.targets(model), strict=True)
    )
    total = sum(m.weight.numel() for _, m, _ in reg.targets(model))
    assert penalized / total == pytest.approx(0.875, abs=0.002)  # paper A: 87.5%
    reg(model).backward()
    for _, module, _ in reg.targets(model):  # exempt columns get no gradient at all
        n = module.weight.shape[1]
        exempt = math.floor(n / 8)
        assert torch.all(module.weight.grad[:, n - exempt :] == 0)
        assert torch.all(module.weight.grad[:, : n - exempt].abs().sum(0) > 0)


def test_partial_rescale_and_validation():
    w = torch.ones(2, 4)
    plain = Partial(GroupLasso(1.0, "in", sqrt_weighting=False), 1.0, beta=4)
    scaled = Partial(GroupLasso(1.0, "in", sqrt_weighting=False), 1.0, beta=4, rescale=True)
    # 3 of 4 columns, each of norm sqrt(2)
    assert float(plain(_one(w))) == pytest.approx(3 * math.sqrt(2))
    assert float(scaled(_one(w))) == pytest.approx(4 / 3 * 3 * math.sqrt(2))
    with pytest.raises(ValueError, match=r"^beta=0 is out of range; allowed: a finite number > 1"):
        Partial(GroupLasso(1.0, "in"), beta=0)
    with pytest.raises(ValueError, match=r"^exempt='middle'.*last, first, random"):
        Partial(GroupLasso(1.0, "in"), exempt="middle")
    with pytest.raises(ValueError, match="coupled"):
        Partial(GroupLasso(1.0, "coupled"))
    with pytest.raises(ValueError, match="no per-layer penalty"):
        Partial(Variance(1.0))


def test_partial_proximal_touches_only_regularized_units():
    w = torch.tensor([[0.1, 0.1, 5.0, 0.1]])
    model = _one(w.clone())
    reg = Partial(L1(1.0, proximal=True), 1.0, beta=4)  # last column exempt
    assert float(reg(model)) == 0.0
    reg.after_step(model, lr=0.5)
    torch.testing.assert_close(model[0].weight.detach(), torch.tensor([[0.0, 0.0, 4.5, 0.1]]))


# --- proximal steps and SSL zeroing -------------------------------------------------------
def test_sparse_group_lasso_prox_is_l1_then_group_threshold():
    w = torch.tensor([[3.0, -4.0], [0.5, 0.2]])
    model = _one(w.clone())
    reg = SparseGroupLasso(1.0, "out", form="scardapane", sqrt_weighting=False, proximal=True)
    reg.after_step(model, lr=1.0)
    # l1 step by 1: (2, -3) and (0, 0); then group step by 1: (2, -3) * (1 - 1/sqrt(13))
    expected = torch.tensor([[2.0, -3.0], [0.0, 0.0]]) * torch.tensor(
        [[1 - 1 / math.sqrt(13)], [1]]
    )
    torch.testing.assert_close(model[0].weight.detach(), expected)


def test_l1_and_l2_prox_by_hand():
    model = _one(torch.tensor([[1.0, -0.2, 0.05]]))
    L1(1.0, proximal=True).after_step(model, lr=0.1)
    torch.testing.assert_close(model[0].weight.detach(), torch.tensor([[0.9, -0.1, 0.0]]))
    L2(1.0, proximal=True).after_step(model, lr=1.0)
    torch.testing.assert_close(model[0].weight.detach(), torch.tensor([[0.45, -0.05, 0.0]]))


def test_ssl_zeroes_tiny_weights_after_each_update():
    model = _one(torch.tensor([[5e-5, -9e-5, 2e-4, 1.0]]))
    reg = SSL(1.0, {"neuron": 1.0})
    reg.after_step(model, lr=0.0)
    torch.testing.assert_close(model[0].weight.detach(), torch.tensor([[0.0, 0.0, 2e-4, 1.0]]))
    model = _one(torch.tensor([[5e-5, 1.0]]))
    SSL(1.0, {"neuron": 1.0}, zero_threshold=0).after_step(model, lr=0.0)
    assert float(model[0].weight[0, 0]) == pytest.approx(5e-5)


def test_ssl_prox_applies_each_group_type():
    # conv (2 filters, 1 channel, 1x1): filter groups are single weights, the channel the pair
    model = _one(torch.tensor([3.0, 4.0]).reshape(2, 1, 1, 1))
    reg = SSL(1.0, {"filter": 1.0, "channel": 1.0}, proximal=True, zero_threshold=0)
    reg.after_step(model, lr=1.0)
    # filter step by 1: (2, 3); channel step by 1: (2, 3) * (1 - 1/sqrt(13))
    expected = torch.tensor([2.0, 3.0]) * (1 - 1 / math.sqrt(13))
    torch.testing.assert_close(model[0].weight.detach().reshape(-1), expected)


# --- layer maps -----------------------------------------------------------------------------
def test_output_pattern_and_unknown_patterns():
    model = get_model("lenet5")
    reg = L1(1.0, layers={"<output>": None, "conv*": 2.0})
    assert [(n, s) for n, _, s in reg.targets(model)] == [
        ("conv1", 2.0),
        ("conv2", 2.0),
        ("fc1", 1.0),
    ]
    bad = GroupLasso(1.0, layers={"classifier": None})
    with pytest.raises(
        ValueError, match=r"pattern 'classifier' matches no .*conv1, conv2, fc1, fc2"
    ):
        bad.bind(model, torch.zeros(1, 1, 28, 28))
    with pytest.raises(ValueError, match=r"^layers.fc2=-1 is out of range"):
        GroupLasso(1.0, layers={"fc2": -1})


def test_validation_names_key_value_and_allowed():
    """Built directly, a regularizer names its own keys; the config layer adds the path."""
    cases = [
        (lambda: SparseGroupLasso(1.0, form="mixed"), r"^form='mixed' is not allowed.*scardapane"),
        (lambda: SparseGroupLasso(1.0, alpha=2), r"^alpha=2 is out of range.*>= 0 and <= 1"),
        (lambda: L1L2(1.0, mode="rows"), r"^mode='rows' is not allowed.*filter_norms"),
        (lambda: L1L2(1.0, eps=0), r"^eps=0 is out of range; allowed: a finite number > 0"),
        (lambda: Variance(1.0, estimator="kde"), r"^estimator='kde' is not allowed.*histogram"),
        (lambda: Variance(1.0, s0=2, s1=1), r"^s0=2 must be < s1=1 \(spike << slab\)"),
        (lambda: Variance(1.0, pi=1), r"^pi=1 is out of range.*> 0 and < 1"),
        (lambda: SSL(1.0, {"kernel": 1.0}), r"^group_types='kernel' is not allowed.*filter"),
        (lambda: SSL(1.0, zero_threshold=-1), r"^zero_threshold=-1 is out of range.*>= 0"),
        (lambda: L1L2(1.0, proximal=True), r"^proximal=true is not available for L1L2"),
        (lambda: Variance(1.0, proximal=True), r"^proximal=true is not available for Variance"),
        (lambda: GroupLasso(1.0, "in", include_batchnorm=True), r"^include_batchnorm=true needs"),
        (lambda: Combined({}), r"^parts=\{\} is empty"),
        (lambda: L1(strength="a"), r"^strength='a' must be a finite number >= 0"),
    ]
    for make, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            make()


# --- composition ----------------------------------------------------------------------------
def test_combined_sums_parts_and_scales_the_prox():
    w = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    model = _one(w.clone())
    gl, l1 = GroupLasso(2.0, "out", sqrt_weighting=False), L1(0.5)
    both = Combined({"gl": gl, "l1": l1}, strength=3.0)
    # 3 * (2 * (5 + 1) + 0.5 * 8)
    assert float(both(model)) == pytest.approx(3 * (12 + 4))
    assert [n for n, _, _ in both.targets(model)] == ["0"]
    prox = Combined([L1(1.0, proximal=True)], strength=2.0)
    prox.after_step(model, lr=0.25)  # threshold lr * 2 * 1 = 0.5
    torch.testing.assert_close(model[0].weight.detach(), torch.tensor([[2.5, 3.5], [0.0, 0.5]]))
    described = both.describe()
    assert described["parts"]["gl"]["structure"] == "out" and described["strength"] == 3.0
    built = Combined({"a": {"_target_": "sparsenet.regularizers.elementwise.L1", "strength": 1.0}})
    assert isinstance(built.parts["a"], L1)


def test_variance_keeps_the_initial_std_across_binds():
    model = get_model("lenet5")
    reg = Variance(1.0)
    example = torch.zeros(1, 1, 28, 28)
    reg.bind(model, example)
    first = dict(reg.init_std)
    assert set(first) == {"conv1", "conv2", "fc1", "fc2"}
    with torch.no_grad():
        model.fc1.weight.mul_(10)
    reg.bind(model, example)
    assert reg.init_std == first


def test_variance_prefers_the_spike_and_slab():
    torch.manual_seed(0)
    n = 20000
    spike = torch.rand(n) < 0.8
    target_like = torch.where(spike, 0.05 * torch.randn(n), 2.0 * torch.randn(n))
    gaussian = torch.randn(n)
    for estimator in ("histogram", "gaussian"):
        reg = Variance(1.0, estimator=estimator, pi=0.8, s0=0.05, s1=2.0)
        kl_target = float(reg.layer_kls([target_like], [1.0])[0])
        kl_gauss = float(reg.layer_kls([gaussian], [1.0])[0])
        assert kl_target < 0.1 < kl_gauss, (estimator, kl_target, kl_gauss)


def test_variance_histogram_edges_count_without_gradient():
    w = torch.tensor([[0.1, -0.2, 50.0, -50.0]], requires_grad=True)
    reg = Variance(1.0, bins=21, span=2.0, s1=1.0)
    reg.init_std["0"] = 1.0
    model = _one(w.detach())
    value, grad = _grad(reg, model)
    assert math.isfinite(value)
    assert grad[0, 2] == 0 and grad[0, 3] == 0 and grad[0, 0] != 0
    masses = reg.soft_histogram(w.detach(), 1.0)
    assert float(masses.sum()) == pytest.approx(4.0)
    assert float(masses[0]) >= 1.0 and float(masses[-1]) >= 1.0


# --- every config on the real models ----------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in config_choices("regularizer") if n != "none"])
@pytest.mark.parametrize("model_name", ["lenet5", "mlp"])
def test_every_config_trains_a_step_on_the_real_models(name, model_name, compose_cfg):
    cfg = compose_cfg(f"regularizer={name}")
    assert "strength" in cfg.regularizer
    reg = parse_regularizer(cfg.regularizer)
    torch.manual_seed(0)
    model = get_model(model_name)
    reg.bind(model, torch.zeros(1, 1, 28, 28))
    value = reg(model)
    value.backward()
    assert reg.active and float(value) > 0
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.all(torch.isfinite(g)) for g in grads)
    reg.after_step(model, lr=0.01)
    assert all(torch.all(torch.isfinite(p)) for p in model.parameters())
    json.dumps(reg.describe())  # recorded in metrics.json


@pytest.mark.parametrize("estimator", ["histogram", "gaussian"])
def test_variance_subsampling_cycles_and_averages_to_the_full_gradient(estimator):
    torch.manual_seed(0)
    model = _one(torch.randn(100, 400) * 0.05)  # 40,000 weights, k = 4 subsets of 10,000
    full = Variance(1.0, estimator=estimator, max_weights=None)
    sampled = Variance(1.0, estimator=estimator, max_weights=10_000)
    for reg in (full, sampled):
        reg.init_std["0"] = 0.05
    _, g_full = _grad(full, model)
    g_full = g_full.clone()
    flat = model[0].weight.detach().reshape(-1)
    total = torch.zeros_like(g_full)
    for call in range(4):
        expected = float(sampled.layer_kls([flat[call::4]], [0.05])[0])
        value, grad = _grad(sampled, model)
        assert value == pytest.approx(expected, rel=1e-5)
        touched = (grad.reshape(-1) != 0).nonzero().flatten()
        assert torch.all(touched % 4 == call)  # only this call's subset gets a gradient
        total += grad
    mean = total / 4
    cosine = torch.nn.functional.cosine_similarity(mean.reshape(1, -1), g_full.reshape(1, -1))
    assert float(cosine) > 0.99  # measured: 0.9998 (histogram), 0.99997 (gaussian)
    assert float(mean.norm() / g_full.norm()) == pytest.approx(1.0, abs=0.02)
