"""Marginal costs of units: what the network saves (MACs, parameters, latency) when one unit goes.

MorphNet (Gordon et al., CVPR 2018) weights each group's penalty by the resources its unit
costs, so a regularizer removes expensive units first. This module computes those costs on
the unit groups pruning removes (`groups.py`): a unit is its rows in every producer, its
columns in every consumer and its BatchNorm entries, so the cost of a unit is the cost of
exactly what `prune_units` would take away. It lives beside the pruner, not the regularizers,
because a cost is a property of a unit group and of the network's shapes, which budget-aware
pruning needs as much as the cost-aware regularizers (docs/methods.md#cost-aware-weights).

Every weight of a Conv2d/Linear layer l costs omega_l:

    macs      P_l, the positions it is applied at per sample (H_out * W_out; 1 for a Linear):
              `measure.layer_positions`, the definition the reported MACs use
    params    1
    latency   T_l / |W_l|: the layer's measured forward time (ms, batch `LATENCY_BATCH`, the run's
              device and input shape, at bind) spread evenly over its weights at bind, i.e.
              latency taken proportional to the layer's MACs [choice]

A weight joins a row (output unit r) and a column (input unit c). A unit u is *alive* when its
pruning score min(in_norm, out_norm) (`UnitGroups`) is above `ALIVE_THRESHOLD`; rows and
columns that belong to no unit (network inputs, the output layer, grouped convs) are always
alive. The marginal cost of unit u counts every weight in u's rows and columns whose other
end is alive:

    cost(u) = sum_{rows r of u in layer l} omega_l * K_l * alive_in_l(r)
            + sum_{columns c of u in layer q} omega_q * K_q * alive_out_q(c)  (+ extra(u))

omega_l the per-weight cost above, K_l = kh * kw (1 for a Linear), alive_in_l(r) the alive input
channels of row r's group (all C_in / groups inputs for a plain conv), alive_out_q(c) the alive
rows of the consumer q that read column c (a flattened channel owns H * W columns of a Linear,
each counted). For `params`, extra(u) adds u's biases and BatchNorm weight and bias; for
`macs` and `latency` it is 0 (bias adds and BatchNorm are not MACs: `measure.layer_macs`).
For an alive unit this is exactly what removing it saves given the other alive units (the
reported `macs`/`params` drop by it); for a dead unit it is what reviving it would cost, so a
dead group keeps a penalty that holds it at zero. A depthwise conv is part of its producer's
unit (an out-slice only), so no weight is counted twice.

Costs of the groups of each layer-wise structure (`structure(name, s)`, shaped like the group
norms with keepdim, ready to multiply a layer's group terms):

    out     each row: the marginal cost of the unit that owns it; a row of no unit (the output
            layer, a grouped conv) its own cost omega_l * K_l * alive_in_l(r) (+ its bias)
    in      each column: the cost of the unit that produces it, divided among the columns of
            this layer that unit owns (a channel flattened into H * W Linear columns gives
            each 1 / (H * W)); a column of no unit (the network's input) its own cost
            omega_l * K_l * alive_out_l(c); grouped convs sum the channels one group position holds
    shape   each kernel position W[:, c, y, x]: omega_l * (alive rows), the MACs of its weights in
            the filters that stay (for the dense layer, the layer's cost / number of positions)
    layer   the layer's alive cost, sum over groups of omega_l * K_l * alive rows * alive inputs
            (+ the alive rows' biases)
    weight  each weight: the cost of its row (its unit), for elementwise penalties (l1, l2)

`refresh()` recomputes the alive units and every cost from the current weights; the
regularizers call it every `REFRESH_STEPS` steps, so costs fall as widths shrink. The
constructor computes the costs of the full-width network (every unit alive), which the
regularizers normalise by.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.distributed as dist
from torch import nn

from sparsenet.measure import layer_positions
from sparsenet.pruning.groups import LAYER_TYPES, SliceIndex, unit_groups

COSTS = ("macs", "params", "latency")
STRUCTURES = ("out", "in", "shape", "layer", "weight")
# The prune stage's default threshold (`prune.threshold`), the absolute floor of every prune
# criterion: a unit at or below it is gone at the next prune stage, so it no longer counts in
# its neighbours' costs. The regularizer is built apart from the prune config, hence a constant.
ALIVE_THRESHOLD = 1e-3
# Steps between two refreshes of the alive units and costs. 1: the costs are a function of the
# current weights alone, so a resumed run (bound again at an epoch boundary) and DDP replicas
# compute exactly the costs of an uninterrupted single process. The refresh is one pass over
# the weights, as the penalty is (LeNet-5, 1 CPU thread: 2.5 ms on an 80 ms step); a larger K
# saves it, at the price of a lag of up to K steps and of costs refreshed at other steps after
# a resume.
REFRESH_STEPS = 1
# Latency is measured as a run reports it (`report.latency_batch_size` and `latency_repeats`
# defaults, measure.measure_latency_ms's warm-up), so the cost model follows that figure.
LATENCY_BATCH = 128
LATENCY_WARMUP = 3
LATENCY_REPEATS = 10


@torch.no_grad()
def layer_latency_ms(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int = LATENCY_BATCH,
    *,
    warmup: int = LATENCY_WARMUP,
    repeats: int = LATENCY_REPEATS,
) -> dict[str, float]:
    """Median forward time (ms) of each Conv2d/Linear layer inside a forward pass of a batch
    of `batch_size` random inputs, in eval mode, on the model's device: the time between the
    layer's forward pre-hook and hook (CUDA synchronised in each). Under torch.distributed every
    process takes rank 0's figures, so all replicas weight the penalty alike."""
    device = next(model.parameters()).device
    names = {m: n for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)}
    elapsed = dict.fromkeys(names.values(), 0.0)
    started: dict[str, float] = {}

    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def before(module, args):
        started[names[module]] = now()

    def after(module, args, output):
        elapsed[names[module]] += now() - started[names[module]]

    handles = [m.register_forward_pre_hook(before) for m in names]
    handles += [m.register_forward_hook(after) for m in names]
    samples: dict[str, list[float]] = {name: [] for name in elapsed}
    was_training = model.training
    model.eval()
    try:
        x = torch.randn(batch_size, *input_shape, device=device)
        for i in range(warmup + repeats):
            for name in elapsed:
                elapsed[name] = 0.0
            model(x)
            if i >= warmup:
                for name, seconds in elapsed.items():
                    samples[name].append(seconds * 1000)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    times = torch.tensor([statistics.median(s) for s in samples.values()], device=device)
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(times, src=0)
    return dict(zip(samples, times.tolist(), strict=True))


