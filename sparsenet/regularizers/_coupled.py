"""The `coupled` group structure: one group per prunable unit of the network graph.

A unit is one out-channel of a Conv2d or one out-feature of a Linear layer (the *root*),
with every weight slice torch-pruning's DependencyGraph couples to it: the root's row
W[o, ...], the consumers' input columns W_q[:, idx(o), ...] (through Flatten, residual adds,
concatenations, ...), coupled producers' rows (residual partners), and, only with
`include_batchnorm`, the BatchNorm weight and bias entries. Groups are built exactly as
`sparsenet.pruning.remove` builds the units it removes (root types Conv2d/Linear, the output
layer excluded), so what is regularized is what pruning can remove. Biases are never part
of a group.

`bind` turns the graph into index tensors, once per model shape; each step is then one
reduction per (module, kind) plus a gather and an `index_add` into the group accumulator:
    ||w_g||^2 = sum over slices s of g of ||s||^2,   ||w_g|| = sqrt(.) (0 for an all-zero g)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from sparsenet.regularizers.base import REGULARIZED_TYPES

_BATCHNORM = nn.modules.batchnorm._BatchNorm


@dataclass
class _Slices:
    """All slices of one module of one kind: `index[k]` of the module belongs to group
    `group[k]`. kind: 'out' (rows), 'in' (columns), 'bn' (BatchNorm entries)."""

    module: nn.Module
    kind: str
    index: torch.Tensor
    group: torch.Tensor


def _squared_slices(entry: _Slices, squares: dict[int, torch.Tensor]) -> torch.Tensor:
    """||slice||^2 of every index of the module along the entry's dimension (full length).
    `squares` caches each weight's elementwise square within one call (a Linear layer is both
    a root, by rows, and a consumer, by columns)."""
    if entry.kind == "bn":
        sq = entry.module.weight.square()
        return sq + entry.module.bias.square() if entry.module.bias is not None else sq
    w = entry.module.weight
    sq = squares.get(id(w))
    if sq is None:
        sq = squares[id(w)] = w.square()
    if entry.kind == "out":
        return sq.sum(tuple(range(1, sq.dim())))
    return sq.sum((0, *range(2, sq.dim())))


def _slice_size(entry: _Slices) -> int:
    if entry.kind == "bn":
        return 1 + int(entry.module.bias is not None)
    w = entry.module.weight
    return w.numel() // w.shape[0 if entry.kind == "out" else 1]


class CoupledGroups:
    """Index tensors of the coupled groups of one model (rebuilt by `bind` after pruning)."""

    def __init__(
        self,
        model: nn.Module,
        example_input: torch.Tensor,
        scale_for: Callable[[str, bool], float | None],
        include_batchnorm: bool = False,
    ) -> None:
        was_training = model.training
        model.eval()
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, verbose=False
            )
        model.train(was_training)
        layers = [m for m in model.modules() if isinstance(m, REGULARIZED_TYPES)]
        names = {m: n for n, m in model.named_modules()}
        collected: dict[tuple[int, str], tuple[nn.Module, list[int], list[int]]] = {}
        scales: list[float] = []
        self.roots: list[tuple[str, int, int]] = []  # (root layer, first group id, units)
        offset = 0
        for group in graph.get_all_groups(
            ignored_layers=layers[-1:], root_module_types=REGULARIZED_TYPES
        ):
            root = group[0].dep.target.module
            scale = scale_for(names[root], False)
            if scale is None or scale == 0:
                continue
            n_units = graph.get_out_channels(root)
            seen: set[tuple[int, str, int]] = set()
            for item in group.items:
                module, handler = item.dep.target.module, item.dep.handler
                if isinstance(module, REGULARIZED_TYPES):
                    if graph.is_out_channel_pruning_fn(handler):
                        kind = "out"
                    elif graph.is_in_channel_pruning_fn(handler):
                        kind = "in"
                    else:
                        continue
                elif include_batchnorm and isinstance(module, _BATCHNORM) and module.affine:
                    kind = "bn"
                else:
                    continue
                key = (id(module), kind)
                _, index, gid = collected.setdefault(key, (module, [], []))
                for idx, root_idx in zip(item.idxs, item.root_idxs, strict=True):
                    if (id(module), kind, int(idx)) in seen:
                        continue
                    seen.add((id(module), kind, int(idx)))
                    index.append(int(idx))
                    gid.append(offset + int(root_idx))
            self.roots.append((names[root], offset, n_units))
            scales += [float(scale)] * n_units
            offset += n_units
        self.num_groups = offset
        self.entries = [
            _Slices(module, kind, torch.tensor(index, dtype=torch.long), torch.tensor(gid))
            for (_, kind), (module, index, gid) in collected.items()
        ]
        device = next(model.parameters()).device
        sizes = torch.zeros(offset, dtype=torch.float64)
        for entry in self.entries:
            entry.index, entry.group = entry.index.to(device), entry.group.to(device)
            sizes.index_add_(
                0,
                entry.group.cpu(),
                torch.full((len(entry.index),), float(_slice_size(entry)), dtype=torch.float64),
            )
        self.sizes = sizes.float().to(device)  # |g|: number of weights in each group
        self.scales = torch.tensor(scales, dtype=torch.float32, device=device)

    def squared_norms(self) -> torch.Tensor:
        """||w_g||^2 of every group, shape (num_groups,); differentiable."""
        if not self.entries:
            return torch.zeros(0, device=self.sizes.device)
        total = None
        squares: dict[int, torch.Tensor] = {}
        for entry in self.entries:
            sq = _squared_slices(entry, squares)
            if total is None:
                total = sq.new_zeros(self.num_groups)
            total = total.index_add(0, entry.group, sq.index_select(0, entry.index))
        return total

    def norms(self) -> torch.Tensor:
        """||w_g||, with a zero (sub)gradient at an all-zero group instead of sqrt's inf."""
        sq = self.squared_norms()
        positive = sq > 0
        return torch.where(positive, torch.where(positive, sq, 1.0).sqrt(), 0.0)

    @torch.no_grad()
    def scale_(self, factors: torch.Tensor) -> None:
        """Multiply every slice of group g by factors[g], in place."""
        for entry in self.entries:
            target = [entry.module.weight]
            if entry.kind == "bn" and entry.module.bias is not None:
                target.append(entry.module.bias)
            dim = 1 if entry.kind == "in" else 0
            full = torch.ones(target[0].shape[dim], device=factors.device, dtype=factors.dtype)
            full[entry.index] = factors[entry.group]
            shape = [1] * target[0].dim()
            shape[dim] = -1
            for tensor in target:
                tensor.mul_(full.reshape(shape).to(tensor.dtype))
