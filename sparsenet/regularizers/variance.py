"""Variance regularization (paper B: "Variance-Guided Structured Sparsity in Deep Neural
Networks", IEEE).

[known] Paper B trains a sparse group lasso plus a variance term: the KL divergence between
the current distribution of the parameters and a target that puts most weights at zero while
the non-zero ones have a high variance; the term is there to recover the accuracy lost to
sparsity. Its groups, strengths, target and estimator are unknown: everything below is a
[choice] (PAPERS.md, paper B).

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
Both estimators are O(n) per layer with hand-written backward passes (`_LinearBinning`,
`_SplitMoments`): this term runs on every weight at every step.
Biases are not regularized; every Conv2d/Linear layer is, unless `layers` says otherwise.
`sgl_variance` (conf/regularizer/sgl_variance.yaml) combines this term with the sparse group
lasso, as paper B trains.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from sparsenet.errors import ConfigError
from sparsenet.regularizers.base import Regularizer, check_choice, check_number

ESTIMATORS = ("histogram", "gaussian")
_TINY = 1e-12
_FINE = 4  # fine-grid points per bin width


def _normal_pdf(x: torch.Tensor, var: float) -> torch.Tensor:
    return torch.exp(-0.5 * x**2 / var) / math.sqrt(2 * math.pi * var)


class _LinearBinning(torch.autograd.Function):
    """Linear binning of x onto grid points 0..size-1 at t = x * scale + shift: point floor(t)
    gets 1 - frac(t), the next one frac(t). Points beyond the grid count fully at its edge,
    with zero gradient. Forward: two `scatter_add_`; backward: one gather.

    The edges use sentinels: the grid is padded with one point on each side, t is clamped
    into the padded grid, the sentinels' mass is folded into the edges, and the gradient
    table is built on a padded copy of the incoming gradient whose sentinels repeat the edge
    values, so its differences (the gradient of frac) are 0 beyond the grid: no mask needed.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float, shift: float, size: int) -> torch.Tensor:
        t = torch.add(x.new_tensor(shift + 1), x.detach(), alpha=scale)
        t.clamp_(0, size + 1 - 1e-3)
        left = t.long()
        frac = t.frac_()
        # grid point j gets sum(1 - frac) of its own weights and sum(frac) of point j-1's
        # scatter_add_ rather than bincount, which scans its input twice to validate it
        padded = x.new_zeros(size + 3).scatter_add_(0, left, x.new_ones(1).expand_as(frac))
        shifted = torch.zeros_like(padded).scatter_add_(0, left, frac)
        padded -= shifted
        padded[1:] += shifted[:-1]
        mass = padded[1 : size + 1].clone()
        mass[0] += padded[0]
        mass[-1] += padded[size + 1] + padded[size + 2]
        ctx.save_for_backward(left)
        ctx.scale = scale
        return mass

    @staticmethod
    def backward(ctx, grad_mass: torch.Tensor):
        (left,) = ctx.saved_tensors
        padded = torch.cat([grad_mass[:1], grad_mass, grad_mass[-1:], grad_mass[-1:]])
        step = torch.diff(padded) * ctx.scale  # d mass / d frac at each left point
        return step.index_select(0, left), None, None, None


