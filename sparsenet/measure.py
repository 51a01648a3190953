"""What a stage reports about a model: size, cost, sparsity, per-layer units, latency."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

LAYER_TYPES = (nn.Conv2d, nn.Linear)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_nonzero_params(model: nn.Module) -> int:
    return int(sum(int(torch.count_nonzero(p.detach())) for p in model.parameters()))


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of the Conv2d and Linear layers for one sample.

    Conv2d: output elements * (C_in / groups) * kh * kw; Linear: n_in * n_out. Bias adds,
    activations, pooling and BatchNorm are not counted (they are foldable or negligible).
    """
    total = 0

    def hook(module, args, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output[0].numel() * (module.in_channels // module.groups) * kh * kw
        else:
            total += output[0].numel() * module.in_features

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
    return int(total)


def layer_units(model: nn.Module, dense_units: dict[str, int] | None = None) -> list[dict]:
    """Per Conv/Linear layer: units (filters / neurons) kept and total, and zero weights."""
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, LAYER_TYPES):
            units = module.weight.shape[0]
            rows.append(
                {
                    "name": name,
                    "units_kept": int(units),
                    "units_total": int((dense_units or {}).get(name, units)),
                    "weights": int(module.weight.numel()),
                    "zero_weights": int((module.weight.detach() == 0).sum()),
                }
            )
    return rows


def dense_layer_units(model: nn.Module) -> dict[str, int]:
    return {n: m.weight.shape[0] for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)}


@torch.no_grad()
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
    was_training = model.training
    model.eval()
    x = torch.randn(batch_size, *input_shape, device=device)
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    model.train(was_training)
    return float(statistics.median(times))


def describe_model(
    model: nn.Module, input_shape: tuple[int, ...], dense_units: dict[str, int]
) -> dict:
    params = count_params(model)
    nonzero = count_nonzero_params(model)
    return {
        "params": params,
        "nonzero_params": nonzero,
        "weight_sparsity": round(1 - nonzero / params, 6) if params else 0.0,
        "macs": count_macs(model, input_shape),
        "layers": layer_units(model, dense_units),
    }
