"""Physical removal of units, with their contribution folded into the consumers.

The units and their score min(in_norm, out_norm) are the unit groups of `groups.py` (the one
definition, shared with the `coupled` regularizers): a hidden Conv2d/Linear out-channel with
its BatchNorm entries, its consumers' input columns and its coupled producers; the network's
output layer is never pruned. Which units go is decided by `criteria.select_units`
(threshold, relative or ratio).

Folding (why the function does not change): a unit whose incoming weights are zero emits a
constant, act(bias) or act(BatchNorm shift), in eval mode. Each consumer q receives the
removed inputs' mean value x̄_r (calibration data, eval mode, mean over samples and positions)
    Linear: b_q += W_q[:, R] x̄_R              (exact for constant inputs)
    Conv2d: b_q += sum(K), K = sum_r x̄_r W_q[:, r]   (the interior value)
and with `fold="exact"` a zero-padded conv also becomes a `FoldedConv2d` that adds the
border term conv2d(ones, K) - sum(K) (see `folded.py`), so the pruned network equals the
masked dense one everywhere, at any input size. With `fold="bias"` only the bias is shifted
and `PruneResult.fold_error` gives the largest border deviation per consumer at the
calibration size. Units whose outgoing weights are zero contribute K = 0: removing them is
exact either way. All means come from one pass of the unpruned model, so the order in which
groups are removed does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

# A module import, not `from sparsenet.measure import ...`: measure takes LAYER_TYPES from this
# package, so this module may load while measure is still being initialized.
from sparsenet import measure
from sparsenet.pruning import criteria
from sparsenet.pruning.cost import layer_latency_ms
from sparsenet.pruning.criteria import LayerCost, PruneSettings, select_units
from sparsenet.pruning.folded import FoldedConv2d, needs_border_correction
from sparsenet.pruning.groups import LAYER_TYPES, UnitNorms, unit_groups

CALIBRATION_CHUNK = 64  # samples per forward pass when measuring mean activations


def unit_norms(model: nn.Module, example: torch.Tensor) -> dict[str, UnitNorms]:
    """{root layer name: (in_norm, out_norm)} for every unit group (see `groups.py`)."""
    groups = unit_groups(model, example)
    return {g.name: norms for g, norms in zip(groups, groups.unit_norms(), strict=True)}


def _layer_costs(
    model: nn.Module, example: torch.Tensor, target: str = "macs"
) -> dict[str, LayerCost]:
    """Each Conv2d/Linear layer's cost as per_pair * n_out * n_in: its MACs, its weights
    (`params`) or its measured latency (`latency`, `cost.layer_latency_ms` spread over its
    weights, the cost model of cost.py)."""
    shape = tuple(example.shape[1:])
    if target == "macs":
        totals = measure.layer_macs(model, shape)
    elif target == "params":
        totals = {
            n: m.weight.numel() for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)
        }
    else:
        totals = layer_latency_ms(model, shape)
    costs = {}
    for name, module in model.named_modules():
        if isinstance(module, LAYER_TYPES) and totals.get(name):
            n_out, n_in = module.weight.shape[0], module.weight.shape[1]
            if isinstance(module, nn.Conv2d):
                n_in *= module.groups
            costs[name] = LayerCost(totals[name] / (n_out * n_in), n_out, n_in)
    return costs


@dataclass
class PruneResult:
    removed: dict[str, list[int]] = field(default_factory=dict)  # root layer -> removed units
    folded: list[str] = field(default_factory=list)  # convs given an exact border fold
    fold_error: dict[str, float] = field(default_factory=dict)  # fold=bias: max border deviation
    units_total: int = 0
    units_removed: int = 0
    macs_total: int = 0
    macs_removed: int = 0  # per sample, by the criteria's P * n_out * n_in model
    cut: float | None = None  # ratio criterion: ordering key of the last unit removed
    target_kept: float | None = None  # ratio on macs | params | latency: share of it left


@torch.no_grad()
def _mean_inputs(
    model: nn.Module, consumers: set[nn.Module], calibration: torch.Tensor
) -> tuple[dict[nn.Module, torch.Tensor], dict[nn.Module, tuple[int, int]]]:
    """Per consumer: mean of each input channel / feature over samples (and positions), in
    float64, and the spatial size of a conv's input."""
    sums: dict[nn.Module, torch.Tensor] = {}
    counts: dict[nn.Module, int] = {}
    sizes: dict[nn.Module, tuple[int, int]] = {}

    def hook(module, args):
        x = args[0].detach().double()
        if isinstance(module, nn.Conv2d):
            sizes[module] = (x.shape[-2], x.shape[-1])
            total, count = x.sum(dim=(0, 2, 3)), x.shape[0] * x.shape[2] * x.shape[3]
        else:
            x = x.reshape(-1, x.shape[-1])
            total, count = x.sum(0), x.shape[0]
        sums[module] = sums.get(module, 0) + total
        counts[module] = counts.get(module, 0) + count

    handles = [m.register_forward_pre_hook(hook) for m in consumers]
    try:
        for start in range(0, len(calibration), CALIBRATION_CHUNK):
            model(calibration[start : start + CALIBRATION_CHUNK])
    finally:
        for h in handles:
            h.remove()
    return {m: sums[m] / counts[m] for m in sums}, sizes


