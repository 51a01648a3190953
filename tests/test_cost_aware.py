"""Cost-aware weights (docs/methods.md#cost-aware-weights), against costs worked out by hand on
a tiny network, and every cost-aware penalty against a naive loop over its groups.

The network: conv1 (1 -> 2 filters, 3x3) -> BatchNorm -> ReLU -> conv2 (2 -> 3, 3x3) -> flatten
-> fc (12 -> 2), on 1x6x6 inputs. conv1 gives 2x4x4 (16 positions), conv2 3x2x2 (4 positions),
so fc reads 12 features, 4 per conv2 filter. Units: conv1's 2 filters (with their BatchNorm
entries and conv2's input channels), conv2's 3 filters (with fc's 4 columns each); fc is the
output layer.

MACs (each weight: one MAC per position it is applied at):
  conv1 unit: own filter 1*3*3 weights * 16 positions = 144
              + its conv2 input channel: 3 filters * 3*3 * 4 positions = 108        -> 252
  conv2 unit: own filter 2*3*3 * 4 = 72 + its 4 fc columns * 2 rows * 1 = 8          ->  80
  fc row:     12 inputs * 1 = 12 (no consumer)                                       ->  12
  whole network: 2*144 + 3*72 + 2*12 = 288 + 216 + 24                                = 528
Parameters (weights, + bias, + BatchNorm weight and bias):
  conv1 unit: 9 + 1 + 2 + 3*9 = 39;  conv2 unit: 18 + 1 + 4*2 = 27;  fc row: 12 + 1 = 13
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_conv_net
from omegaconf import OmegaConf
from torch import nn

from sparsenet.config.components import build
from sparsenet.errors import ConfigError
from sparsenet.measure import count_macs, count_params
from sparsenet.pruning import cost as cost_module
from sparsenet.pruning import prune_dead_units
from sparsenet.pruning.cost import UnitCosts
from sparsenet.regularizers import (
    L1,
    L1L2,
    L2,
    SSL,
    Combined,
    GroupLasso,
    NoRegularizer,
    Partial,
    Regularizer,
    SparseGroupLasso,
    Variance,
)
from sparsenet.regularizers._groups import group_penalty
from sparsenet.regularizers.group_lasso import COUPLED

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = torch.zeros(1, 1, 6, 6)
LAYERS = ("conv1", "conv2", "fc")


def flat(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.reshape(-1)]


# --- the costs, by hand -------------------------------------------------------------------
def test_marginal_macs_and_params_of_every_unit_by_hand():
    model = tiny_conv_net()
    macs = UnitCosts(model, EXAMPLE, "macs")
    assert flat(macs.group("conv1")) == [252, 252]
    assert flat(macs.group("conv2")) == [80, 80, 80]
    assert flat(macs.structure("fc", "out")) == [12, 12]
    params = UnitCosts(model, EXAMPLE, "params")
    assert flat(params.group("conv1")) == [39, 39]
    assert flat(params.group("conv2")) == [27, 27, 27]
    assert flat(params.structure("fc", "out")) == [13, 13]


def test_costs_of_the_non_unit_structures_by_hand():
    macs = UnitCosts(tiny_conv_net(), EXAMPLE, "macs")
    # in: an input channel costs what the unit producing it costs, shared among the columns
    # it owns; conv1's input is the image (no unit): its own weights, 2 filters * 9 * 16.
    assert flat(macs.structure("conv1", "in")) == [288]
    assert flat(macs.structure("conv2", "in")) == [252, 252]
    assert flat(macs.structure("fc", "in")) == [80 / 4] * 12
    # shape: a kernel position's weights in the alive filters: conv1 16 * 2, conv2 4 * 3
    assert flat(macs.structure("conv1", "shape")) == [32] * 9
    assert flat(macs.structure("conv2", "shape")) == [12] * 18
    # layer: the layer's MACs: 2*9*16, 3*18*4, 2*12
    assert [flat(macs.structure(n, "layer")) for n in LAYERS] == [[288], [216], [24]]
    params = UnitCosts(tiny_conv_net(), EXAMPLE, "params")
    assert flat(params.structure("conv1", "in")) == [2 * 9]
    assert flat(params.structure("fc", "in")) == [27 / 4] * 12
    assert flat(params.structure("conv2", "shape")) == [3] * 18
    # with the alive rows' biases: 18 + 2, 54 + 3, 24 + 2
    assert [flat(params.structure(n, "layer")) for n in LAYERS] == [[20], [57], [26]]


def test_the_costs_agree_with_the_reported_figures_after_removal():
    """A conv1 unit removed by the pruner lowers the MACs and parameters sparsenet reports by
    exactly its marginal cost: one definition of a MAC."""
    model = tiny_conv_net()
    assert count_macs(model, (1, 6, 6)) == 528
    params_before = count_params(model)
    with torch.no_grad():
        model.conv1.weight[0].zero_()  # score 0: dead, removed at any threshold
    prune_dead_units(model, EXAMPLE, threshold=1e-3)
    assert model.conv1.out_channels == 1
    assert count_macs(model, (1, 6, 6)) == 528 - 252
    assert count_params(model) == params_before - 39


def test_latency_cost_is_each_layers_time_spread_over_its_weights(monkeypatch):
    times = {"conv1": 2.0, "conv2": 1.0, "fc": 0.5}  # ms per layer, as if measured
    monkeypatch.setattr(cost_module, "layer_latency_ms", lambda model, shape: times)
    latency = UnitCosts(tiny_conv_net(), EXAMPLE, "latency")
    # conv1 unit: 2.0 / 2 filters + 1.0 * 27 of conv2's 54 weights       = 1.0 + 0.5
    # conv2 unit: 1.0 / 3 filters + 0.5 * 8 of fc's 24 weights            = 1/3 + 1/6
    # fc row:     0.5 / 2 rows                                           = 0.25
    torch.testing.assert_close(latency.group("conv1"), torch.tensor([1.5, 1.5]))
    torch.testing.assert_close(latency.group("conv2"), torch.tensor([0.5, 0.5, 0.5]))
    torch.testing.assert_close(latency.structure("fc", "out").reshape(-1), torch.tensor([0.25] * 2))


def test_latency_is_measured_per_layer():
    measured = cost_module.layer_latency_ms(tiny_conv_net(), (1, 6, 6), 4, warmup=1, repeats=2)
    assert set(measured) == set(LAYERS) and all(ms > 0 for ms in measured.values())


# --- normalisation and refresh -------------------------------------------------------------
def test_weights_are_normalised_by_the_full_width_mean():
    """out groups of all three layers: mean = (2*252 + 3*80 + 2*12) / 7 = 768 / 7."""
    model = tiny_conv_net()
    reg = GroupLasso(1.0, "out", cost="macs")
    reg.bind(model, EXAMPLE)
    mean = 768 / 7
    for name, each in zip(LAYERS, (252, 80, 12), strict=True):
        torch.testing.assert_close(
            reg.costs[name]["out"].reshape(-1),
            torch.full_like(reg.costs[name]["out"].reshape(-1), each / mean),
        )
    params = GroupLasso(1.0, "out", cost="params")
    params.bind(model, EXAMPLE)
    torch.testing.assert_close(float(params.costs["conv1"]["out"][0]), 39 / ((78 + 81 + 26) / 7))


def test_equal_costs_give_the_plain_regularizer():
    """Groups that all cost the same (the input columns of a 4 -> 4 Linear layer: 4 weights
    each): every factor is 1 and the penalty is the plain one."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    plain = GroupLasso(1.0, "in", layers={"<output>": None})
    weighted = GroupLasso(1.0, "in", layers={"<output>": None}, cost="params")
    weighted.bind(model, torch.zeros(1, 4))
    assert flat(weighted.costs["0"]["in"]) == [1.0] * 4
    torch.testing.assert_close(weighted(model), plain(model))
    single = nn.Sequential(nn.Linear(5, 3))  # no unit at all: every row costs its 5 MACs
    weighted = GroupLasso(1.0, "out", cost="macs")
    weighted.bind(single, torch.zeros(1, 5))
    torch.testing.assert_close(weighted(single), GroupLasso(1.0, "out")(single))


