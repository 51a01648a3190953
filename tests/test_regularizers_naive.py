"""Every regularizer's value and gradient against a naive reference written from the formulas
in docs/methods.md: explicit Python loops over groups (and over weights where a formula is per
weight), no shared helper with the library. Small random Linear and Conv2d layers."""

import math

import pytest
import torch
from torch import nn

from sparsenet.regularizers import (
    L1,
    L1L2,
    L2,
    SSL,
    GroupLasso,
    Partial,
    SparseGroupLasso,
    Variance,
)

torch.manual_seed(0)


def _layers():
    torch.manual_seed(1)
    return {"linear": nn.Linear(5, 4), "conv": nn.Conv2d(3, 4, (2, 3))}


def _value_and_grad(reg, layer):
    """The library's value and d value / d weight for a one-layer model."""
    model = nn.Sequential(layer)
    layer.weight.grad = None
    value = reg(model)
    value.backward()
    return value.detach(), layer.weight.grad.clone()


def _naive_value_and_grad(fn, layer):
    w = layer.weight.detach().clone().requires_grad_(True)
    value = fn(w)
    value.backward()
    return value.detach(), w.grad


def _check(reg, layer, naive, rtol=1e-5, atol=1e-6):
    value, grad = _value_and_grad(reg, layer)
    ref_value, ref_grad = _naive_value_and_grad(naive, layer)
    torch.testing.assert_close(value, ref_value, rtol=rtol, atol=atol)
    torch.testing.assert_close(grad, ref_grad, rtol=rtol, atol=atol)


# --- naive group definitions ------------------------------------------------------------
def naive_groups(w, structure):
    """The groups of w as a list of 1-D tensors, enumerated one by one."""
    groups = []
    if structure == "out":
        for o in range(w.shape[0]):
            groups.append(w[o].reshape(-1))
    elif structure == "in":
        for i in range(w.shape[1]):
            groups.append(w[:, i].reshape(-1))
    elif structure == "shape":
        for c in range(w.shape[1]):
            for y in range(w.shape[2]):
                for x in range(w.shape[3]):
                    groups.append(w[:, c, y, x])
    elif structure == "layer":
        groups.append(w.reshape(-1))
    return groups


def l2norm(g):
    total = 0.0
    for x in g:
        total = total + x * x
    return torch.sqrt(total)


def l1norm(g):
    total = 0.0
    for x in g:
        total = total + torch.abs(x)
    return total


def naive_group_lasso(w, structure, sqrt_weighting):
    total = 0.0
    for g in naive_groups(w, structure):
        c = math.sqrt(len(g)) if sqrt_weighting else 1.0
        total = total + c * l2norm(g)
    return total


CASES = [
    ("linear", "out"),
    ("linear", "in"),
    ("linear", "layer"),
    ("conv", "out"),
    ("conv", "in"),
    ("conv", "shape"),
    ("conv", "layer"),
]


@pytest.mark.parametrize("kind,structure", CASES)
@pytest.mark.parametrize("sqrt_weighting", [True, False])
def test_group_lasso_matches_naive(kind, structure, sqrt_weighting):
    layer = _layers()[kind]
    reg = GroupLasso(0.3, structure, sqrt_weighting=sqrt_weighting)
    _check(reg, layer, lambda w: 0.3 * naive_group_lasso(w, structure, sqrt_weighting))


