"""Group structures shared by the regularizers and by pruning (PAPERS.md, "Group structures").

A layer weight is viewed as a matrix with one row per group, so all groups of a layer are
reduced at once with `torch.linalg.vector_norm(..., dim=1)`; no Python loop over groups.
Linear weight: (n_out, n_in); Conv2d weight: (N, C, kh, kw).
"""

from __future__ import annotations

import torch

STRUCTURES = ("out", "in", "shape", "layer")


def check_structure(structure: str) -> str:
    if structure not in STRUCTURES:
        raise ValueError(
            f"regularizer.structure='{structure}' is not a group structure; "
            f"allowed: {', '.join(STRUCTURES)}"
        )
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
            raise ValueError("structure 'shape' applies to Conv2d layers only")
        return weight.reshape(weight.shape[0], -1).t()
    if structure == "layer":
        return weight.reshape(1, -1)
    check_structure(structure)
    raise AssertionError("unreachable")


def group_norms(weight: torch.Tensor, structure: str) -> torch.Tensor:
    """Euclidean norm of every group, shape (num_groups,)."""
    return torch.linalg.vector_norm(group_matrix(weight, structure), ord=2, dim=1)


def group_size(weight: torch.Tensor, structure: str) -> int:
    """|g|: number of weights in one group (all groups of a layer have the same size)."""
    return weight.numel() // group_matrix(weight, structure).shape[0]
