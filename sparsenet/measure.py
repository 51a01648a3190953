"""What a stage reports about a model: size, cost, sparsity, per-layer units, latency."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from sparsenet.pruning.groups import LAYER_TYPES


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_nonzero_params(model: nn.Module) -> int:
    return int(sum(int(torch.count_nonzero(p.detach())) for p in model.parameters()))


@torch.no_grad()
def layer_positions(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """How many times each weight of each Conv2d and Linear layer is applied for one sample, by
    layer name: the output positions H_out * W_out of a Conv2d (1 for a Linear on a vector;
    the leading positions of a Linear on a sequence), summed over the calls of a module that
    runs more than once. Found with forward hooks on one forward pass of a zero sample.

    This is the one definition of a multiply-accumulate: a weight costs one MAC per position
    it is applied at, so a layer costs `positions * weights` (`layer_macs`) and a unit of it
    the positions times its weights (sparsenet.pruning.cost, the cost-aware regularizers)."""
    names = {m: n for n, m in model.named_modules()}
    positions: dict[str, int] = {
        n: 0 for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)
    }

    def hook(module, args, output):
        units = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        positions[names[module]] += int(output[0].numel()) // units

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, LAYER_TYPES)]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return positions


def layer_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Multiply-accumulates of each Conv2d and Linear layer for one sample, by layer name:
    positions * weights (`layer_positions`), i.e. Conv2d: output elements * (C_in / groups) *
    kh * kw; Linear: n_in * n_out per output row. Bias adds, activations, pooling, BatchNorm
    and the border add of a FoldedConv2d are not counted (they are foldable or element-wise).
    """
    modules = dict(model.named_modules())
    return {
        name: count * modules[name].weight.numel()
        for name, count in layer_positions(model, input_shape).items()
    }


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of the Conv2d and Linear layers for one sample (see layer_macs)."""
    return int(sum(layer_macs(model, input_shape).values()))


def layer_units(
    model: nn.Module,
    dense_units: dict[str, int] | None = None,
    macs: dict[str, int] | None = None,
    small_weight: float = 1e-3,
) -> list[dict]:
    """Per Conv/Linear layer: units (filters / neurons) kept and total, parameters (weight
    and bias), MACs per sample (if `macs` is given), zero weights and weight sparsity.

    Paper A's figures, measured without pruning: `small_weights` = #{|w| < small_weight};
    `inputs_alive` = input units i (columns W[:, i], input channels for Conv) whose outgoing
    weights have sum |w| > small_weight."""
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, LAYER_TYPES):
            weight = module.weight.detach()
            units = weight.shape[0]
            weights = int(weight.numel())
            zeros = int((weight == 0).sum())
            outgoing = weight.abs().transpose(0, 1).reshape(weight.shape[1], -1).sum(dim=1)
            bias = 0 if module.bias is None else int(module.bias.numel())
            row = {
                "name": name,
                "units_kept": int(units),
                "units_total": int((dense_units or {}).get(name, units)),
                "params": weights + bias,
                "weights": weights,
                "zero_weights": zeros,
                "weight_sparsity": round(zeros / weights, 6) if weights else 0.0,
                "small_weights": int((weight.abs() < small_weight).sum()),
                "inputs_alive": int((outgoing > small_weight).sum()),
                "inputs_total": int(weight.shape[1]),
            }
            if macs is not None:
                row["macs"] = int(macs.get(name, 0))
            rows.append(row)
    return rows


def dense_layer_units(model: nn.Module) -> dict[str, int]:
    return {n: m.weight.shape[0] for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)}


def measure_latency_ms(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int,
    device: torch.device,
    *,
    warmup: int = 3,
    repeats: int = 10,
) -> float:
    """Median wall time (ms) of one forward pass of a batch, after warm-up, in eval mode."""
    timed = interleaved_latency_ms(
        {"model": model}, input_shape, batch_size, device=device, repeats=repeats, warmup=warmup
    )
    return float(timed["model"]["median_ms"])


@torch.no_grad()
def interleaved_latency_ms(
    models: dict[str, nn.Module],
    input_shape: tuple[int, ...],
    batch_size: int,
    *,
    device: torch.device | str = "cpu",
    repeats: int = 30,
    warmup: int = 5,
) -> dict[str, dict[str, float]]:
    """{name: {median_ms, q1_ms, q3_ms}} of one forward pass of a batch per model (eval mode;
    each model's mode is put back after), measured side by side: every round runs each model
    once, in an order rotated per round, so background load on a shared machine hits all of
    them alike and their ratios (speed-ups) stay fair even when the absolute times drift. On
    CUDA each pass is timed between two synchronizations."""
    device = torch.device(device)
    modes = {name: model.training for name, model in models.items()}
    for model in models.values():
        model.eval()
    x = torch.randn(batch_size, *input_shape, device=device)

    def timed_pass(model: nn.Module) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) * 1000

    for model in models.values():
        for _ in range(warmup):
            timed_pass(model)
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(timed_pass(models[name]))
    for name, model in models.items():
        model.train(modes[name])
    result = {}
    for name, values in times.items():
        q1, median, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
        result[name] = {"median_ms": median, "q1_ms": q1, "q3_ms": q3}
    return result


def describe_model(
    model: nn.Module,
    input_shape: tuple[int, ...],
    dense_units: dict[str, int],
    small_weight: float = 1e-3,
) -> dict:
    """Whole-model and per-layer size, cost and sparsity (no latency: see measure_latency_ms).
    `small_weight_share` is paper A's sparsity: the share of Conv/Linear weights with
    |w| < small_weight."""
    params = count_params(model)
    nonzero = count_nonzero_params(model)
    macs = layer_macs(model, input_shape)
    layers = layer_units(model, dense_units, macs, small_weight)
    weights = sum(row["weights"] for row in layers)
    small = sum(row["small_weights"] for row in layers)
    return {
        "params": params,
        "nonzero_params": nonzero,
        "weight_sparsity": round(1 - nonzero / params, 6) if params else 0.0,
        "macs": int(sum(macs.values())),
        "small_weight_share": round(small / weights, 6) if weights else 0.0,
        "layers": layers,
    }