def test_costs_follow_the_alive_widths_as_units_die():
    """conv2's filter 0 zeroed: conv1's units feed 2 filters instead of 3 (108 -> 72), fc's rows
    read 8 live inputs instead of 12; the dead filter keeps the cost of reviving it (80)."""
    model = tiny_conv_net()
    reg = GroupLasso(1.0, "out", cost="macs")
    reg.bind(model, EXAMPLE)
    with torch.no_grad():
        model.conv2.weight[0].zero_()
    before = flat(reg.costs["conv1"]["out"])
    reg(model)  # a training step's call refreshes the costs (REFRESH_STEPS = 1)
    mean = 768 / 7  # fixed for the stage: the full-width network's
    assert flat(reg._unit_costs.alive) == [0, 1, 1, 1, 1]  # conv2's 3 units, then conv1's 2
    torch.testing.assert_close(
        reg.costs["conv1"]["out"].reshape(-1), torch.tensor([216 / mean] * 2)
    )
    torch.testing.assert_close(reg.costs["conv2"]["out"].reshape(-1), torch.tensor([80 / mean] * 3))
    torch.testing.assert_close(reg.costs["fc"]["out"].reshape(-1), torch.tensor([8 / mean] * 2))
    assert before == pytest.approx([252 / mean] * 2)


