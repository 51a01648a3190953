"""Unit groups: what a prunable unit is, defined once for the coupled regularizers and the pruner.

A *unit* is one out-channel of a Conv2d or one out-feature of a Linear layer (`LAYER_TYPES`),
the *root*, in any such layer but the network's output layer (the last one in module order,
never pruned). Its *unit group* is every slice that torch-pruning's DependencyGraph couples to
it, i.e. everything that goes when the unit is removed:

    'out'  incoming: the rows W_p[u, ...] of every producer p, the root and its coupled
           producers (every conv writing into the same residual stream: a stage's channels
           go together or not at all);
    'in'   outgoing: the input columns W_q[:, idx(u), ...] of every consumer q, through
           Flatten (one channel owns its H x W columns), pooling, residual adds, ...;
    'bn'   the weight and bias entries gamma_b[u], beta_b[u] of every affine BatchNorm.

Biases are never part of a group (removal folds them into the consumers). The units of one
layer are disjoint, those of neighbouring layers are not: W_q[v, idx(u)] belongs to unit v of
q (a row) and to unit u of its producer (a column). All units of one root layer form one
`UnitGroup` (torch-pruning's full-index group of that layer, from
`DependencyGraph.get_all_groups`); `unit_groups(model, example)` lists them once, and the same
list is what `structure: coupled` regularizes (`regularizers/_coupled.py`) and what
`remove.prune_units` scores and removes.

Norms of unit u (`SliceIndex` computes them, batched over groups):
    in_sq(u)  = sum_p ||W_p[u, ...]||^2                  (+ ||K_p[u]||^2, pruning only)
    out_sq(u) = sum_q ||W_q[:, idx(u), ...]||^2
    bn_sq(u)  = sum_b gamma_b[u]^2 + beta_b[u]^2
  regularized (coupled group lasso):   ||w_u|| = sqrt(in_sq + out_sq [+ bn_sq])
      (bn_sq only with `include_batchnorm`; 0, with a zero subgradient, for an all-zero unit)
  pruning (`UnitGroups.unit_norms`):   in_norm = sqrt(in_sq + sum_p ||K_p[u]||^2),
      out_norm = sqrt(out_sq),   score(u) = min(in_norm, out_norm)
K_p is the fold kernel of a producer that is already a `FoldedConv2d` (else 0): its border
term makes the unit's output vary over positions, so the unit is not dead while K_p[u] != 0.
A unit whose regularized norm is zero therefore has score zero (it is removed at threshold 0)
unless a FoldedConv2d producer still holds a border term for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch_pruning as tp
from torch import nn

from sparsenet.pruning import channel_select, folded
from sparsenet.pruning.folded import FoldedConv2d

LAYER_TYPES = (nn.Conv2d, nn.Linear)  # the layers that have units (and are regularized)
CHANNEL_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)  # statistics across units
KINDS = ("out", "in", "bn")
_BATCHNORM = nn.modules.batchnorm._BatchNorm


def output_layers(model: nn.Module) -> list[nn.Module]:
    """[the Conv/Linear layer whose output is the network output] (never a root), or []."""
    layers = [m for m in model.modules() if isinstance(m, LAYER_TYPES)]
    return layers[-1:]


def customized_pruners() -> dict[type, tp.pruner.function.BasePruningFunc]:
    """sparsenet's own layers and their torch-pruning pruners (FoldedConv2d, ChannelSelect)."""
    return {**folded.customized_pruners(), **channel_select.customized_pruners()}


def build_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's DependencyGraph of `model` (traced in eval mode, the model's mode is
    restored), with the pruners of sparsenet's layers registered and the edges through
    ChannelSelect modules added."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(
                model,
                example_inputs=example,
                verbose=False,
                customized_pruners=customized_pruners(),
            )
    finally:
        model.train(was_training)
    channel_select.link(graph)
    return graph


