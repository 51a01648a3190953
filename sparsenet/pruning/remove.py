"""Physical removal of dead units, with their constant contribution folded into consumers.

A *unit* is one out-channel (Conv2d) or out-feature (Linear) of a hidden layer, together with
everything torch-pruning's DependencyGraph couples to it: BatchNorm entries, the consumers'
input columns (through Flatten, residual adds, ...), and coupled producers. The network's
output layer is never pruned.

Per unit u, over the full coupled group:
    in_norm(u)  = sqrt(sum over producers p of ||W_p[u, ...]||^2)      (incoming weights)
    out_norm(u) = sqrt(sum over consumers q of ||W_q[:, idx(u), ...]||^2) (outgoing weights)
u is dead when min(in_norm, out_norm) <= threshold: either nothing reaches it (its output is a
constant, e.g. act(bias) or a BatchNorm shift) or nothing leaves it.

Folding (why the function does not change): before removal, each consumer q receives the
removed inputs' mean value x̄ (measured on calibration data in eval mode) as a bias shift
    b_q += W_q[:, removed] * x̄[removed]   (Linear; for Conv2d the conv of the masked x̄,
                                           averaged over output positions)
This is exact when the removed inputs are constant (dead incoming weights) or their outgoing
weights are zero. With zero padding, a constant map does not give a constant conv output at
the borders; the largest such deviation is reported as `fold_error`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from sparsenet.errors import ConfigError

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


def _output_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The Conv/Linear layers whose output is the network output (never pruned)."""
    layers = [m for m in model.modules() if isinstance(m, PRUNABLE_TYPES)]
    return layers[-1:]


def _build_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)


def _unit_groups(graph: tp.DependencyGraph, model: nn.Module, ignored: list[nn.Module]):
    return list(graph.get_all_groups(ignored_layers=ignored, root_module_types=PRUNABLE_TYPES))


def _is_weight_dep(graph: tp.DependencyGraph, dep, out: bool) -> bool:
    module = dep.target.module
    if not isinstance(module, PRUNABLE_TYPES):
        return False
    fn = graph.is_out_channel_pruning_fn if out else graph.is_in_channel_pruning_fn
    return fn(dep.handler)


def _group_unit_norms(graph, group) -> tuple[torch.Tensor, torch.Tensor]:
    """(in_norm, out_norm) per root index of a full-index group."""
    root_module = group[0].dep.target.module
    n = graph.get_out_channels(root_module)
    sq_in = torch.zeros(n)
    sq_out = torch.zeros(n)
    for item in group.items:
        dep, idxs = item.dep, item.idxs
        roots = torch.as_tensor(item.root_idxs, dtype=torch.long)
        idxs = torch.as_tensor(idxs, dtype=torch.long)
        if _is_weight_dep(graph, dep, out=True):
            w = dep.target.module.weight.detach().float().cpu()
            sq_in.index_add_(0, roots, w.reshape(w.shape[0], -1).pow(2).sum(1)[idxs])
        elif _is_weight_dep(graph, dep, out=False):
            w = dep.target.module.weight.detach().float().cpu()
            cols = w.transpose(0, 1).reshape(w.shape[1], -1).pow(2).sum(1)[idxs]
            sq_out.index_add_(0, roots, cols)
    return sq_in.sqrt(), sq_out.sqrt()


def unit_norms(
    model: nn.Module, example: torch.Tensor
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{root layer name: (in_norm, out_norm)} for every prunable unit group."""
    model_was_training = model.training
    model.eval()
    graph = _build_graph(model, example)
    names = {m: n for n, m in model.named_modules()}
    result = {}
    for group in _unit_groups(graph, model, _output_layers(model, example)):
        result[names[group[0].dep.target.module]] = _group_unit_norms(graph, group)
    model.train(model_was_training)
    return result


@dataclass
class PruneResult:
    removed: dict[str, list[int]] = field(default_factory=dict)  # root layer -> removed units
    fold_error: dict[str, float] = field(default_factory=dict)  # consumer -> max border deviation


def _mean_inputs(model: nn.Module, consumers: set[nn.Module], calibration: torch.Tensor):
    """Mean over the batch of each consumer's input (C,) for Linear, (C, H, W) for Conv2d."""
    means: dict[nn.Module, torch.Tensor] = {}

    def hook(module, args):
        means[module] = args[0].detach().float().mean(0)

    handles = [m.register_forward_pre_hook(hook) for m in consumers]
    try:
        with torch.no_grad():
            model(calibration)
    finally:
        for h in handles:
            h.remove()
    return means


@torch.no_grad()
def _fold_into(consumer: nn.Module, mean_input: torch.Tensor, removed_idxs: list[int]) -> float:
    """Add the removed inputs' mean contribution to the consumer's bias; return border error."""
    masked = torch.zeros_like(mean_input)
    idx = torch.as_tensor(removed_idxs, dtype=torch.long, device=mean_input.device)
    masked[idx] = mean_input[idx]
    weight = consumer.weight.detach().float()
    if isinstance(consumer, nn.Linear):
        shift, error = weight @ masked, 0.0
    else:
        out = F.conv2d(
            masked.unsqueeze(0),
            weight,
            None,
            consumer.stride,
            consumer.padding,
            consumer.dilation,
            consumer.groups,
        )[0]
        shift = out.mean(dim=(1, 2))
        error = float((out - shift[:, None, None]).abs().max()) if out.numel() else 0.0
    if not torch.any(shift != 0):
        return error
    if consumer.bias is None:
        consumer.bias = nn.Parameter(torch.zeros_like(shift).to(consumer.weight))
    consumer.bias.add_(shift.to(consumer.bias))
    return error


def prune_dead_units(
    model: nn.Module,
    example: torch.Tensor,
    threshold: float,
    *,
    calibration: torch.Tensor | None = None,
    min_units: int = 1,
) -> PruneResult:
    """Remove every unit with min(in_norm, out_norm) <= threshold, in place.

    `example` is one input batch for tracing; `calibration` (default: `example`) is the data
    whose mean activations are folded into the consumers. At least `min_units` units of
    each group are kept (the ones with the largest norms).
    """
    if threshold < 0:
        raise ConfigError(f"prune.threshold={threshold} must be >= 0")
    was_training = model.training
    model.eval()
    calibration = example if calibration is None else calibration
    graph = _build_graph(model, example)
    names = {m: n for n, m in model.named_modules()}
    result = PruneResult()

    plans = []
    for group in _unit_groups(graph, model, _output_layers(model, example)):
        in_norm, out_norm = _group_unit_norms(graph, group)
        score = torch.minimum(in_norm, out_norm)
        dead = (score <= threshold).nonzero().flatten()
        keep_at_least = min(min_units, score.numel())
        if score.numel() - dead.numel() < keep_at_least:
            order = torch.argsort(score, descending=True)
            dead = order[keep_at_least:]
        if dead.numel():
            plans.append((group[0].dep.target.module, group[0].dep.handler, sorted(dead.tolist())))

    for root, handler, dead in plans:
        group = graph.get_pruning_group(root, handler, dead)
        consumers = {
            item.dep.target.module: list(item.idxs)
            for item in group.items
            if _is_weight_dep(graph, item.dep, out=False)
        }
        means = _mean_inputs(model, set(consumers), calibration)
        for consumer, idxs in consumers.items():
            error = _fold_into(consumer, means[consumer], idxs)
            name = names[consumer]
            result.fold_error[name] = max(result.fold_error.get(name, 0.0), error)
        group.prune()
        result.removed[names[root]] = dead

    model.train(was_training)
    return result