def test_refresh_every_k_steps(monkeypatch):
    monkeypatch.setattr("sparsenet.regularizers.base.REFRESH_STEPS", 3)
    model = tiny_conv_net()
    reg = L1(1.0, cost="macs")
    reg.bind(model, EXAMPLE)
    with torch.no_grad():
        model.conv2.weight[0].zero_()
    seen = []
    for _ in range(3):
        reg(model)
        seen.append(float(reg.costs["fc"]["weight"][0]))
    assert seen[0] == seen[1] != seen[2]  # refreshed at the third call only


# --- cost: null -----------------------------------------------------------------------------
def test_null_builds_nothing_and_keeps_the_layer_arithmetic(monkeypatch):
    """cost=null: no graph, no cost; the group term is the original float-coefficient code,
    checked bit for bit against its formula (whole training runs against the code before the
    option are recorded in docs/methods.md#cost-aware-weights)."""

    def refuse(*args, **kwargs):
        raise AssertionError("cost=null must not compute costs")

    monkeypatch.setattr("sparsenet.regularizers.base.UnitCosts", refuse)
    model = tiny_conv_net()
    for reg in (GroupLasso(1.0, "coupled"), SSL(1.0), L1(1.0), Partial(GroupLasso(1.0, "in"))):
        reg.bind(model, EXAMPLE)
        reg(model).backward()
        assert reg.layer_cost("conv2") is None
    w = model.conv2.weight.detach().clone().requires_grad_(True)
    value = group_penalty(w, "out", 3.0, 0.5)
    value.backward()
    norms = torch.linalg.vector_norm(w.detach(), ord=2, dim=(1, 2, 3), keepdim=True)
    assert torch.equal(value.detach(), 3.0 * norms.sum() + 0.5 * w.detach().abs().sum())
    grad = torch.ones(())  # d value / d value, as the original backward received it
    expected = w.detach() * (grad * 3.0 / norms)
    expected.addcmul_(w.detach().sign(), grad * 0.5)
    assert torch.equal(w.grad, expected)


# --- every family: penalty = sum_g k_g * term_g by a naive loop ------------------------------
def _bound(reg: Regularizer, model: nn.Module, seed: int = 5) -> Regularizer:
    """`reg` bound (its cost set), then every cost factor replaced by a random positive one, so
    the naive loops below check that each group gets its own factor."""
    reg.bind(model, EXAMPLE)
    generator = torch.Generator().manual_seed(seed)
    for by_structure in reg.costs.values():
        for s, value in by_structure.items():
            by_structure[s] = 0.5 + torch.rand(value.shape, generator=generator)
    return reg


def naive_groups(w: torch.Tensor, structure: str, k: torch.Tensor):
    """(weights of group g, k_g) for every group of `structure`, one by one."""
    if structure == "out":
        return [(w[o], k[o].reshape(())) for o in range(w.shape[0])]
    if structure == "in":
        return [(w[:, i], k[0, i].reshape(())) for i in range(w.shape[1])]
    if structure == "shape":
        n, c, kh, kw = w.shape
        return [
            (w[:, ci, y, x], k[0, ci, y, x])
            for ci in range(c)
            for y in range(kh)
            for x in range(kw)
        ]
    return [(w, k.reshape(()))]