def is_grouped_conv(module: nn.Module) -> bool:
    """A Conv2d with 1 < groups that is not depthwise (groups = in = out channels)."""
    if not isinstance(module, nn.Conv2d) or module.groups == 1:
        return False
    return not (module.groups == module.in_channels == module.out_channels)


def exclusion(module: nn.Module) -> str | None:
    """Why a unit that touches `module` cannot be removed exactly (None: it can); see
    `EXCLUDED` in the module docstring."""
    if is_grouped_conv(module):
        return "feeds or is a grouped conv (its groups must stay equally wide)"
    if isinstance(module, CHANNEL_NORMS):
        return (
            f"passes a {type(module).__name__} (it normalises over channels: removing one "
            "changes the others)"
        )
    return None


@dataclass
class Slices:
    """The slices of one module of one kind in one unit group: entry `index[k]` of the module
    (a row for 'out' and 'bn', a column for 'in') belongs to unit `unit[k]` of the group."""

    module: nn.Module
    name: str
    kind: str
    index: torch.Tensor
    unit: torch.Tensor


def _width(module: nn.Module, kind: str) -> int:
    """Parameters per index: a row's or a column's weights, or gamma (and beta)."""
    if kind == "bn":
        return 1 + int(module.bias is not None)
    return module.weight.numel() // module.weight.shape[0 if kind == "out" else 1]


@dataclass
class UnitGroup:
    """The `size` units of one root layer with all their slices (see the module docstring).
    `criteria.UnitGroup` is its scored view for the selection rules."""

    name: str
    module: nn.Module
    handler: Callable  # torch-pruning's out-channel pruning function of the root
    size: int
    slices: list[Slices]

    def counts(self) -> list[tuple[str, str, torch.Tensor]]:
        """(layer, 'out' | 'in', how many of the layer's out- or in-units each unit owns)."""
        return [
            (s.name, s.kind, torch.bincount(s.unit, minlength=self.size))
            for s in self.slices
            if s.kind != "bn"
        ]


class UnitNorms(NamedTuple):
    incoming: torch.Tensor  # in_norm per unit (with the fold-kernel term)
    outgoing: torch.Tensor  # out_norm per unit

    @property
    def score(self) -> torch.Tensor:
        """min(in_norm, out_norm): the pruning criteria's per-unit score."""
        return torch.minimum(self.incoming, self.outgoing)