class _SplitMoments(torch.autograd.Function):
    """(n0, sum_0 w, sum_0 w^2, sum w, sum w^2) of a flat weight, sum_0 over |w| < threshold.
    The count has no gradient. The near-zero mask is made with float arithmetic,
    clamp((threshold - |w|) * 1e30, 0, 1), which is 1 for |w| < threshold (up to a 1e-30
    margin) and 0 otherwise: comparisons to bool and bool-float mixes are several times
    slower on CPU. Backward: three fused multiply-adds."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, threshold: float) -> torch.Tensor:
        w = w.detach()
        near = torch.rsub(w.abs(), threshold).mul_(1e30).clamp_(0, 1)
        w_near = w * near
        ctx.save_for_backward(w, w_near, near)
        return torch.stack(
            [near.sum(), w_near.sum(), torch.dot(w_near, w_near), w.sum(), torch.dot(w, w)]
        )

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        w, w_near, near = ctx.saved_tensors
        _, g1, g2, g3, g4 = grad.unbind()
        # d/dw: g1 near + 2 g2 w near + g3 + 2 g4 w
        out = torch.addcmul(g3, w, 2 * g4).addcmul_(w_near, 2 * g2).addcmul_(near, g1)
        return out, None


def _kl_normal(mean: torch.Tensor, var: torch.Tensor, target_var: torch.Tensor) -> torch.Tensor:
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
        layers: Mapping[str, float | None] | None = None,
        proximal: bool = False,
    ) -> None:
        # no closed-form prox: proximal=true is refused by the base class with that reason
        super().__init__(strength=strength, layers=layers, proximal=proximal)
        self.estimator = check_choice("estimator", estimator, ESTIMATORS)
        self.pi = check_number("pi", pi, above=0)
        if self.pi >= 1:
            raise ConfigError(f"regularizer.pi={pi} must be in (0, 1)")
        self.s0 = check_number("s0", s0, above=0)
        self.s1 = check_number("s1", s1, above=0)
        if self.s0 >= self.s1:
            raise ConfigError(f"regularizer.s0={s0} must be < regularizer.s1={s1} (spike << slab)")
        self.bins = int(check_number("bins", bins, minimum=3))
        self.span = check_number("span", span, above=0)
        self.bandwidth = check_number("bandwidth", bandwidth, above=0)
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
        scale = 1.0 / (init_std * self._step)
        return _LinearBinning.apply(weight.reshape(-1), scale, -self._lo / self._step, self._grid)

    def _kl_histograms(self, weights: list[torch.Tensor], stds: list[float]) -> torch.Tensor:
        kernel, log_target = self.histogram_constants(weights[0].device)
        masses = torch.stack(
            [self.soft_histogram(w, s) for w, s in zip(weights, stds, strict=True)]
        )
        p = masses @ kernel.t()
        p = p / p.sum(1, keepdim=True)
        return (p * (torch.log(p + _TINY) - log_target)).sum(1)

    # --- the closed-form estimator ------------------------------------------------------
    def split_point(self) -> float:
        """|u| where the target's spike and slab are equally likely (0 if never)."""
        v0, v1 = self.s0**2, self.s1**2
        log_odds = math.log(self.pi / (1 - self.pi)) + math.log(self.s1 / self.s0)
        return math.sqrt(max(2 * log_odds / (1 / v0 - 1 / v1), 0.0))

    def _kl_gaussians(self, weights: list[torch.Tensor], stds: list[float]) -> torch.Tensor:
        split = self.split_point()
        sums = torch.stack(
            [
                _SplitMoments.apply(w.reshape(-1), split * s)
                for w, s in zip(weights, stds, strict=True)
            ]
        )
        std = sums.new_tensor(stds)
        v0, v1 = (self.s0 * std) ** 2, (self.s1 * std) ** 2  # in weight units
        n = sums.new_tensor([float(w.numel()) for w in weights])
        c0, s0w, s0w2, s_w, s_w2 = sums.unbind(1)
        n0 = c0.clamp_min(1.0)
        n1 = (n - c0).clamp_min(1.0)
        p0 = (c0 / n).clamp(1e-6, 1 - 1e-6)
        m0, m1 = s0w / n0, (s_w - s0w) / n1
        var0 = torch.maximum(s0w2 / n0 - m0**2, v0)  # a narrower spike is not penalised
        var1 = torch.maximum((s_w2 - s0w2) / n1 - m1**2, _TINY * v1)
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
        kls = self.layer_kls([m.weight for _, m, _ in targets], self._stds(targets))
        return (kls * self._scales(targets, kls.device)).sum()

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
            "scale": "relative to each layer's initial weight std",
        }