def _fold_kernel(conv: nn.Conv2d, idxs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """K[o, 0] = sum_r values[r] W[o, r] over the removed inputs r (per conv group)."""
    w = conv.weight.detach()
    n_out, per_group = w.shape[:2]
    outs_per_group = n_out // conv.groups
    kernel = torch.zeros(n_out, *w.shape[2:], dtype=torch.float64, device=w.device)
    idxs, values = idxs.to(w.device), values.to(w.device)
    for g in range(conv.groups):
        in_group = (idxs // per_group) == g
        if in_group.any():
            rows = slice(g * outs_per_group, (g + 1) * outs_per_group)
            columns = w[rows].index_select(1, idxs[in_group] % per_group).double()
            kernel[rows] += torch.einsum("oikl,i->okl", columns, values[in_group])
    return kernel.unsqueeze(1)


def _add_to_bias(layer: nn.Module, shift: torch.Tensor) -> None:
    if not torch.any(shift != 0):
        return
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(shift.shape[0]).to(layer.weight))
    layer.bias.data.add_(shift.to(layer.bias))


def _border(conv: nn.Conv2d, kernel: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    ones = torch.ones(1, 1, *size, dtype=kernel.dtype, device=kernel.device)
    full = F.conv2d(ones, kernel, None, conv.stride, conv.padding, conv.dilation)[0]
    return full - kernel.sum(dim=(1, 2, 3))[:, None, None]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


@torch.no_grad()
def prune_units(
    model: nn.Module,
    example: torch.Tensor,
    settings: PruneSettings | None = None,
    *,
    calibration: torch.Tensor | None = None,
) -> PruneResult:
    """Select units by `settings` (default: threshold 1e-3), fold them and remove them, in
    place. `example` is an input batch for tracing (one sample is enough); `calibration`
    (default: `example`) the data whose mean activations are folded into the consumers."""
    settings = settings or PruneSettings()
    was_training = model.training
    calibration = example if calibration is None else calibration
    groups = unit_groups(model, example)
    model.eval()
    names = {m: n for n, m in model.named_modules()}
    scored = [
        criteria.UnitGroup(g.name, norms.score, g.counts())
        for g, norms in zip(groups, groups.unit_norms(), strict=True)
    ]
    target_costs = None
    if settings.cost_target is not None:
        target_costs = _layer_costs(model, example, settings.cost_target)
    selection = select_units(scored, settings, _layer_costs(model, example), target_costs)
    result = PruneResult(
        units_total=selection.units_total,
        units_removed=selection.units_removed,
        macs_total=selection.macs_total,
        macs_removed=selection.macs_removed,
        cut=selection.cut,
        target_kept=selection.target_kept,
    )

    plans = [
        (group, sorted(dead.tolist()))
        for group, dead in zip(groups, selection.removed, strict=True)
        if dead.numel()
    ]
    consumers = {s.module for group, _ in plans for s in group.slices if s.kind == "in"}
    means, sizes = _mean_inputs(model, consumers, calibration)
    # Original input index of each current input of a consumer, and pending border kernels
    # (in the conv's current out-channel numbering) of convs that are not FoldedConv2d yet.
    original_in = {q: torch.arange(means[q].numel()) for q in consumers}
    pending: dict[nn.Module, torch.Tensor] = {}

    for unit_group, dead in plans:
        tp_group = groups.pruning_group(unit_group, dead)
        for item in tp_group.items:
            module, kind = item.dep.target.module, groups.kind(item.dep)
            idxs = torch.as_tensor(item.idxs, dtype=torch.long)
            if kind == "out" and module in pending:
                keep = torch.ones(pending[module].shape[0], dtype=torch.bool)
                keep[idxs] = False
                pending[module] = pending[module][keep]
            if kind != "in":
                continue
            values = means[module][original_in[module][idxs]]
            if isinstance(module, nn.Linear):
                w = module.weight.detach().double()
                _add_to_bias(module, w[:, idxs] @ values.to(w.device))
                continue
            kernel = _fold_kernel(module, idxs, values)
            _add_to_bias(module, kernel.sum(dim=(1, 2, 3)))
            if not needs_border_correction(module) or not torch.any(kernel != 0):
                continue
            if settings.fold == "bias":
                error = float(_border(module, kernel, sizes[module]).abs().max())
                name = names[module]
                result.fold_error[name] = max(result.fold_error.get(name, 0.0), error)
            elif isinstance(module, FoldedConv2d):
                module.fold_kernel.add_(kernel.to(module.fold_kernel))
            else:
                pending[module] = pending.get(module, 0) + kernel
        tp_group.prune()
        for item in tp_group.items:
            module = item.dep.target.module
            if groups.kind(item.dep) == "in" and module in original_in:
                keep = torch.ones(original_in[module].numel(), dtype=torch.bool)
                keep[torch.as_tensor(item.idxs, dtype=torch.long)] = False
                original_in[module] = original_in[module][keep]
        result.removed[unit_group.name] = dead

    for module, kernel in pending.items():
        _set_module(model, names[module], FoldedConv2d.from_conv(module, kernel))
    result.folded = sorted(names[m] for m in pending)
    model.train(was_training)
    return result


def prune_dead_units(
    model: nn.Module,
    example: torch.Tensor,
    threshold: float,
    *,
    calibration: torch.Tensor | None = None,
    min_units: int = 1,
    fold: str = "exact",
) -> PruneResult:
    """Remove every unit with min(in_norm, out_norm) <= threshold, in place (at least
    `min_units` per group stay, the ones with the largest norms). See `prune_units`."""
    settings = PruneSettings(
        criterion="threshold", threshold=threshold, min_units=min_units, fold=fold
    )
    return prune_units(model, example, settings, calibration=calibration)
