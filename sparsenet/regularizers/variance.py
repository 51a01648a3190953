"""Variance regularization (paper B: "Variance-Guided Structured Sparsity in Deep Neural
Networks", IEEE).

[known] Paper B trains a sparse group lasso plus a variance term: the KL divergence between
the current distribution of the parameters and a target that puts most weights at zero while
the non-zero ones have a high variance; the term is there to recover the accuracy lost to
sparsity. Its groups, strengths, target and estimator are unknown: everything below is a
[choice] (docs/methods.md#variance-regularization).

Target, per layer l, in units of the layer's initial weight std sigma_l (captured by the first
`bind` or the first call, and kept when `bind` runs again on the pruned model):
    q = pi * N(0, s0^2) + (1 - pi) * N(0, s1^2),   s0 << s1     (spike and slab)
R = sum_l m_l * KL(p_l || q), p_l the distribution of u = W_l / sigma_l, estimated by
  histogram  a differentiable soft histogram: a Gaussian kernel density estimate of u
             (bandwidth h = `bandwidth` bin widths) read at `bins` fixed bin centres spanning
             +-`span` * s1, normalised to sum 1. The target is smoothed by the same kernel
             (variances s0^2 + h^2 and s1^2 + h^2) and read at the same centres, so a layer
             distributed exactly as q scores ~0. Weights beyond the span are clamped to the
             edge (counted, no gradient). For speed the KDE is binned (Wand 1994): each weight
             is split linearly between its two neighbours on a grid 4x finer than the bins
             (O(n)), then the grid masses go through a fixed kernel matrix,
             so the kernel is the Gaussian linearly interpolated on the fine grid.
  gaussian   closed form: the weights are split at the point where the target's
             posterior of the spike is 1/2 (pi N(u; 0, s0^2) = (1 - pi) N(u; 0, s1^2)), into
             near-zero and non-zero ones; their share p0 and moments (m0, v0), (m1, v1) give
             two Gaussians, and
                 KL = KL(Bern(p0) || Bern(pi)) + p0 KL(N(m0, v0) || N(0, s0^2))
                      + (1 - p0) KL(N(m1, v1) || N(0, s1^2)),
             the KL between the joint (component, weight) distributions, an upper bound on
             the mixture KL. The split is a step function, so the gradient flows through the
             moments, not through p0. A spike narrower than s0 is not penalised (v0 is floored
             at s0^2): exact zeros are the point of the spike.
Subsampling ([choice], `max_weights`, null = every weight): a layer with n > max_weights
weights is estimated from the strided subset w[o], w[o + k], w[o + 2k], ... with
k = ceil(n / max_weights), the offset o cycling through 0..k-1 from one call (training step)
to the next. Each weight then gets the term's gradient every k-th step, k times larger (it
weighs 1/(n/k) in the estimate instead of 1/n), so over k steps the gradient averages to the
full-layer one to first order, at a k-th of the cost; 65,536 weights estimate an 81-bin
histogram or two moments closely. The configs use it for LeNet-5's fc1 (400,000 weights).
Both estimators are O(n) with hand-written backward passes (`_LinearBinning`,
`_SplitMoments`) that take all layers at once: this term runs on every weight at every step.
Biases are not regularized; every Conv2d/Linear layer is, unless `layers` says otherwise.
`sgl_variance` (conf/regularizer/sgl_variance.yaml) combines this term with the sparse group
lasso, as paper B trains.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from sparsenet.config.checks import Choice, Integer, Number
from sparsenet.errors import ConfigError
from sparsenet.regularizers.base import Regularizer

ESTIMATORS = ("histogram", "gaussian")
_TINY = 1e-12
_FINE = 4  # fine-grid points per bin width


def _normal_pdf(x: torch.Tensor, var: float) -> torch.Tensor:
    return torch.exp(-0.5 * x**2 / var) / math.sqrt(2 * math.pi * var)


class _LinearBinning(torch.autograd.Function):
    """Linear binning of every layer's weights onto its own grid of `size` points: weight x of
    layer l sits at t = x * scales[l] + shift; grid point floor(t) gets 1 - frac(t), the next
    one frac(t). Points beyond the grid count fully at its edge, with zero gradient. Returns
    the masses, shape (layers, size). All layers go through one buffer: one clamp, one
    `long`, two `scatter_add_` forward and one gather backward, whatever the layer count.

    The edges use sentinels: each layer's grid is padded with one point on each side (and a
    spare), t is clamped into the padded grid, the sentinels' mass is folded into the edges,
    and the gradient table is built on a padded copy of the incoming gradient whose sentinels
    repeat the edge values, so its differences (the gradient of frac) are 0 beyond the grid.
    """

    @staticmethod
    def forward(ctx, scales: tuple[float, ...], shift: float, size: int, *weights):
        width = size + 3  # sentinel, grid, sentinel, spare (never a left point)
        counts = [w.numel() for w in weights]
        t = weights[0].new_empty(sum(counts))
        start = 0
        for w, scale, n in zip(weights, scales, counts, strict=True):
            torch.add(
                t.new_tensor(shift + 1),
                w.detach().reshape(-1),
                alpha=scale,
                out=t[start : start + n],
            )
            start += n
        t.clamp_(0, size + 1 - 1e-3)
        left = t.long()
        frac = t.frac_()
        start = 0
        for layer, n in enumerate(counts[1:], start=1):
            start += counts[layer - 1]
            left[start : start + n] += layer * width
        # grid point j gets sum(1 - frac) of its own weights and sum(frac) of point j-1's
        padded = t.new_zeros(len(weights) * width)
        padded.scatter_add_(0, left, t.new_ones(1).expand_as(frac))
        shifted = torch.zeros_like(padded).scatter_add_(0, left, frac)
        padded -= shifted
        padded[1:] += shifted[:-1]
        padded = padded.view(len(weights), width)
        mass = padded[:, 1 : size + 1].clone()
        mass[:, 0] += padded[:, 0]
        mass[:, -1] += padded[:, size + 1] + padded[:, size + 2]
        ctx.save_for_backward(left)
        ctx.scales, ctx.counts = scales, counts
        ctx.shapes = [w.shape for w in weights]
        return mass

    @staticmethod
    def backward(ctx, grad_mass: torch.Tensor):
        (left,) = ctx.saved_tensors
        g = grad_mass
        padded = torch.cat([g[:, :1], g, g[:, -1:], g[:, -1:], g[:, -1:]], dim=1)
        step = torch.diff(padded, dim=1)  # d mass / d frac at each left point, (layers, width)
        step *= step.new_tensor(ctx.scales)[:, None]
        flat = step.reshape(-1).index_select(0, left)
        grads = [
            part.view(shape) for part, shape in zip(flat.split(ctx.counts), ctx.shapes, strict=True)
        ]
        return (None, None, None, *grads)


class _SplitMoments(torch.autograd.Function):
    """Per layer l, with u = w / stds[l]: (n0, sum_0 u, sum_0 u^2, sum u, sum u^2), sum_0 over
    |u| < split; shape (layers, 5). The counts have no gradient. The near-zero mask is made
    with float arithmetic, clamp((split - |u|) * 1e30, 0, 1), which is 1 for |u| < split (up
    to a 1e-30 margin) and 0 otherwise: comparisons to bool and bool-float mixes are several
    times slower on CPU. Backward: three fused multiply-adds per layer."""

    @staticmethod
    def forward(ctx, stds: tuple[float, ...], split: float, *weights):
        rows, saved = [], []
        for w, std in zip(weights, stds, strict=True):
            u = w.detach().reshape(-1) / std
            near = torch.rsub(u.abs(), split).mul_(1e30).clamp_(0, 1)
            u_near = u * near
            saved += [u, u_near, near]
            rows.append(
                torch.stack(
                    [near.sum(), u_near.sum(), torch.dot(u_near, u_near), u.sum(), torch.dot(u, u)]
                )
            )
        ctx.save_for_backward(*saved)
        ctx.stds, ctx.shapes = stds, [w.shape for w in weights]
        return torch.stack(rows)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        saved = ctx.saved_tensors
        grads = []
        for layer, (std, shape) in enumerate(zip(ctx.stds, ctx.shapes, strict=True)):
            u, u_near, near = saved[3 * layer : 3 * layer + 3]
            _, g1, g2, g3, g4 = (grad[layer] / std).unbind()
            # d/du: g1 near + 2 g2 u near + g3 + 2 g4 u; d/dw = d/du / std (folded in above)
            out = torch.addcmul(g3, u, 2 * g4).addcmul_(u_near, 2 * g2).addcmul_(near, g1)
            grads.append(out.view(shape))
        return (None, None, *grads)


def _kl_normal(mean: torch.Tensor, var: torch.Tensor, target_var: float) -> torch.Tensor:
    """KL(N(mean, var) || N(0, target_var)), elementwise."""
    ratio = var / target_var
    return 0.5 * (ratio + mean**2 / target_var - 1 - torch.log(ratio))


class Variance(Regularizer):
    def __init__(
        self,
        strength: float = 1e-2,
        estimator: str = "histogram",
        pi: float = 0.8,
        s0: float = 0.05,
        s1: float = 2.0,
        bins: int = 81,
        span: float = 4.0,
        bandwidth: float = 1.0,
        max_weights: int | None = None,
        layers: Mapping[str, float | None] | None = None,
        proximal: bool = False,
        cost: str | None = None,
    ) -> None:
        # no closed-form prox and no groups: proximal=true and a cost are refused by the base
        super().__init__(strength=strength, layers=layers, proximal=proximal, cost=cost)
        self.estimator = Choice(ESTIMATORS)("estimator", estimator)
        self.pi = Number(above=0, below=1)("pi", pi)
        self.s0 = Number(above=0)("s0", s0)
        self.s1 = Number(above=0)("s1", s1)
        if self.s0 >= self.s1:
            raise ConfigError("s0", s0, f"must be < s1={s1} (spike << slab)")
        self.bins = Integer(low=3)("bins", bins)
        self.span = Number(above=0)("span", span)
        self.bandwidth = Number(above=0)("bandwidth", bandwidth)
        self.max_weights = Integer(low=1, optional=True)("max_weights", max_weights)
        self._calls = 0
        self.init_std: dict[str, float] = {}
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        half = self.span * self.s1
        self._lo, self._hi = -half, half
        self._step = (self._hi - self._lo) / ((self.bins - 1) * _FINE)  # fine-grid spacing
        self._grid = (self.bins - 1) * _FINE + 1

    # --- initial scale ------------------------------------------------------------------
    def _capture(self, model: nn.Module) -> None:
        for name, module, _ in self.targets(model):
            if name not in self.init_std:
                std = float(module.weight.detach().float().std())
                self.init_std[name] = std if std > 0 else 1.0

    def bind(self, model: nn.Module, example_input: torch.Tensor) -> None:
        super().bind(model, example_input)
        self._capture(model)

    # --- the histogram estimator --------------------------------------------------------
    def histogram_constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(kernel matrix bins x fine grid, log of the smoothed target at the bin centres),
        in units of the initial std."""
        if device not in self._constants:
            centres = torch.linspace(self._lo, self._hi, self.bins, dtype=torch.float64)
            grid = torch.linspace(self._lo, self._hi, self._grid, dtype=torch.float64)
            h2 = (self.bandwidth * self._step * _FINE) ** 2
            kernel = torch.exp(-0.5 * (centres[:, None] - grid[None, :]) ** 2 / h2)
            target = self.pi * _normal_pdf(centres, self.s0**2 + h2) + (1 - self.pi) * _normal_pdf(
                centres, self.s1**2 + h2
            )
            log_target = torch.log(target / target.sum())
            self._constants[device] = (kernel.float().to(device), log_target.float().to(device))
        return self._constants[device]

    def soft_histogram(self, weight: torch.Tensor, init_std: float) -> torch.Tensor:
        """Fine-grid masses (grid,) of weight / init_std; differentiable. The bin
        probabilities are `normalize(kernel @ masses)` (see `_kl_histograms`)."""
        return self._masses([weight], [init_std])[0]

    def _masses(self, weights: list[torch.Tensor], stds: list[float]) -> torch.Tensor:
        scales = tuple(1.0 / (s * self._step) for s in stds)
        return _LinearBinning.apply(scales, -self._lo / self._step, self._grid, *weights)

    def _kl_histograms(self, weights: list[torch.Tensor], stds: list[float]) -> torch.Tensor:
        kernel, log_target = self.histogram_constants(weights[0].device)
        p = self._masses(weights, stds) @ kernel.t()
        p = p / p.sum(1, keepdim=True)
        return (p * (torch.log(p + _TINY) - log_target)).sum(1)

    # --- the closed-form estimator ------------------------------------------------------
    def split_point(self) -> float:
        """|u| where the target's spike and slab are equally likely (0 if never)."""
        v0, v1 = self.s0**2, self.s1**2
        log_odds = math.log(self.pi / (1 - self.pi)) + math.log(self.s1 / self.s0)
        return math.sqrt(max(2 * log_odds / (1 / v0 - 1 / v1), 0.0))

    def _kl_gaussians(self, weights: list[torch.Tensor], stds: list[float]) -> torch.Tensor:
        # in units of each layer's initial std, where the target is the same for all layers
        sums = _SplitMoments.apply(tuple(stds), self.split_point(), *weights)
        n = sums.new_tensor([float(w.numel()) for w in weights])
        c0, s0u, s0u2, s_u, s_u2 = sums.unbind(1)
        n0 = c0.clamp_min(1.0)
        n1 = (n - c0).clamp_min(1.0)
        p0 = (c0 / n).clamp(1e-6, 1 - 1e-6)
        m0, m1 = s0u / n0, (s_u - s0u) / n1
        v0, v1 = self.s0**2, self.s1**2
        var0 = (s0u2 / n0 - m0**2).clamp_min(v0)  # a narrower spike is not penalised
        var1 = ((s_u2 - s0u2) / n1 - m1**2).clamp_min(_TINY * v1)
        bernoulli = p0 * torch.log(p0 / self.pi) + (1 - p0) * torch.log((1 - p0) / (1 - self.pi))
        return bernoulli + p0 * _kl_normal(m0, var0, v0) + (1 - p0) * _kl_normal(m1, var1, v1)

    def layer_kls(self, weights: list[torch.Tensor], stds: list[float]) -> torch.Tensor:
        """KL(p_l || q) of every layer, shape (layers,); stds are the initial weight stds."""
        if self.estimator == "histogram":
            return self._kl_histograms(weights, stds)
        return self._kl_gaussians(weights, stds)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        targets = self.targets(model)
        if not targets:
            return torch.zeros(())
        if any(name not in self.init_std for name, _, _ in targets):
            self._capture(model)
        kls = self.layer_kls([self._sample(m.weight) for _, m, _ in targets], self._stds(targets))
        self._calls += 1
        return (kls * self._scales(targets, kls.device)).sum()

    def _sample(self, weight: torch.Tensor) -> torch.Tensor:
        """The weights that enter this call's estimate: all, or a strided view (no copy)."""
        n = weight.numel()
        if self.max_weights is None or n <= self.max_weights:
            return weight
        k = -(-n // self.max_weights)
        return weight.reshape(-1)[self._calls % k :: k]

    def _stds(self, targets) -> list[float]:
        return [self.init_std[name] for name, _, _ in targets]

    def _scales(self, targets, device: torch.device) -> torch.Tensor:
        key = (tuple(s for _, _, s in targets), device)
        if getattr(self, "_scale_key", None) != key:
            self._scale_key = key
            self._scale_tensor = torch.tensor([s for _, _, s in targets], device=device)
        return self._scale_tensor

    def describe(self) -> dict:
        return {
            **super().describe(),
            "estimator": self.estimator,
            "pi": self.pi,
            "s0": self.s0,
            "s1": self.s1,
            "bins": self.bins,
            "span": self.span,
            "bandwidth": self.bandwidth,
            "max_weights": self.max_weights,
            "scale": "relative to each layer's initial weight std",
        }
