"""Whether a network can be pruned at all, checked once before any training (`check_prunable`).

Pruning needs two things of a network, and a run must not find out after hours of training
that it lacks one:

1. torch-pruning's DependencyGraph traces it and yields its unit groups (`groups.py`). A
   graph that fails (an op whose channel mapping torch-pruning cannot work out, such as a
   5-d view) is refused here.
2. Removing a dead unit leaves the function unchanged. The rules of `groups.py` and
   `remove.py` make that so for the operations torch-pruning models (convs, depthwise convs,
   Linear, BatchNorm, residual adds, concatenation, splits, `ChannelSelect`, pooling,
   element-wise products such as squeeze-excitation gates) and exclude the units of grouped
   convs and channel norms. But torch-pruning treats every op it does not know as
   element-wise, so an unknown op that mixes channels would pass (1) and still change the
   function when a unit goes. The *probe* settles it for the network at hand: on a copy with random BatchNorm statistics and shifts (so dead units emit non-zero constants),
   the incoming weights of one unit of every group are zeroed, the copy is pruned at
   threshold 0 (folding those constants into their consumers) and its outputs are compared
   with the unpruned copy's on two random batches, the calibration batch and another. A
   difference beyond float32 round-off (relative 1e-4; a real change is of the order of the
   outputs) refuses the network.

The probe is a check, not a proof over all weights: it exercises every group once (its first
unit) and every fold path those units take. Cost: one prune of a copy, well under a second
for small networks at CIFAR size.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from sparsenet.errors import UserInputError
from sparsenet.pruning.criteria import PruneSettings
from sparsenet.pruning.groups import SliceIndex, UnitGroups
from sparsenet.pruning.remove import prune_units

PROBE_TOLERANCE = 1e-4  # relative to the largest output: float32 round-off, not a real change


class NotPrunable(UserInputError):
    """The network cannot be pruned; the message says why (one line)."""


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:160]}"


def _randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=generator, dtype=torch.float32) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=generator, dtype=torch.float32) + 0.5)
            if m.affine:
                m.weight.copy_(torch.rand(n, generator=generator, dtype=torch.float32) + 0.5)
                m.bias.copy_(torch.rand(n, generator=generator, dtype=torch.float32) + 0.2)


@torch.no_grad()
def probe_error(model: nn.Module, example: torch.Tensor, seed: int = 0) -> float:
    """Largest |pruned - dense| / max(1, max |dense|) of the probe (module docstring), on a
    float32 CPU copy of `model`; `model` itself is not changed."""
    generator = torch.Generator().manual_seed(seed)
    probe = copy.deepcopy(model).cpu().float().eval()
    _randomize_batchnorm(probe, generator)
    shape = tuple(example.shape[1:])
    calibration = torch.randn(4, *shape, generator=generator, dtype=torch.float32)
    other = torch.randn(2, *shape, generator=generator, dtype=torch.float32)
    groups = UnitGroups(probe, calibration[:1])
    index = SliceIndex(groups.groups, ("out",), torch.device("cpu"))
    factors = torch.ones(index.num_units, dtype=torch.float32)
    factors[torch.tensor(index.offsets, dtype=torch.long)] = 0.0
    index.scale_(factors)
    expected = [probe(calibration), probe(other)]
    prune_units(probe, calibration[:1], PruneSettings(threshold=0.0), calibration=calibration)
    got = [probe(calibration), probe(other)]
    scale = max(1.0, *(float(e.abs().max()) for e in expected))
    return max(float((g - e).abs().max()) for g, e in zip(got, expected, strict=True)) / scale


def check_prunable(model: nn.Module, example: torch.Tensor) -> UnitGroups:
    """The unit groups of `model`, after the two checks of the module docstring; raises
    NotPrunable (one line: why) when the graph fails or the probe changes the outputs."""
    try:
        groups = UnitGroups(model, example)
    except Exception as error:  # noqa: BLE001 - whatever torch-pruning fails with
        raise NotPrunable(
            f"torch-pruning's dependency graph cannot trace it ({_one_line(error)})"
        ) from None
    if not len(groups):
        excluded = "; ".join(f"{k} {v}" for k, v in list(groups.excluded.items())[:2])
        raise NotPrunable(
            "it has no unit that can be removed exactly"
            + (f" (excluded: {excluded})" if excluded else "")
        )
    try:
        error = probe_error(model, example)
    except Exception as failure:  # noqa: BLE001 - pruning itself failed on this graph
        raise NotPrunable(f"pruning a copy of it fails ({_one_line(failure)})") from None
    if not error <= PROBE_TOLERANCE:
        raise NotPrunable(
            f"removing dead units changes its outputs (relative error {error:.1e} in a "
            "pruned copy): it has an operation that mixes channels which torch-pruning "
            "does not model"
        )
    return groups