def _by_owner(owner: torch.Tensor, per_unit: torch.Tensor, unowned) -> torch.Tensor:
    """per_unit[owner] where an entry has an owning unit, `unowned` where it has none (-1)."""
    if not per_unit.numel():  # a network without units (a single layer): nothing is owned
        return torch.as_tensor(unowned, device=owner.device).expand(owner.shape).clone()
    return torch.where(owner >= 0, per_unit[owner.clamp_min(0)], unowned)


class UnitCosts:
    """Marginal costs (module docstring) of the units of `model` for `cost` (macs | params |
    latency), from its unit groups and the input shape of `example` (one sample). Holds the
    alive units and, after each `refresh`, `units` (one cost per unit, the unit groups' order)
    and the per-layer costs of every structure (`structure`)."""

    def __init__(
        self,
        model: nn.Module,
        example: torch.Tensor,
        cost: str,
        threshold: float = ALIVE_THRESHOLD,
    ) -> None:
        if cost not in COSTS:
            raise ValueError(f"cost must be one of {', '.join(COSTS)}, not {cost!r}")
        self.cost = cost
        self.threshold = threshold
        groups = unit_groups(model, example)
        device = next(model.parameters()).device
        self.index = SliceIndex(groups.groups, ("out", "in"), device)
        self.num_units = self.index.num_units
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)}
        self.per_weight = self._per_weight(model, tuple(example.shape[1:]), cost)
        self.first = {g.name: (o, g.size) for g, o in zip(groups, self.index.offsets, strict=True)}
        rows = {
            n: torch.full((m.weight.shape[0],), -1, dtype=torch.long)
            for n, m in self.layers.items()
        }
        cols = {
            n: torch.full((_in_channels(m),), -1, dtype=torch.long) for n, m in self.layers.items()
        }
        extra = torch.zeros(self.num_units, dtype=torch.float64)
        for group, offset in zip(groups, self.index.offsets, strict=True):
            for s in group.slices:
                owner = s.unit + offset
                if s.kind == "out":
                    rows[s.name][s.index] = owner
                elif s.kind == "in":
                    cols[s.name][s.index] = owner
                if cost == "params":  # a unit's biases and BatchNorm affine entries go with it
                    has_bias = getattr(s.module, "bias", None) is not None
                    per_entry = {"out": float(has_bias), "bn": 1.0 + has_bias}.get(s.kind, 0.0)
                    extra.index_add_(0, owner, torch.full((len(owner),), per_entry).double())
        self.row_owner = {n: t.to(device) for n, t in rows.items()}
        self.col_owner = {n: t.to(device) for n, t in cols.items()}
        self.extra = extra.float().to(device)
        counts = {
            n: torch.bincount(t[t >= 0], minlength=self.num_units).to(device)
            for n, t in cols.items()
        }
        # how many of this layer's columns the column's owner holds (1 where none owns it)
        self.col_share = {n: _by_owner(t, counts[n], 1).float() for n, t in self.col_owner.items()}
        self.refresh(torch.ones(self.num_units, dtype=torch.bool, device=device))

    def _per_weight(self, model: nn.Module, input_shape: tuple[int, ...], cost: str):
        if cost == "macs":
            return {n: float(p) for n, p in layer_positions(model, input_shape).items()}
        if cost == "params":
            return dict.fromkeys(self.layers, 1.0)
        times = layer_latency_ms(model, input_shape)
        return {n: times[n] / m.weight.numel() for n, m in self.layers.items()}

    @torch.no_grad()
    def scores(self) -> torch.Tensor:
        """Each unit's pruning score min(in_norm, out_norm) (`UnitNorms.score`), one per unit."""
        incoming = self.index.squared_norms(("out",), fold_kernel=True).float().sqrt()
        outgoing = self.index.squared_norms(("in",)).float().sqrt()
        return torch.minimum(incoming, outgoing)

    @torch.no_grad()
    def relative_scores(self, scores: torch.Tensor | None = None) -> torch.Tensor:
        """s(u) / max_v s(v) over the units v of u's group (0 in an all-zero group): the
        ordering key of the `ratio` prune criterion with `scope: global`."""
        scores = self.scores() if scores is None else scores
        relative = torch.zeros_like(scores)
        for first, size in self.first.values():
            part = scores[first : first + size]
            top = part.max() if size else part.new_zeros(())
            relative[first : first + size] = torch.where(top > 0, part / top.clamp_min(1e-30), 0.0)
        return relative

    @torch.no_grad()
    def alive_units(self) -> torch.Tensor:
        """Units whose pruning score min(in_norm, out_norm) is above the threshold (bool)."""
        return self.scores() > self.threshold

    def total(self) -> float:
        """The cost of the network with only the alive units of the last `refresh`: sum over
        Conv2d/Linear layers of omega_l * K_l * (alive rows x alive inputs, per conv group).
        Weights only: for `params`, biases and BatchNorm entries (about 1% of a CNN's
        parameters) are not counted, as the prune stage's ledger does not count them."""
        return float(sum(float(entry[3]) for entry in self._layer.values()))

    @torch.no_grad()
    def refresh(self, alive: torch.Tensor | None = None) -> None:
        """Recompute every cost for the units alive in the current weights, or for `alive`
        (a bool per unit; the constructor's: all, the costs of the full-width network)."""
        self.alive = self.alive_units() if alive is None else alive
        units = self.extra.clone()
        layer = {}
        for name, module in self.layers.items():
            rows = _by_owner(self.row_owner[name], self.alive, True).float()
            cols = _by_owner(self.col_owner[name], self.alive, True).float()
            groups = getattr(module, "groups", 1)
            rows_alive = rows.view(groups, -1).sum(1)  # per conv group
            cols_alive = cols.view(groups, -1).sum(1)
            unit = self.per_weight[name] * module.weight[0, 0].numel()  # omega_l * K_l
            row_cost = unit * cols_alive.repeat_interleave(len(rows) // groups)
            col_cost = unit * rows_alive.repeat_interleave(len(cols) // groups)
            layer[name] = (rows, row_cost, col_cost, unit * (rows_alive * cols_alive).sum())
            for owner, cost in ((self.row_owner[name], row_cost), (self.col_owner[name], col_cost)):
                owned = owner >= 0
                units.index_add_(0, owner[owned], cost[owned])
        self.units = units
        self._layer = layer

    def _bias(self, name: str) -> float:
        return float(self.cost == "params" and self.layers[name].bias is not None)

    def group(self, root: str) -> torch.Tensor:
        """The costs of the units of the unit group whose root layer is `root`."""
        first, size = self.first[root]
        return self.units[first : first + size]

    def structure(self, name: str, structure: str) -> torch.Tensor:
        """The raw (unnormalised) cost of every group of `structure` in layer `name`, shaped
        like that layer's group norms with keepdim (module docstring)."""
        module = self.layers[name]
        weight = module.weight
        rows, row_cost, col_cost, layer_cost = self._layer[name]
        ones = [1] * (weight.dim() - 2)
        if structure in ("out", "weight"):
            owner = self.row_owner[name]
            own = row_cost + self._bias(name)
            return _by_owner(owner, self.units, own).view(-1, 1, *ones)
        if structure == "in":
            owner = self.col_owner[name]
            costs = _by_owner(owner, self.units, col_cost)
            costs = (costs / self.col_share[name]).view(-1, weight.shape[1]).sum(0)
            return costs.view(1, -1, *ones)
        if structure == "shape":
            value = self.per_weight[name] * rows.sum()
            return value.expand(1, *weight.shape[1:]).clone()
        if structure == "layer":
            value = layer_cost + self._bias(name) * rows.sum()
            return value.view([1] * weight.dim())
        raise ValueError(f"structure must be one of {', '.join(STRUCTURES)}, not {structure!r}")


def _in_channels(module: nn.Module) -> int:
    return module.in_channels if isinstance(module, nn.Conv2d) else module.in_features