def norm(g: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((g**2).sum())


def _value_and_grads(reg: Regularizer, model: nn.Module):
    for p in model.parameters():
        p.grad = None
    value = reg.penalty(model)  # no refresh: the random factors stay
    value.backward()
    return value.detach(), [model.get_submodule(n).weight.grad for n in LAYERS]


def _naive_value_and_grads(model: nn.Module, fn):
    ws = {n: model.get_submodule(n).weight.detach().clone().requires_grad_(True) for n in LAYERS}
    value = fn(ws)
    value.backward()
    return value.detach(), [ws[n].grad if ws[n].grad is not None else None for n in LAYERS]


def _check(reg: Regularizer, model: nn.Module, fn) -> None:
    value, grads = _value_and_grads(reg, model)
    ref, ref_grads = _naive_value_and_grads(model, fn)
    torch.testing.assert_close(value, ref)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        if ref_grad is None:
            assert grad is None or not grad.any()
        else:
            torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("structure", ["out", "in", "shape", "layer"])
def test_group_lasso_is_the_cost_weighted_sum(structure):
    model = tiny_conv_net()
    reg = _bound(GroupLasso(1.0, structure, cost="macs"), model)

    def naive(ws):
        total = 0.0
        for name in reg.costs:
            w = ws[name]
            for g, k in naive_groups(w, structure, reg.costs[name][structure]):
                total = total + k * math.sqrt(g.numel()) * norm(g)
        return total

    _check(reg, model, naive)


@pytest.mark.parametrize("form", ["statistics", "scardapane"])
def test_sparse_group_lasso_weights_the_whole_group_term(form):
    model = tiny_conv_net()
    reg = _bound(SparseGroupLasso(1.0, "in", form=form, alpha=0.25, cost="params"), model)
    a, b = (0.75, 0.25) if form == "statistics" else (1.0, 1.0)

    def naive(ws):
        total = 0.0
        for name in LAYERS:
            for g, k in naive_groups(ws[name], "in", reg.costs[name]["in"]):
                total = total + k * (a * math.sqrt(g.numel()) * norm(g) + b * g.abs().sum())
        return total

    _check(reg, model, naive)


def _coupled_slices(ws, root: str, u: int, include_batchnorm: bool, model):
    """The weights of unit u of `root`, sliced by hand from the architecture."""
    if root == "conv1":
        parts = [ws["conv1"][u], ws["conv2"][:, u]]
        if include_batchnorm:
            parts += [model.bn.weight[u : u + 1].detach(), model.bn.bias[u : u + 1].detach()]
        return parts
    return [ws["conv2"][u], ws["fc"][:, 4 * u : 4 * u + 4]]  # flatten: channel-major


@pytest.mark.parametrize("sgl", [False, True])
def test_coupled_groups_take_their_units_costs(sgl):
    model = tiny_conv_net()
    options = {"structure": "coupled", "cost": "macs"}
    reg = SparseGroupLasso(1.0, alpha=0.5, **options) if sgl else GroupLasso(1.0, **options)
    reg = _bound(reg, model)
    k = reg.costs[COUPLED]["coupled"]

    def naive(ws):
        total = 0.0
        for root, first, size in reg._coupled.roots:
            for u in range(size):
                parts = _coupled_slices(ws, root, u, False, model)
                g = torch.cat([p.reshape(-1) for p in parts])
                total = total + k[first + u] * math.sqrt(g.numel()) * norm(g) * (0.5 if sgl else 1)
        if sgl:  # the l1 term: each weight times its row's factor
            for name in LAYERS:
                for o in range(ws[name].shape[0]):
                    total = (
                        total
                        + 0.5 * reg.costs[name]["weight"][o].reshape(()) * ws[name][o].abs().sum()
                    )
        return total

    _check(reg, model, naive)


def test_ssl_weights_every_group_type():
    model = tiny_conv_net()
    types = {"filter": 1.0, "channel": 0.5, "shape": 0.25, "depth": 2.0, "neuron": 1.5}
    reg = _bound(SSL(1.0, group_types=types, neuron_structure="out", cost="macs"), model)
    conv = {"out": 1.0, "in": 0.5, "shape": 0.25, "layer": 2.0}
    linear = {"out": 1.5, "layer": 2.0}

    def naive(ws):
        total = 0.0
        for name in LAYERS:
            for s, lam in (conv if name.startswith("conv") else linear).items():
                for g, k in naive_groups(ws[name], s, reg.costs[name][s]):
                    total = total + lam * k * norm(g)
        return total

    _check(reg, model, naive)


@pytest.mark.parametrize("cls", [L1, L2])
def test_elementwise_weights_take_their_rows_cost(cls):
    model = tiny_conv_net()
    reg = _bound(cls(1.0, cost="macs"), model)

    def naive(ws):
        total = 0.0
        for name in LAYERS:
            w = ws[name]
            for o in range(w.shape[0]):
                k = reg.costs[name]["weight"][o].reshape(())
                total = total + k * (w[o].abs().sum() if cls is L1 else 0.5 * (w[o] ** 2).sum())
        return total

    _check(reg, model, naive)


@pytest.mark.parametrize("mode", ["filter_norms", "per_filter", "layer"])
def test_l1_l2_weights_its_filters(mode):
    model = tiny_conv_net()
    reg = _bound(L1L2(1.0, mode=mode, cost="macs"), model)
    s = "layer" if mode == "layer" else "out"

    def naive(ws):
        total = 0.0
        for name in LAYERS:
            w, k = ws[name], reg.costs[name][s]
            if mode == "layer":
                total = total + k.reshape(()) * w.abs().sum() / torch.sqrt((w**2).sum() + 1e-16)
            elif mode == "per_filter":
                for g, kg in naive_groups(w, "out", k):
                    total = total + kg * g.abs().sum() / torch.sqrt((g**2).sum() + 1e-16)
            else:
                groups = naive_groups(w, "out", k)
                norms = [norm(g) for g, _ in groups]
                weighted = sum(kg * n for (_, kg), n in zip(groups, norms, strict=True))
                total = total + weighted / torch.sqrt(sum(n**2 for n in norms) + 1e-16)
        return total

    _check(reg, model, naive)


def test_partial_restricts_the_costs_with_the_weights():
    """beta 2: the last floor(n / 2) input units of each layer are exempt."""
    model = tiny_conv_net()
    reg = _bound(Partial(GroupLasso(1.0, "in"), strength=1.0, beta=2.0, cost="macs"), model)

    def naive(ws):
        total = 0.0
        for name in LAYERS:
            groups = naive_groups(ws[name], "in", reg.costs[name]["in"])
            kept = len(groups) - len(groups) // 2
            for g, k in groups[:kept]:
                total = total + k * math.sqrt(g.numel()) * norm(g)
        return total

    _check(reg, model, naive)


def test_combined_gives_its_cost_to_the_parts_with_groups():
    parts = {
        "gl": GroupLasso(2.0, "out"),
        "l1": L1(3.0, cost="params"),  # its own cost wins
        "variance": Variance(1.0),  # no groups: left as it is
    }
    reg = Combined(parts, cost="macs")
    assert [p.cost for p in reg.parts.values()] == ["macs", "params", None]
    model = tiny_conv_net()
    reg.bind(model, EXAMPLE)
    gl = _bound(reg.parts["gl"], model, seed=1)
    l1 = _bound(reg.parts["l1"], model, seed=2)
    total = 2.0 * gl.penalty(model) + 3.0 * l1.penalty(model)
    assert float(total.detach()) > 0
    value, _ = _naive_value_and_grads(
        model,
        lambda ws: (
            sum(
                2.0 * k * math.sqrt(g.numel()) * norm(g)
                for name in LAYERS
                for g, k in naive_groups(ws[name], "out", gl.costs[name]["out"])
            )
            + sum(
                3.0 * l1.costs[name]["weight"][o].reshape(()) * ws[name][o].abs().sum()
                for name in LAYERS
                for o in range(ws[name].shape[0])
            )
        ),
    )
    torch.testing.assert_close(total.detach(), value)


def test_proximal_steps_threshold_each_group_by_its_factor():
    model = tiny_conv_net()
    reg = _bound(GroupLasso(1.0, "out", proximal=True, cost="macs"), model)
    before = {n: model.get_submodule(n).weight.detach().clone() for n in LAYERS}
    reg.after_step(model, lr=0.05)
    for name in LAYERS:
        w, k = before[name], reg.costs[name]["out"].reshape(-1)
        for o in range(w.shape[0]):
            tau = 0.05 * k[o] * math.sqrt(w[o].numel())
            expected = w[o] * max(0.0, 1 - float(tau) / float(norm(w[o])))
            torch.testing.assert_close(model.get_submodule(name).weight[o], expected)


def test_l1_prox_thresholds_each_row_by_its_factor():
    model = tiny_conv_net()
    reg = _bound(L1(1.0, proximal=True, cost="macs"), model)
    w = model.fc.weight.detach().clone()
    reg.after_step(model, lr=0.3)
    k = reg.costs["fc"]["weight"].reshape(-1)
    for o in range(2):
        for i in range(12):
            tau = 0.3 * float(k[o])
            expected = math.copysign(max(abs(float(w[o, i])) - tau, 0.0), float(w[o, i]))
            assert float(model.fc.weight.detach()[o, i]) == pytest.approx(expected, abs=1e-7)


# --- bad values and configs -------------------------------------------------------------------
def test_bad_values_are_one_line_naming_key_value_and_allowed():
    with pytest.raises(
        ConfigError,
        match=r"^cost='flops' is not allowed; allowed: null or "
        r"macs, params, latency$",
    ):
        GroupLasso(cost="flops")
    with pytest.raises(
        ConfigError,
        match=r"^cost='macs' is not available for Variance .*"
        r"allowed: null$",
    ):
        Variance(cost="macs")
    with pytest.raises(ConfigError, match=r"^cost='macs' is not available for NoRegularizer"):
        NoRegularizer(cost="macs")
    with pytest.raises(ConfigError, match=r"^cost='params' differs from inner.cost='macs'"):
        Partial(GroupLasso(cost="macs"), cost="params")
    with pytest.raises(ConfigError, match=r"^cost='macs' has no part with groups"):
        Combined({"variance": Variance()}, cost="macs")
    assert Partial(GroupLasso(cost="macs")).cost == "macs"  # set on the inner: applied by partial


REGULARIZERS = sorted(p.stem for p in (REPO / "conf" / "regularizer").glob("*.yaml"))


def _nodes(node):
    """Every regularizer node of a config (the node, its parts, its inner)."""
    yield node
    for key in ("parts", "inner"):
        sub = node.get(key)
        if isinstance(sub, dict) and "_target_" in sub:
            yield from _nodes(sub)
        elif isinstance(sub, dict):
            for part in sub.values():
                yield from _nodes(part)


@pytest.mark.parametrize("name", REGULARIZERS)
def test_every_regularizer_config_has_the_key_and_accepts_it(name, compose_cfg):
    node = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "regularizer" / f"{name}.yaml"))
    assert all(n.get("cost", "missing") is None for n in _nodes(node)), name
    chosen = compose_cfg(f"regularizer={name}", "regularizer.cost=macs").regularizer
    chosen = OmegaConf.to_container(chosen, resolve=True)
    if name in ("none", "variance"):
        with pytest.raises(ConfigError, match=r"^regularizer.cost='macs' is not available"):
            build("regularizer", chosen, base=Regularizer)
        return
    reg = build("regularizer", chosen, base=Regularizer)
    model = tiny_conv_net()
    reg.bind(model, EXAMPLE)
    reg(model).backward()
    reg.after_step(model, 0.1)
    assert reg.describe()["cost"] == "macs"


def test_a_bad_value_from_the_config_names_its_path(compose_cfg):
    node = OmegaConf.to_container(
        compose_cfg("regularizer=partial", "regularizer.inner.cost=flop").regularizer
    )
    with pytest.raises(ConfigError, match=r"^regularizer.inner.cost='flop' is not allowed"):
        build("regularizer", node, base=Regularizer)
