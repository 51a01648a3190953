"""Group structures shared by the regularizers and by pruning (docs/methods.md#group-structures).

A layer weight is viewed as a matrix with one row per group, so all groups of a layer are
reduced at once with `torch.linalg.vector_norm(..., dim=1)`; no Python loop over groups.
`group_norms` reduces over the group's dimensions directly (same result, no copy).
Linear weight: (n_out, n_in); Conv2d weight: (N, C, kh, kw).
"""

from __future__ import annotations

import math

import torch

from sparsenet.errors import ConfigError

STRUCTURES = ("out", "in", "shape", "layer")


def check_structure(structure: str) -> str:
    if structure not in STRUCTURES:
        raise ConfigError("structure", structure, "is not a group structure", ", ".join(STRUCTURES))
    return structure


def group_matrix(weight: torch.Tensor, structure: str) -> torch.Tensor:
    """Rows are the groups of `weight` under `structure`.

    out:   W[o, ...]        one group per neuron / filter (its incoming weights)
    in:    W[:, i, ...]     one group per input unit / input channel (its outgoing weights)
    shape: W[:, c, y, x]    one group per filter-shape position (Conv only; SSL)
    layer: W                one group for the whole layer (SSL depth)
    """
    if structure == "out":
        return weight.reshape(weight.shape[0], -1)
    if structure == "in":
        return weight.transpose(0, 1).reshape(weight.shape[1], -1)
    if structure == "shape":
        if weight.dim() != 4:
            raise ConfigError("structure", "shape", "applies to Conv2d layers only")
        return weight.reshape(weight.shape[0], -1).t()
    if structure == "layer":
        return weight.reshape(1, -1)
    check_structure(structure)
    raise AssertionError("unreachable")


def group_dims(weight: torch.Tensor, structure: str) -> tuple[int, ...]:
    """The dimensions of `weight` one group spans: reducing over them gives one value per
    group, in the order of `group_matrix`'s rows (after `.reshape(-1)`), with no copy."""
    if structure == "out":
        return tuple(range(1, weight.dim()))
    if structure == "in":
        return (0, *range(2, weight.dim()))
    if structure == "shape":
        if weight.dim() != 4:
            raise ConfigError("structure", "shape", "applies to Conv2d layers only")
        return (0,)
    if structure == "layer":
        return tuple(range(weight.dim()))
    check_structure(structure)
    raise AssertionError("unreachable")


def group_norms(weight: torch.Tensor, structure: str) -> torch.Tensor:
    """Euclidean norm of every group, shape (num_groups,). A reduction over `group_dims`, so
    strided groups (`in`, `shape`) need no transposed copy, forward or backward."""
    return torch.linalg.vector_norm(weight, ord=2, dim=group_dims(weight, structure)).reshape(-1)


def group_size(weight: torch.Tensor, structure: str) -> int:
    """|g|: number of weights in one group (all groups of a layer have the same size)."""
    return math.prod(weight.shape[d] for d in group_dims(weight, structure))


def ungroup(rows: torch.Tensor, shape: torch.Size, structure: str) -> torch.Tensor:
    """Inverse of `group_matrix`: the weight of `shape` whose groups are the rows of `rows`."""
    if structure == "in":
        return rows.reshape(shape[1], shape[0], *shape[2:]).transpose(0, 1)
    if structure == "shape":
        return rows.t().reshape(shape)
    return rows.reshape(shape)


def group_soft_threshold(rows: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    """Proximal operator of tau * sum_g ||row_g||_2 (block soft-thresholding):
    row_g * max(0, 1 - tau / ||row_g||). A group whose norm is <= tau becomes exactly zero."""
    norms = torch.linalg.vector_norm(rows, ord=2, dim=1, keepdim=True)
    return rows * torch.clamp(1 - tau / norms.clamp_min(1e-12), min=0.0)


def soft_threshold(weight: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    """Proximal operator of tau * ||w||_1: sign(w) * max(|w| - tau, 0); `tau` may be a
    tensor broadcast over `weight` (a threshold per group or row)."""
    return torch.sign(weight) * torch.clamp(weight.abs() - tau, min=0.0)


class _GroupPenalty(torch.autograd.Function):
    """group_coef * sum_g ||w_g||_2 + l1_coef * ||w||_1 with a hand-written backward:
        d/dw = w * group_coef / ||w_g|| (0 for an all-zero group) + l1_coef * sign(w),
    one broadcast multiply (and a sign and a fused multiply-add with the l1 term), where
    autograd through `vector_norm` and `abs` makes twice as many full-size passes. This is
    the hot path of group lasso, sparse group lasso, SSL and partial regularization."""

    @staticmethod
    def forward(ctx, weight, dims, group_coef, l1_coef):
        norms = torch.linalg.vector_norm(weight, ord=2, dim=dims, keepdim=True)
        if isinstance(group_coef, torch.Tensor):  # one coefficient per group (cost-aware)
            value = (group_coef * norms).sum()
            if _nonzero(l1_coef):
                value = value + (l1_coef * weight.abs()).sum()
        else:  # one float for the layer: the original arithmetic, bit for bit
            value = group_coef * norms.sum()
            if l1_coef:
                value = value + l1_coef * weight.abs().sum()
        ctx.save_for_backward(weight, norms)
        ctx.group_coef, ctx.l1_coef = group_coef, l1_coef
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        weight, norms = ctx.saved_tensors
        scale = (grad * ctx.group_coef / norms).masked_fill_(norms == 0, 0.0)
        out = weight * scale
        if _nonzero(ctx.l1_coef):
            out.addcmul_(weight.sign(), grad * ctx.l1_coef)
        return out, None, None, None


def _nonzero(coef: float | torch.Tensor) -> bool:
    """Whether an l1 coefficient (a float, or per-group costs times one) adds a term."""
    return isinstance(coef, torch.Tensor) or bool(coef)


def group_penalty(
    weight: torch.Tensor,
    structure: str,
    group_coef: float | torch.Tensor,
    l1_coef: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """group_coef * sum_g ||w_g||_2 + l1_coef * ||w||_1 over the groups of `structure`; a
    tensor coefficient holds one value per group, shaped like the group norms with keepdim
    (broadcast over the group's weights for the l1 term)."""
    return _GroupPenalty.apply(weight, group_dims(weight, structure), group_coef, l1_coef)