class UnitGroups:
    """Every unit group of `model` (one per hidden Conv2d/Linear root, torch-pruning's order)
    and the graph they come from. Rebuild after the model's shape changes."""

    def __init__(self, model: nn.Module, example: torch.Tensor) -> None:
        self.graph = build_graph(model, example)
        names = {m: n for n, m in model.named_modules()}
        self.groups: list[UnitGroup] = []
        self.excluded: dict[str, str] = {}  # root layer -> why its units are not units
        for group in self.graph.get_all_groups(
            ignored_layers=output_layers(model), root_module_types=LAYER_TYPES
        ):
            root = group[0].dep
            reasons = [exclusion(item.dep.target.module) for item in group.items]
            reasons = [r for r in reasons if r is not None]
            if reasons:
                self.excluded[names[root.target.module]] = reasons[0]
                continue
            collected: dict[tuple[int, str], tuple[nn.Module, list[int], list[int]]] = {}
            seen: set[tuple[int, str, int]] = set()
            for item in group.items:
                kind = self.kind(item.dep)
                if kind is None:
                    continue
                module = item.dep.target.module
                _, index, unit = collected.setdefault((id(module), kind), (module, [], []))
                for idx, root_idx in zip(item.idxs, item.root_idxs, strict=True):
                    if (id(module), kind, int(idx)) not in seen:
                        seen.add((id(module), kind, int(idx)))
                        index.append(int(idx))
                        unit.append(int(root_idx))
            slices = [
                Slices(module, names[module], kind, _long(index), _long(unit))
                for (_, kind), (module, index, unit) in collected.items()
            ]
            size = self.graph.get_out_channels(root.target.module)
            self.groups.append(
                UnitGroup(names[root.target.module], root.target.module, root.handler, size, slices)
            )

    def __iter__(self) -> Iterator[UnitGroup]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> UnitGroup:
        return self.groups[i]

    def kind(self, dep) -> str | None:
        """The slice kind a torch-pruning dependency prunes: 'out' (Conv/Linear rows), 'in'
        (their columns), 'bn' (affine BatchNorm entries), or None (not part of a unit)."""
        module = dep.target.module
        if isinstance(module, LAYER_TYPES):
            if self.graph.is_out_channel_pruning_fn(dep.handler):
                return "out"
            if self.graph.is_in_channel_pruning_fn(dep.handler):
                return "in"
            return None
        if isinstance(module, _BATCHNORM) and module.affine:
            return "bn"
        return None

    def pruning_group(self, group: UnitGroup, units: Sequence[int]):
        """torch-pruning's group removing `units` of `group` (in the root's current numbering)."""
        return self.graph.get_pruning_group(group.module, group.handler, list(units))

    @torch.no_grad()
    def unit_norms(self) -> list[UnitNorms]:
        """(in_norm, out_norm) per unit of every group, float32 on the CPU."""
        index = SliceIndex(self.groups, ("out", "in"))
        incoming = index.squared_norms(("out",), fold_kernel=True).float().cpu().sqrt()
        outgoing = index.squared_norms(("in",)).float().cpu().sqrt()
        pairs = zip(index.split(incoming), index.split(outgoing), strict=True)
        return [UnitNorms(*pair) for pair in pairs]


