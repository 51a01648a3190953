"""Pruned models as data: a per-layer shape spec (JSON) beside a plain state_dict.

Loading builds the dense architecture from its registry name, narrows each layer listed in
the spec to the recorded shape, and loads the tensors with `weights_only=True`: no pickled
code is ever executed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsenet.models import get_model
from sparsenet.runtime import atomic_torch_save, atomic_write_json

SPEC_FILE = "model_spec.json"
WEIGHTS_FILE = "model_state.pt"


def shape_spec(model: nn.Module) -> dict[str, dict[str, Any]]:
    """{module name: its channel sizes and bias flag} for every Conv2d, Linear and BatchNorm."""
    spec: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            spec[name] = {
                "type": "Conv2d",
                "in_channels": m.in_channels,
                "out_channels": m.out_channels,
                "groups": m.groups,
                "bias": m.bias is not None,
            }
        elif isinstance(m, nn.Linear):
            spec[name] = {
                "type": "Linear",
                "in_features": m.in_features,
                "out_features": m.out_features,
                "bias": m.bias is not None,
            }
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            spec[name] = {"type": type(m).__name__, "num_features": m.num_features}
    return spec


def _narrow(module: nn.Module, entry: dict[str, Any]) -> None:
    """Give `module` the recorded sizes; tensor values are filled in by load_state_dict."""
    kind = entry["type"]
    if kind != type(module).__name__:
        raise ValueError(f"spec says {kind}, model has {type(module).__name__}")
    if kind == "Conv2d":
        module.in_channels, module.out_channels = entry["in_channels"], entry["out_channels"]
        module.groups = entry["groups"]
        shape = (module.out_channels, module.in_channels // module.groups, *module.kernel_size)
        module.weight = nn.Parameter(torch.empty(shape))
        module.bias = nn.Parameter(torch.empty(module.out_channels)) if entry["bias"] else None
    elif kind == "Linear":
        module.in_features, module.out_features = entry["in_features"], entry["out_features"]
        module.weight = nn.Parameter(torch.empty(module.out_features, module.in_features))
        module.bias = nn.Parameter(torch.empty(module.out_features)) if entry["bias"] else None
    else:
        n = entry["num_features"]
        module.num_features = n
        if module.affine:
            module.weight = nn.Parameter(torch.empty(n))
            module.bias = nn.Parameter(torch.empty(n))
        if module.track_running_stats:
            module.running_mean = torch.zeros(n)
            module.running_var = torch.ones(n)


def save_pruned(model: nn.Module, folder: str | Path, model_cfg: dict[str, Any]) -> None:
    """Write `model_spec.json` (builder name + kwargs + per-layer shapes) and `model_state.pt`."""
    folder = Path(folder)
    spec = {"model": model_cfg, "layers": shape_spec(model)}
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_torch_save(state, folder / WEIGHTS_FILE)
    atomic_write_json(folder / SPEC_FILE, spec)


def load_pruned(folder: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a (pruned) model saved by `save_pruned`; returns it in eval mode."""
    folder = Path(folder)
    spec = json.loads((folder / SPEC_FILE).read_text())
    model_cfg = dict(spec["model"])
    model = get_model(model_cfg.pop("name"), **model_cfg)
    modules = dict(model.named_modules())
    for name, entry in spec["layers"].items():
        if name not in modules:
            raise ValueError(f"{folder / SPEC_FILE}: layer '{name}' is not in the model")
        _narrow(modules[name], entry)
    state = torch.load(folder / WEIGHTS_FILE, map_location=map_location, weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()
