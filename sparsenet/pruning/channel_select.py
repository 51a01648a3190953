"""Channel routing that torch-pruning can follow: `ChannelSelect`, y[:, j] = x[:, index[j]].

A channel shuffle (ShuffleNet: view as (groups, C / groups), transpose, flatten) is a fixed
permutation of the channels, and splitting a tensor into halves (`chunk`) picks contiguous
ranges of them. torch-pruning's DependencyGraph cannot follow either once channels are
removed: it fails on the shuffle's 5-d view, and a `chunk(2)` written in `forward` keeps
cutting at the middle while the halves' widths change. Written as `ChannelSelect` modules
(each output reads one input channel, each input is read by at most one output of a module),
both become index lists that prune with the network:

    removing input channel i of a ChannelSelect removes the outputs j with index[j] = i and
    renumbers the rest; an input that no output reads is only renumbered away.

So a unit that runs through a shuffle keeps its identity: its consumers after the shuffle are
found through index[] (`link` gives the graph those edges: input i -> output inv[i], and
output j -> input index[j]), and the selection stays a pure routing of values (a constant
channel stays a constant channel, which the consumers fold as usual).

Graph mechanics (torch-pruning 1.6): a ChannelSelect node has distinct `prune_in_channels`
(input numbering; does the work) and `prune_out_channels` (output numbering; a no-op, the
same removal seen from the other side), so torch-pruning does not pass indices through it
unmapped; `link` adds the mapped edges between its two sides.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import _helpers
from torch_pruning.dependency.dependency import Dependency


class ChannelSelect(nn.Module):
    """y = x[:, index] (dim 1) for an input of `in_channels` channels; see the module docstring."""

    def __init__(self, index: Sequence[int] | torch.Tensor, in_channels: int) -> None:
        super().__init__()
        index = torch.as_tensor(index, dtype=torch.long).flatten()
        if index.numel() != index.unique().numel() or (
            index.numel() and (int(index.min()) < 0 or int(index.max()) >= in_channels)
        ):
            raise ValueError(f"index must be distinct channels in [0, {in_channels})")
        self.in_channels = int(in_channels)
        self.register_buffer("index", index.clone())

    @classmethod
    def shuffle(cls, channels: int, groups: int) -> ChannelSelect:
        """ShuffleNet's channel shuffle: output j * groups + g reads input g * (C/groups) + j."""
        per_group = channels // groups
        order = torch.arange(channels).reshape(groups, per_group).t().flatten()
        return cls(order, channels)

    @classmethod
    def span(cls, start: int, stop: int, in_channels: int) -> ChannelSelect:
        """Channels start..stop-1 (one piece of a `chunk`)."""
        return cls(torch.arange(start, stop), in_channels)

    @property
    def out_channels(self) -> int:
        return int(self.index.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.index)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"


class ChannelSelectPruner(tp.pruner.function.BasePruningFunc):
    """torch-pruning's pruner of a ChannelSelect (module docstring)."""

    def prune_in_channels(self, layer: ChannelSelect, idxs: Sequence[int]) -> ChannelSelect:
        removed = torch.zeros(layer.in_channels, dtype=torch.bool)
        removed[torch.as_tensor(list(idxs), dtype=torch.long)] = True
        shift = torch.cumsum(removed.long(), 0)  # removed inputs at or before each input
        index = layer.index.cpu()
        kept = index[~removed[index]]
        layer.index = (kept - shift[kept]).to(layer.index.device)
        layer.in_channels -= int(removed.sum())
        return layer

    def prune_out_channels(self, layer: ChannelSelect, idxs: Sequence[int]) -> ChannelSelect:
        return layer  # the same removal, done by prune_in_channels (module docstring)

    def get_out_channels(self, layer: ChannelSelect) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: ChannelSelect) -> int:
        return layer.in_channels


PRUNER = ChannelSelectPruner()


class _Through:
    """Index mapping across a ChannelSelect (read from its current index at call time), then
    the mappings torch-pruning keeps on the plain edge between the same two nodes (a concat's
    offsets, a split's ranges: they change as channels go, so they are looked up per call)."""

    def __init__(self, module: ChannelSelect, forward: bool, plain: Dependency) -> None:
        self.module, self.forward, self.plain = module, forward, plain

    def __call__(self, idxs):
        index = self.module.index.tolist()
        if self.forward:  # input numbering -> output numbering
            position = {channel: j for j, channel in enumerate(index)}
            pairs = [(position.get(i.idx), i.root_idx) for i in idxs]
        else:  # output numbering -> input numbering
            pairs = [(index[i.idx], i.root_idx) for i in idxs if i.idx < len(index)]
        mapped = [_helpers._HybridIndex(idx=j, root_idx=r) for j, r in pairs if j is not None]
        for mapping in self.plain.index_mapping:
            if mapping is not None:
                mapped = mapping(mapped)
        return mapped


def _plain_edge(node, target, handler) -> Dependency:
    for dep in node.dependencies:
        if dep.target is target and dep.handler == handler:
            return dep
    raise RuntimeError(f"no edge {node.name} -> {target.name} in the dependency graph")


def link(graph: tp.DependencyGraph) -> None:
    """Add the edges through every ChannelSelect of a built graph (module docstring)."""
    for module, node in list(graph.module2node.items()):
        if not isinstance(module, ChannelSelect):
            continue
        edges = [(n, True) for n in node.outputs] + [(n, False) for n in node.inputs]
        for other, forward in edges:
            pruner = graph.get_pruner_of_module(other.module)
            handler = pruner.prune_in_channels if forward else pruner.prune_out_channels
            plain = _plain_edge(node, other, handler)
            trigger = PRUNER.prune_in_channels if forward else PRUNER.prune_out_channels
            dep = Dependency(trigger, handler, source=node, target=other)
            dep.index_mapping[0] = _Through(module, forward, plain)
            node.dependencies.append(dep)


def customized_pruners() -> dict[type, tp.pruner.function.BasePruningFunc]:
    return {ChannelSelect: PRUNER}