def _long(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def unit_groups(model: nn.Module, example: torch.Tensor) -> UnitGroups:
    """The unit groups of `model`; `example` is an input batch for tracing (one sample)."""
    return UnitGroups(model, example)


@dataclass
class _Entry:
    """All selected slices of one module of one kind: `index[k]` belongs to unit `unit[k]`
    of the flattened unit numbering."""

    module: nn.Module
    kind: str
    index: torch.Tensor
    unit: torch.Tensor


def _sums(entry: _Entry, elementwise, cache: dict[int, torch.Tensor]) -> torch.Tensor:
    """sum of elementwise(parameter) over each slice of the entry's module along its dimension
    (full length): BatchNorm weight + bias entries, a weight's rows ('out') or columns ('in').
    `cache` holds each weight's elementwise values within one call (a Linear layer is both a
    root, by rows, and a consumer, by columns)."""
    module = entry.module
    if entry.kind == "bn":
        values = elementwise(module.weight)
        return values + elementwise(module.bias) if module.bias is not None else values
    w = module.weight
    values = cache.get(id(w))
    if values is None:
        values = cache[id(w)] = elementwise(w)
    if entry.kind == "in":
        return values.sum((0, *range(2, values.dim())))
    return values.sum(tuple(range(1, values.dim())))


class SliceIndex:
    """The slices of `kinds` of some unit groups as index tensors, for batched norms: unit u of
    `groups[i]` is entry `offsets[i] + u` of every result. Built once per model shape; each
    norm is then one reduction per (module, kind) plus a gather and an `index_add`."""

    def __init__(
        self,
        groups: Sequence[UnitGroup],
        kinds: Sequence[str] = KINDS,
        device: torch.device | None = None,
    ) -> None:
        self.groups = list(groups)
        self.kinds = tuple(kinds)
        self.offsets: list[int] = []
        collected: dict[tuple[int, str], tuple[nn.Module, list, list]] = {}
        offset = 0
        for group in self.groups:
            self.offsets.append(offset)
            for s in group.slices:
                if s.kind in self.kinds:
                    _, index, unit = collected.setdefault(
                        (id(s.module), s.kind), (s.module, [], [])
                    )
                    index.append(s.index)
                    unit.append(s.unit + offset)
            offset += group.size
        self.num_units = offset
        self.entries = [
            _Entry(module, kind, torch.cat(index), torch.cat(unit))
            for (_, kind), (module, index, unit) in collected.items()
        ]
        if device is None:
            device = self.entries[0].module.weight.device if self.entries else torch.device("cpu")
        sizes = torch.zeros(offset, dtype=torch.float64)
        for entry in self.entries:
            width = float(_width(entry.module, entry.kind))
            sizes.index_add_(
                0, entry.unit, torch.full((len(entry.index),), width, dtype=torch.float64)
            )
            entry.index, entry.unit = entry.index.to(device), entry.unit.to(device)
        self.sizes = sizes.float().to(device)  # |g|: number of parameters of each unit
        self.device = device

    def split(self, values: torch.Tensor) -> list[torch.Tensor]:
        """A per-unit tensor cut into one piece per group."""
        return list(values.split([g.size for g in self.groups]))

    def squared_norms(
        self, kinds: Sequence[str] | None = None, *, fold_kernel: bool = False
    ) -> torch.Tensor:
        """sum of ||slice||^2 over each unit's slices of `kinds` (default: all of this index),
        shape (num_units,); differentiable. `fold_kernel` adds ||K_p[u]||^2 of FoldedConv2d
        producers to 'out' (the pruning score's incoming term)."""

        def with_fold(entry: _Entry, rows: torch.Tensor) -> torch.Tensor:
            if fold_kernel and entry.kind == "out" and isinstance(entry.module, FoldedConv2d):
                k = entry.module.fold_kernel.detach()
                return rows + k.square().sum(tuple(range(1, k.dim()))).to(rows)
            return rows

        return self._reduce(torch.square, kinds, with_fold)

    def sums(self, elementwise, kinds: Sequence[str] | None = None) -> torch.Tensor:
        """sum of elementwise(parameter) over each unit's slices of `kinds` (default: all of
        this index), shape (num_units,): with torch.square the squared norms; with
        `lambda p: p * p.grad` the inner product <w_u, dR/dw_u> of each unit's slices."""
        return self._reduce(elementwise, kinds)

    def _reduce(self, elementwise, kinds, adjust=None) -> torch.Tensor:
        """`sums`, with `adjust(entry, per-index values)` applied to each entry's values."""
        kinds = self.kinds if kinds is None else tuple(kinds)
        total = None
        cache: dict[int, torch.Tensor] = {}
        for entry in self.entries:
            if entry.kind not in kinds:
                continue
            values = _sums(entry, elementwise, cache)
            if adjust is not None:
                values = adjust(entry, values)
            if total is None:
                total = values.new_zeros(self.num_units)
            total = total.index_add(0, entry.unit, values.index_select(0, entry.index))
        return torch.zeros(self.num_units, device=self.device) if total is None else total

    def norms(self) -> torch.Tensor:
        """||w_u|| over all kinds of the index, with a zero (sub)gradient at an all-zero unit
        instead of sqrt's inf."""
        sq = self.squared_norms()
        positive = sq > 0
        return torch.where(positive, torch.where(positive, sq, 1.0).sqrt(), 0.0)

    @torch.no_grad()
    def scale_(self, factors: torch.Tensor) -> None:
        """Multiply every slice (of this index's kinds) of unit u by factors[u], in place."""
        for entry in self.entries:
            target = [entry.module.weight]
            if entry.kind == "bn" and entry.module.bias is not None:
                target.append(entry.module.bias)
            dim = 1 if entry.kind == "in" else 0
            full = torch.ones(target[0].shape[dim], device=factors.device, dtype=factors.dtype)
            full[entry.index] = factors[entry.unit]
            shape = [1] * target[0].dim()
            shape[dim] = -1
            for tensor in target:
                tensor.mul_(full.reshape(shape).to(tensor.dtype))