@pytest.mark.parametrize("kind,structure", CASES)
@pytest.mark.parametrize("form", ["scardapane", "statistics"])
def test_sparse_group_lasso_matches_naive(kind, structure, form):
    layer = _layers()[kind]
    reg = SparseGroupLasso(0.2, structure, form=form, alpha=0.25)

    def naive(w):
        gl = naive_group_lasso(w, structure, True)
        l1 = l1norm(w.reshape(-1))
        if form == "scardapane":
            return 0.2 * (gl + l1)
        return 0.2 * ((1 - 0.25) * gl + 0.25 * l1)

    _check(reg, layer, naive)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_l1_and_l2_match_naive(kind):
    layer = _layers()[kind]
    _check(L1(0.5), layer, lambda w: 0.5 * l1norm(w.reshape(-1)))

    def half_square(w):
        total = 0.0
        for x in w.reshape(-1):
            total = total + x * x
        return 0.5 * 0.7 * total

    _check(L2(0.7), layer, half_square)


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("neuron_structure", ["in", "out"])
def test_ssl_matches_naive(kind, neuron_structure):
    layer = _layers()[kind]
    types = {"filter": 1.0, "channel": 0.5, "shape": 2.0, "depth": 0.25, "neuron": 3.0}
    reg = SSL(0.1, group_types=types, neuron_structure=neuron_structure, zero_threshold=0)

    def naive(w):
        if w.dim() == 4:  # filter, channel, shape, depth; no sqrt(|g|)
            parts = [("out", 1.0), ("in", 0.5), ("shape", 2.0), ("layer", 0.25)]
        else:  # neuron, depth
            parts = [(neuron_structure, 3.0), ("layer", 0.25)]
        total = 0.0
        for structure, lam in parts:
            for g in naive_groups(w, structure):
                total = total + lam * l2norm(g)
        return 0.1 * total

    _check(reg, layer, naive)


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("mode", ["filter_norms", "per_filter", "layer"])
def test_l1_l2_matches_naive(kind, mode):
    layer = _layers()[kind]
    eps = 1e-8
    reg = L1L2(0.4, mode=mode, eps=eps)

    def ratio(l1, squares):
        return l1 / torch.sqrt(squares + eps**2)

    def naive(w):
        filters = [w[f].reshape(-1) for f in range(w.shape[0])]
        if mode == "per_filter":
            total = 0.0
            for f in filters:
                total = total + ratio(l1norm(f), l2norm(f) ** 2)
            return 0.4 * total
        if mode == "layer":
            flat = w.reshape(-1)
            return 0.4 * ratio(l1norm(flat), l2norm(flat) ** 2)
        norms = [l2norm(f) for f in filters]
        return 0.4 * ratio(sum(norms), sum(n * n for n in norms))

    _check(reg, layer, naive, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("exempt", ["last", "first", "random"])
@pytest.mark.parametrize("units", ["in", "out"])
def test_partial_group_lasso_matches_naive(kind, exempt, units):
    layer = _layers()[kind]
    beta = 2.5
    reg = Partial(GroupLasso(1.0, units), 0.3, beta=beta, rescale=True, exempt=exempt, units=units)
    dim = 1 if units == "in" else 0
    n = layer.weight.shape[dim]
    kept = reg.kept_units(n).tolist()
    assert len(kept) == n - math.floor(n / beta)
    if exempt == "last":
        assert kept == list(range(n - math.floor(n / beta)))
    if exempt == "first":
        assert kept == list(range(math.floor(n / beta), n))

    def naive(w):
        total = 0.0
        for u in kept:  # only the regularized units' groups
            g = (w[:, u] if units == "in" else w[u]).reshape(-1)
            total = total + math.sqrt(len(g)) * l2norm(g)
        return 0.3 * beta / (beta - 1) * total

    _check(reg, layer, naive)


def test_partial_sparse_group_lasso_matches_naive():
    """Paper A's partial SGL: exempt columns are out of both the group and the l1 term."""
    layer = _layers()["linear"]  # 5 input units, beta 2 -> the last 2 exempt
    reg = Partial(SparseGroupLasso(1.0, "in", alpha=0.1), 0.5, beta=2)

    def naive(w):
        total = 0.0
        for i in range(3):
            g = w[:, i]
            total = total + 0.9 * math.sqrt(len(g)) * l2norm(g) + 0.1 * l1norm(g)
        return 0.5 * total

    _check(reg, layer, naive)


# --- variance (paper B, [choice] estimators) -----------------------------------------------
def _normal(x, var):
    return math.exp(-0.5 * x * x / var) / math.sqrt(2 * math.pi * var)


def naive_histogram_kl(w, std, pi, s0, s1, bins, span, bandwidth):
    """Binned Gaussian KDE, one weight at a time; smoothed spike-and-slab target."""
    lo, hi = -span * s1, span * s1
    width = (hi - lo) / (bins - 1)
    fine = 4
    points = (bins - 1) * fine + 1
    step = width / fine
    h2 = (bandwidth * width) ** 2
    centres = [lo + k * width for k in range(bins)]
    grid = [lo + j * step for j in range(points)]
    mass = [0.0] * points
    for x in w.reshape(-1):
        u = x / std
        if u.item() <= lo:
            mass[0] = mass[0] + 1.0
            continue
        if u.item() >= hi:
            mass[-1] = mass[-1] + 1.0
            continue
        t = (u - lo) / step
        j = int(math.floor(t.item()))
        frac = t - j
        mass[j] = mass[j] + (1 - frac)
        mass[j + 1] = mass[j + 1] + frac
    p = []
    for c in centres:
        total = 0.0
        for g, m in zip(grid, mass, strict=True):
            total = total + math.exp(-0.5 * (c - g) ** 2 / h2) * m
        p.append(total)
    norm = sum(p)
    q = [pi * _normal(c, s0**2 + h2) + (1 - pi) * _normal(c, s1**2 + h2) for c in centres]
    qnorm = sum(q)
    kl = 0.0
    for pk, qk in zip(p, q, strict=True):
        pk = pk / norm
        kl = kl + pk * (torch.log(pk + 1e-12) - math.log(qk / qnorm))
    return kl


def naive_gaussian_kl(w, std, pi, s0, s1):
    """Split where pi N(u; 0, s0^2) = (1 - pi) N(u; 0, s1^2) (u = w / std), one weight at a
    time; fit a Gaussian to each side; KL of the joint (component, weight) distributions."""
    v0, v1 = (s0 * std) ** 2, (s1 * std) ** 2
    near, far = [], []
    for x in w.reshape(-1):
        u = x.item() / std
        spike = pi * _normal(u, s0**2)
        slab = (1 - pi) * _normal(u, s1**2)
        (near if spike > slab else far).append(x)
    p0 = len(near) / (len(near) + len(far))

    def moments(xs):
        m = sum(xs) / len(xs)
        return m, sum((x - m) ** 2 for x in xs) / len(xs)

    m0, var0 = moments(near)
    m1, var1 = moments(far)
    var0 = torch.maximum(var0, torch.tensor(v0))

    def kl_normal(m, v, tv):
        return 0.5 * (v / tv + m * m / tv - 1 - torch.log(v / tv))

    bern = p0 * math.log(p0 / pi) + (1 - p0) * math.log((1 - p0) / (1 - pi))
    return bern + p0 * kl_normal(m0, var0, v0) + (1 - p0) * kl_normal(m1, var1, v1)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_variance_histogram_matches_naive(kind):
    layer = _layers()[kind]
    opts = dict(pi=0.7, s0=0.1, s1=1.5, bins=21, span=3.0, bandwidth=1.0)
    reg = Variance(0.2, estimator="histogram", **opts)
    std = 0.2  # the "initial std" the KL is measured in
    reg.init_std["0"] = std
    _check(reg, layer, lambda w: 0.2 * naive_histogram_kl(w, std, **opts), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_variance_gaussian_matches_naive(kind):
    layer = _layers()[kind]
    reg = Variance(0.2, estimator="gaussian", pi=0.6, s0=0.3, s1=2.0)
    std = 0.25  # split at |w| ~ 0.19: both sides populated by the init's U(-0.45, 0.45)
    reg.init_std["0"] = std
    _check(
        reg,
        layer,
        lambda w: 0.2 * naive_gaussian_kl(w, std, 0.6, 0.3, 2.0),
        rtol=1e-4,
        atol=1e-6,
    )


def test_soft_histogram_is_a_gaussian_kernel_density():
    """The binned KDE agrees with the exact Gaussian KDE at the bin centres."""
    reg = Variance(1.0, bins=41, span=3.0, s1=1.0, bandwidth=1.0)
    u = torch.randn(2000) * 0.8
    kernel, _ = reg.histogram_constants(u.device)
    p = kernel @ reg.soft_histogram(u, 1.0)
    p = p / p.sum()
    centres = torch.linspace(-3.0, 3.0, 41)
    h = 6.0 / 40
    exact = torch.exp(-0.5 * (centres[:, None] - u[None, :]) ** 2 / h**2).sum(1)
    exact = exact / exact.sum()
    torch.testing.assert_close(p, exact, rtol=0.02, atol=2e-4)


@pytest.mark.parametrize("estimator", ["histogram", "gaussian"])
def test_variance_of_several_layers_is_the_sum_of_single_layers(estimator):
    """The layers share one buffer in the hand-written backward passes: no cross-talk."""
    layers = _layers()
    model = nn.Sequential(layers["conv"], layers["linear"])  # never run, only regularized
    opts = dict(estimator=estimator, pi=0.7, s0=0.1, s1=1.5, bins=21, span=3.0)
    reg = Variance(1.0, layers={"1": 2.0}, **opts)
    reg.init_std.update({"0": 0.15, "1": 0.3})
    value = reg(model)
    value.backward()
    expected, grads = 0.0, []
    for name, layer, scale in (("0", layers["conv"], 1.0), ("1", layers["linear"], 2.0)):
        single = Variance(1.0, **opts)
        single.init_std["0"] = reg.init_std[name]
        v, g = _naive_value_and_grad(
            lambda w, single=single: single.layer_kls([w], [single.init_std["0"]])[0], layer
        )
        expected += scale * v
        grads.append(scale * g)
    torch.testing.assert_close(value.detach(), expected)
    torch.testing.assert_close(layers["conv"].weight.grad, grads[0])
    torch.testing.assert_close(layers["linear"].weight.grad, grads[1])
