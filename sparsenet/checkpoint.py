"""Pruned models as data: a per-layer shape spec (JSON) beside a plain state_dict.

A checkpoint folder holds
    model_spec.json   registry name + builder kwargs + per-layer shapes (Conv2d, FoldedConv2d,
                      Linear, BatchNorm: channel counts and bias flags)
    model_state.pt    the state_dict (tensors only; FoldedConv2d's `fold_kernel` included)
    config.json       the run's resolved config (optional)
    metrics.json      the run's metrics (optional)
Loading builds the dense architecture from its registry name, narrows each layer listed in
the spec to the recorded shape (turning a conv into a FoldedConv2d where the spec says so),
and loads the tensors with `weights_only=True`: no pickled code is ever executed.

`export_onnx` writes the (pruned) model as ONNX with a dynamic batch dimension; it needs the
`onnx` extra (`pip install sparsenet[onnx]`: onnx, onnxscript; onnxruntime to check it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsenet.errors import CheckpointError
from sparsenet.models import get_model
from sparsenet.pruning.folded import FoldedConv2d
from sparsenet.runtime import atomic_torch_save, atomic_write_json, safe_torch_load

SPEC_FILE = "model_spec.json"
WEIGHTS_FILE = "model_state.pt"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
SPEC_FORMAT = 2  # 2: FoldedConv2d entries; format-1 specs (no "format" key) load unchanged


def shape_spec(model: nn.Module) -> dict[str, dict[str, Any]]:
    """{module name: its channel sizes and bias flag} for every Conv2d, Linear and BatchNorm."""
    spec: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            spec[name] = {
                "type": "FoldedConv2d" if isinstance(m, FoldedConv2d) else "Conv2d",
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


def _narrow(module: nn.Module, entry: dict[str, Any]) -> nn.Module:
    """Give `module` the recorded sizes; tensor values are filled in by load_state_dict.
    Returns the module to use (a new FoldedConv2d for a `FoldedConv2d` entry)."""
    kind = entry["type"]
    expected = "Conv2d" if kind == "FoldedConv2d" else kind
    if expected != type(module).__name__:
        raise ValueError(f"spec says {kind}, model has {type(module).__name__}")
    if kind in ("Conv2d", "FoldedConv2d"):
        module.in_channels, module.out_channels = entry["in_channels"], entry["out_channels"]
        module.groups = entry["groups"]
        shape = (module.out_channels, module.in_channels // module.groups, *module.kernel_size)
        module.weight = nn.Parameter(torch.empty(shape))
        module.bias = nn.Parameter(torch.empty(module.out_channels)) if entry["bias"] else None
        if kind == "FoldedConv2d":
            return FoldedConv2d.from_conv(module)
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
    return module


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def save_pruned(
    model: nn.Module,
    folder: str | Path,
    model_cfg: dict[str, Any],
    *,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> None:
    """Write `model_spec.json` (builder name + kwargs + per-layer shapes), `model_state.pt`
    and, when given, the run's `config.json` and `metrics.json` (plain JSON data)."""
    folder = Path(folder)
    spec = {"format": SPEC_FORMAT, "model": model_cfg, "layers": shape_spec(model)}
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_torch_save(state, folder / WEIGHTS_FILE)
    atomic_write_json(folder / SPEC_FILE, spec)
    if config is not None:
        atomic_write_json(folder / CONFIG_FILE, config)
    if metrics is not None:
        atomic_write_json(folder / METRICS_FILE, metrics)


def narrow_to_spec(model: nn.Module, layers: dict[str, dict[str, Any]], source: str) -> None:
    """Give a freshly built dense model the per-layer shapes of `shape_spec`, in place; the
    tensor values are then filled in by `load_state_dict`."""
    modules = dict(model.named_modules())
    for name, entry in layers.items():
        if name not in modules:
            raise ValueError(f"{source}: layer '{name}' is not in the model")
        narrowed = _narrow(modules[name], entry)
        if narrowed is not modules[name]:
            _set_module(model, name, narrowed)


def load_pruned(folder: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a (pruned) model saved by `save_pruned`; returns it in eval mode."""
    folder = Path(folder)
    spec = json.loads((folder / SPEC_FILE).read_text())
    if spec.get("format", 1) > SPEC_FORMAT:
        raise ValueError(
            f"{folder / SPEC_FILE}: spec format {spec['format']} is newer than this sparsenet "
            f"reads ({SPEC_FORMAT}); upgrade sparsenet"
        )
    model_cfg = dict(spec["model"])
    model = get_model(model_cfg.pop("name"), **model_cfg)
    narrow_to_spec(model, spec["layers"], source=str(folder / SPEC_FILE))
    state = safe_torch_load(folder / WEIGHTS_FILE, map_location)  # refuses pickled code
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{folder / WEIGHTS_FILE} is not a state_dict (names to tensors)")
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_run_info(folder: str | Path) -> dict[str, Any]:
    """{"model": builder name + kwargs, "config": ..., "metrics": ...} of a checkpoint folder
    (config / metrics are None when the folder has none)."""
    folder = Path(folder)
    spec = json.loads((folder / SPEC_FILE).read_text())
    info: dict[str, Any] = {"model": spec["model"]}
    for key, file in (("config", CONFIG_FILE), ("metrics", METRICS_FILE)):
        path = folder / file
        info[key] = json.loads(path.read_text()) if path.is_file() else None
    return info


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_shape: tuple[int, ...],
    *,
    opset_version: int | None = None,
) -> Path:
    """Export `model` (eval mode, on CPU) to ONNX with a dynamic batch dimension.

    Uses torch's torch.export-based exporter (needs `onnx` and `onnxscript`, the `onnx`
    extra). The spatial size is fixed to `input_shape`: a FoldedConv2d's border term is
    computed for that size and stored as a constant.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    example = torch.randn(2, *input_shape, device=next(model.parameters()).device)
    batch = torch.export.Dim("batch", min=1)
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                dynamic_shapes=({0: batch},),
                input_names=["input"],
                output_names=["output"],
                opset_version=opset_version,
                verbose=False,
            )
        program.save(str(path))
    finally:
        model.train(was_training)
    return path


def onnx_max_abs_diff(path: str | Path, model: nn.Module, inputs: torch.Tensor) -> float:
    """Largest |ONNX Runtime output - PyTorch output| on `inputs` (needs onnxruntime)."""
    import onnxruntime  # the `onnx` extra

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {session.get_inputs()[0].name: inputs.cpu().numpy()})
    was_training = model.training
    model.eval()
    with torch.no_grad():
        expected = model(inputs).cpu()
    model.train(was_training)
    return float((torch.from_numpy(actual) - expected).abs().max())
