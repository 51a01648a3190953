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

A folder is not trusted: the spec is checked (JSON, types, sizes) and compared, layer by
layer, with the state dict's shapes and with the dense model's widths (a spec may only
narrow) on a model built on the meta device, before any tensor of the model is allocated; the
tensors loaded from the state dict then become the model's. A spec that disagrees is refused
with one CheckpointError line naming the file, the layer and both shapes.

`check_run_checkpoint` applies the same checks to a run's `checkpoint.pt` (its keys, the
model's shapes); `set_aside_checkpoint` moves an unusable one out of the run's way.

`export_onnx` writes the (pruned) model as ONNX with a dynamic batch dimension; it needs the
`onnx` extra (`pip install sparsenet[onnx]`: onnx, onnxscript; onnxruntime to check it).
"""

from __future__ import annotations

import json
import logging
import os
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsenet.errors import CheckpointError, OutputError
from sparsenet.models import get_model
from sparsenet.pruning.folded import FoldedConv2d
from sparsenet.runtime import atomic_torch_save, atomic_write_json, safe_torch_load

SPEC_FILE = "model_spec.json"
WEIGHTS_FILE = "model_state.pt"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
SPEC_FORMAT = 2  # 2: FoldedConv2d entries; format-1 specs (no "format" key) load unchanged
MAX_SPEC_BYTES = 16 * 2**20  # ResNet-50's spec is 20 kB
CONV_TYPES = ("Conv2d", "FoldedConv2d")
BAD_SUFFIX = ".bad"  # an unusable run checkpoint is kept as checkpoint.pt.bad
log = logging.getLogger(__name__)


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
    """Give `module` the recorded sizes (checked by `_check_entry` and `_check_fits`); tensor
    values are filled in by load_state_dict. The new tensors are made where the module's are
    (the meta device: no memory). Returns the module to use (a new FoldedConv2d for a
    `FoldedConv2d` entry)."""
    kind = entry["type"]
    own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    device = own[0].device if own else None
    if kind in CONV_TYPES:
        module.in_channels, module.out_channels = entry["in_channels"], entry["out_channels"]
        module.groups = entry["groups"]
        shape = (module.out_channels, module.in_channels // module.groups, *module.kernel_size)
        module.weight = nn.Parameter(torch.empty(shape, device=device))
        bias = torch.empty(module.out_channels, device=device) if entry["bias"] else None
        module.bias = None if bias is None else nn.Parameter(bias)
        if kind == "FoldedConv2d":
            return FoldedConv2d.from_conv(module)
    elif kind == "Linear":
        module.in_features, module.out_features = entry["in_features"], entry["out_features"]
        shape = (module.out_features, module.in_features)
        module.weight = nn.Parameter(torch.empty(shape, device=device))
        bias = torch.empty(module.out_features, device=device) if entry["bias"] else None
        module.bias = None if bias is None else nn.Parameter(bias)
    else:
        n = entry["num_features"]
        module.num_features = n
        if module.affine:
            module.weight = nn.Parameter(torch.empty(n, device=device))
            module.bias = nn.Parameter(torch.empty(n, device=device))
        if module.track_running_stats:
            module.running_mean = torch.zeros(n, device=device)
            module.running_var = torch.ones(n, device=device)
    return module


class _Refused(Exception):
    """A spec or checkpoint problem, worded without the file: the caller names it."""


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}"
    )


def _show(shape: tuple) -> str:
    """(500, 800); (64,); (); a size a spec does not record (a kernel's) shows as ?."""
    sizes = ["?" if d is None else str(d) for d in shape]
    return "(" + ", ".join(sizes) + ("," if len(sizes) == 1 else "") + ")"


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_entry(name: Any, entry: Any) -> None:
    """A spec entry as `shape_spec` writes it: a known type, sizes that are integers >= 1,
    a boolean bias, groups that divide the channels."""
    where = f"layer {name!r}"
    if not isinstance(entry, dict):
        raise _Refused(f"{where} must be an object of sizes, not {_kind(entry)}")
    kind = entry.get("type")
    if kind in CONV_TYPES:
        fields: tuple[str, ...] = ("in_channels", "out_channels", "groups")
    elif kind == "Linear":
        fields = ("in_features", "out_features")
    elif isinstance(kind, str) and "BatchNorm" in kind:
        fields = ("num_features",)
    else:
        raise _Refused(
            f"{where} has type {kind!r}; allowed: Conv2d, FoldedConv2d, Linear, a BatchNorm"
        )
    for field in fields:
        if not _is_size(entry.get(field)):
            shown = "missing" if field not in entry else f"{entry[field]!r}"
            raise _Refused(f"{where}: {field} is {shown}, not a size (an integer >= 1)")
    if kind in (*CONV_TYPES, "Linear") and not isinstance(entry.get("bias"), bool):
        raise _Refused(f"{where}: bias is {entry.get('bias')!r}, not true or false")
    if kind in CONV_TYPES and (
        entry["in_channels"] % entry["groups"] or entry["out_channels"] % entry["groups"]
    ):
        raise _Refused(
            f"{where}: groups={entry['groups']} does not divide in_channels="
            f"{entry['in_channels']} and out_channels={entry['out_channels']}"
        )


def _layer_tensors(entry: dict[str, Any], module: nn.Module | None) -> tuple[dict, set[str]]:
    """The tensors of a layer narrowed to `entry`, by their name in the layer: their shapes
    and which may be absent. Without the module, kernel sizes are unknown (None) and a batch
    norm's tensors are optional (its affine / running-stats flags are not in the spec)."""
    kind = entry["type"]
    if kind in CONV_TYPES:
        out = entry["out_channels"]
        kernel = tuple(module.kernel_size) if module is not None else (None, None)
        shapes = {"weight": (out, entry["in_channels"] // entry["groups"], *kernel)}
        if entry["bias"]:
            shapes["bias"] = (out,)
        if kind == "FoldedConv2d":
            shapes["fold_kernel"] = (out, 1, *kernel)
        return shapes, set()
    if kind == "Linear":
        shapes = {"weight": (entry["out_features"], entry["in_features"])}
        if entry["bias"]:
            shapes["bias"] = (entry["out_features"],)
        return shapes, set()
    n = entry["num_features"]
    affine = module is None or bool(getattr(module, "affine", False))
    tracked = module is None or bool(getattr(module, "track_running_stats", False))
    shapes = {"weight": (n,), "bias": (n,)} if affine else {}
    if tracked:
        shapes.update(running_mean=(n,), running_var=(n,), num_batches_tracked=())
    return shapes, (set(shapes) if module is None else set())


def _check_fits(name: str, entry: dict[str, Any], module: nn.Module) -> None:
    """The entry's layer type is the module's, and no size is wider than the module's."""
    kind = entry["type"]
    expected = "Conv2d" if kind == "FoldedConv2d" else kind
    if expected != type(module).__name__:
        raise _Refused(
            f"layer {name!r} is a {kind} in the spec, a {type(module).__name__} in the model"
        )
    if kind in CONV_TYPES:
        pairs = [
            (entry["out_channels"], module.out_channels),
            (entry["in_channels"], module.in_channels),
        ]
        dense = (module.out_channels, module.in_channels // module.groups, *module.kernel_size)
    elif kind == "Linear":
        pairs = [
            (entry["out_features"], module.out_features),
            (entry["in_features"], module.in_features),
        ]
        dense = (module.out_features, module.in_features)
    else:
        pairs = [(entry["num_features"], module.num_features)]
        dense = (module.num_features,)
    if any(asked > have for asked, have in pairs):
        asked = _layer_tensors(entry, module)[0].get("weight", (entry.get("num_features"),))
        raise _Refused(
            f"layer {name!r} asks for weight {_show(asked)}, wider than the model's "
            f"{_show(dense)}: a spec may only narrow a layer"
        )


def _expected_state(model: nn.Module, layers: Any) -> dict[str, tuple]:
    """{state-dict key: shape} of `model` narrowed to `layers`, computed without narrowing
    it; every entry checked (type, sizes, fits the model)."""
    if not isinstance(layers, dict):
        raise _Refused(f"'layers' must map layer names to their sizes, not {_kind(layers)}")
    modules = dict(model.named_modules())
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    for name, entry in layers.items():
        _check_entry(name, entry)
        if not name or name not in modules:
            raise _Refused(f"layer {name!r} is not in the model")
        _check_fits(name, entry, modules[name])
        prefix = f"{name}."
        for key in [k for k in shapes if k.startswith(prefix) and "." not in k[len(prefix) :]]:
            del shapes[key]
        own, _ = _layer_tensors(entry, modules[name])
        shapes.update({prefix + key: shape for key, shape in own.items()})
    return shapes


def _mismatches(
    expected: dict[str, tuple],
    state: dict[str, torch.Tensor],
    *,
    optional: set[str] = frozenset(),
    owned: set[str] | None = None,
    what: str = "the spec",
) -> list[str]:
    """How `state` differs from `expected` shapes: wrong shapes, missing and unexpected keys
    (among `owned` when given: the keys whose owner is known)."""
    problems = []
    for key, shape in expected.items():
        if key in state:
            found = tuple(state[key].shape)
            if len(found) != len(shape) or any(
                e is not None and e != f for e, f in zip(shape, found, strict=True)
            ):
                problems.append(f"{key} is {_show(found)} in the file, {_show(shape)} in {what}")
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected and (owned is None or k in owned)]
    if missing:
        problems.append("missing tensors " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected tensors " + ", ".join(unexpected))
    return problems


def _summary(problems: list[str], limit: int = 4) -> str:
    shown = "; ".join(problems[:limit])
    return shown + (f"; and {len(problems) - limit} more" if len(problems) > limit else "")


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
    tensor values are then filled in by `load_state_dict`. Every entry is checked first (its
    types and sizes, and that it only narrows the model's layer): a spec that does not fit
    raises CheckpointError naming `source` before any tensor is made."""
    try:
        _expected_state(model, layers)
    except _Refused as problem:
        raise CheckpointError(f"{source}: {problem}") from None
    modules = dict(model.named_modules())
    for name, entry in layers.items():
        narrowed = _narrow(modules[name], entry)
        if narrowed is not modules[name]:
            _set_module(model, name, narrowed)


def _one_line(error: BaseException) -> str:
    text = error.args[0] if isinstance(error, KeyError) and error.args else error
    return " ".join(str(text).split()) or type(error).__name__


def read_spec(path: str | Path) -> dict[str, Any]:
    """A folder's model_spec.json, its layout checked (the layer entries are checked against
    the model by `narrow_to_spec`); anything else is one CheckpointError line naming it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise _Refused(f"{size} bytes is too large for a model spec (at most {MAX_SPEC_BYTES})")
        spec = json.loads(path.read_bytes().decode("utf-8"))
    except _Refused as problem:
        raise CheckpointError(f"{path}: {problem}") from None
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: no such file; a model folder holds {SPEC_FILE} and {WEIGHTS_FILE}"
        ) from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read it: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not a model spec (not UTF-8 text)") from None
    except json.JSONDecodeError as error:
        raise CheckpointError(
            f"{path}: not valid JSON ({error.msg} at line {error.lineno} column {error.colno})"
        ) from None
    except RecursionError:
        raise CheckpointError(f"{path}: not a model spec (JSON nested too deeply)") from None
    if not isinstance(spec, dict):
        raise CheckpointError(f"{path}: a model spec is a JSON object, not {_kind(spec)}")
    version = spec.get("format", 1)
    if not _is_size(version):
        raise CheckpointError(f"{path}: format is {version!r}, not a spec format (1, 2, ...)")
    if version > SPEC_FORMAT:
        raise CheckpointError(
            f"{path}: spec format {version} is newer than this sparsenet reads ({SPEC_FORMAT}); "
            "upgrade sparsenet"
        )
    model = spec.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise CheckpointError(
            f"{path}: 'model' must be an object holding the builder's 'name' and arguments"
        )
    if not isinstance(spec.get("layers"), dict):
        raise CheckpointError(
            f"{path}: 'layers' must map layer names to their sizes, not {_kind(spec.get('layers'))}"
        )
    return spec


def _read_state_dict(path: Path, map_location: str | torch.device) -> dict[str, torch.Tensor]:
    try:
        state = safe_torch_load(path, map_location)  # refuses pickled code
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: no such file; a model folder holds {SPEC_FILE} and {WEIGHTS_FILE}"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable torch file ({_one_line(error)})") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path} is not a state_dict (names to tensors)")
    return state


def _build_on_meta(model_cfg: dict[str, Any], source: Path) -> nn.Module:
    """The dense registry model of the spec's builder arguments, on the meta device: shapes
    without memory, whatever widths the arguments ask for."""
    kwargs = dict(model_cfg)
    name = kwargs.pop("name")
    try:
        with torch.device("meta"):
            return get_model(name, **kwargs)
    except Exception as error:  # noqa: BLE001 - whatever the builder says of these arguments
        raise CheckpointError(
            f"{source}: cannot build model {name!r} with {kwargs}: {_one_line(error)}"
        ) from None


def load_pruned(folder: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a (pruned) model saved by `save_pruned`; returns it in eval mode.

    The state dict is read first (tensors only); the spec's model is built and narrowed on
    the meta device, its shapes compared with the state dict's, and only then do the loaded
    tensors become the model's: no tensor is allocated beyond what the file holds."""
    folder = Path(folder)
    spec_path, weights_path = folder / SPEC_FILE, folder / WEIGHTS_FILE
    spec = read_spec(spec_path)
    state = _read_state_dict(weights_path, map_location)
    model = _build_on_meta(spec["model"], spec_path)
    try:
        expected = _expected_state(model, spec["layers"])
    except _Refused as problem:
        raise CheckpointError(f"{spec_path}: {problem}") from None
    problems = _mismatches(expected, state)
    if problems:
        raise CheckpointError(f"{weights_path} does not match {spec_path}: {_summary(problems)}")
    narrow_to_spec(model, spec["layers"], source=str(spec_path))
    dtypes = {key: value.dtype for key, value in model.state_dict().items()}
    state = {key: value.to(dtypes[key]) for key, value in state.items()}  # as copy_ would
    model.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in chain(model.parameters(), model.buffers())):
        # Non-persistent buffers (no registry model has any) are not in the state dict:
        # build the model for real; its sizes are checked above.
        model = get_model(**spec["model"])
        narrow_to_spec(model, spec["layers"], source=str(spec_path))
        model.load_state_dict(state, strict=True)
    return model.eval()


def load_run_info(folder: str | Path) -> dict[str, Any]:
    """{"model": builder name + kwargs, "config": ..., "metrics": ...} of a checkpoint folder
    (config / metrics are None when the folder has none)."""
    folder = Path(folder)
    spec = read_spec(folder / SPEC_FILE)
    info: dict[str, Any] = {"model": spec["model"]}
    for key, file in (("config", CONFIG_FILE), ("metrics", METRICS_FILE)):
        path = folder / file
        info[key] = json.loads(path.read_text()) if path.is_file() else None
    return info


# A run's checkpoint.pt (sparsenet.pipeline.stages.RunContext.save_checkpoint): its keys and
# their types; a mid-stage one (stage_epoch > 0) also holds the training states.
RUN_CHECKPOINT_KEYS: dict[str, type | tuple[type, ...]] = {
    "config_hash": str,
    "stage_index": int,
    "stage_epoch": int,
    "loader_epoch": int,
    "model_spec": dict,
    "model_state": dict,
    "rng": dict,
    "history": list,
    "stages": dict,
}
OPTIONAL_RUN_CHECKPOINT_KEYS: dict[str, type | tuple[type, ...]] = {
    "data_fingerprint": str,
    "stage_wall_s": (int, float),
}
TRAINING_STATE_KEYS = ("optimizer", "scheduler", "scaler")
RNG_KEYS = ("torch", "cuda", "python", "numpy")


def _type_problems(state: dict, keys: dict[str, type | tuple[type, ...]]) -> list[str]:
    problems = []
    for key, types in keys.items():
        if key not in state:
            continue
        value = state[key]
        if isinstance(value, bool) or not isinstance(value, types):
            problems.append(f"'{key}' is {_kind(value)}")
        elif types is int and value < 0:
            problems.append(f"'{key}' is {value}, below 0")
    return problems


def _rng_problems(rng: Any) -> list[str]:
    """resume.rng_state's layout: torch's state (a uint8 tensor), CUDA's (a list), Python's
    (version, key, gauss) and NumPy's (name, keys, pos, has_gauss, cached)."""
    if not isinstance(rng, dict):
        return []  # missing, or of another type: said with the other keys
    lost = [key for key in RNG_KEYS if key not in rng]
    if lost:
        return ["'rng' lacks " + ", ".join(f"'{key}'" for key in lost)]
    python, numpy = rng["python"], rng["numpy"]
    fine = (
        isinstance(rng["torch"], torch.Tensor)
        and rng["torch"].dtype == torch.uint8
        and isinstance(rng["cuda"], list | tuple)
        and isinstance(python, list | tuple)
        and len(python) == 3
        and isinstance(python[1], list | tuple)
        and isinstance(numpy, list | tuple)
        and len(numpy) == 5
        and isinstance(numpy[0], str)
        and isinstance(numpy[1], list | tuple)
    )
    return [] if fine else ["'rng' does not hold the random generators' states"]


def _optimizer_problems(optimizer: Any) -> list[str]:
    """torch.optim.Optimizer.state_dict's layout: 'state' by parameter id, 'param_groups'
    listing each parameter id once."""
    if not isinstance(optimizer, dict):
        return []  # missing, or of another type: said with the other keys
    groups, per_param = optimizer.get("param_groups"), optimizer.get("state")
    if not isinstance(per_param, dict) or not isinstance(groups, list) or not groups:
        return ["'optimizer' lacks its 'state' or 'param_groups'"]
    ids = []
    for group in groups:
        if not isinstance(group, dict) or not isinstance(group.get("params"), list):
            return ["'optimizer' has a parameter group without its 'params'"]
        ids += group["params"]
    if len(set(ids)) != len(ids) or not set(per_param) <= set(ids):
        return ["'optimizer' lists parameters twice, or keeps state for unknown ones"]
    return []


def _run_checkpoint_problems(state: Any, model: nn.Module | None) -> list[str]:
    if not isinstance(state, dict):
        return [f"not a sparsenet run checkpoint ({_kind(state)}, not a dict of states)"]
    required = list(RUN_CHECKPOINT_KEYS)
    if isinstance(state.get("stage_epoch"), int) and state["stage_epoch"] > 0:
        required += TRAINING_STATE_KEYS
    missing = [key for key in required if key not in state]
    problems = ["missing " + ", ".join(f"'{key}'" for key in missing)] if missing else []
    problems += _type_problems(state, {**RUN_CHECKPOINT_KEYS, **OPTIONAL_RUN_CHECKPOINT_KEYS})
    problems += _type_problems(state, dict.fromkeys(TRAINING_STATE_KEYS, dict))
    problems += _rng_problems(state.get("rng"))
    problems += _optimizer_problems(state.get("optimizer"))
    if isinstance(state.get("history"), list) and not all(
        isinstance(row, dict) for row in state["history"]
    ):
        problems.append("'history' holds other things than epoch records")
    if isinstance(state.get("stages"), dict) and not all(
        isinstance(v, dict) for v in state["stages"].values()
    ):
        problems.append("'stages' holds other things than stage figures")
    spec, weights = state.get("model_spec"), state.get("model_state")
    if not isinstance(spec, dict) or not isinstance(weights, dict):
        return problems
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        return [*problems, "'model_state' is not a state_dict (names to tensors)"]
    try:
        if model is not None:
            return problems + _mismatches(_expected_state(model, spec), weights, what="model_spec")
        expected, optional, owned = {}, set(), set()
        for name, entry in spec.items():
            _check_entry(name, entry)
            shapes, maybe = _layer_tensors(entry, None)
            expected.update({f"{name}.{key}": shape for key, shape in shapes.items()})
            optional.update(f"{name}.{key}" for key in maybe)
            owned.update(k for k in weights if k.rpartition(".")[0] == name)
    except _Refused as problem:
        return [*problems, f"'model_spec': {problem}"]
    return problems + _mismatches(
        expected, weights, optional=optional, owned=owned, what="model_spec"
    )


def check_run_checkpoint(state: Any, path: str | Path, model: nn.Module | None = None) -> None:
    """Refuse (CheckpointError, one line naming `path`) a loaded run checkpoint that the run
    could not continue from: a missing key or one of another type, a model_spec entry that
    is not one `shape_spec` writes, a model_state tensor missing, unexpected or of another
    shape than model_spec says. Given the run's freshly built `model`, the spec must also fit
    it (its layers, only narrowed) and model_state hold exactly the narrowed model's tensors."""
    problems = _run_checkpoint_problems(state, model)
    if problems:
        raise CheckpointError(f"{path}: not a usable run checkpoint: {_summary(problems)}")


def set_aside_checkpoint(path: str | Path, reason: object) -> Path:
    """Move an unusable checkpoint to `<name>.bad` (replacing an older one) and log a
    warning naming both files and `reason`: the run then starts over instead of failing on
    it at every re-run, and the file stays there to inspect. Returns the new path."""
    path = Path(path)
    bad = path.with_name(path.name + BAD_SUFFIX)
    why = " ".join(str(reason).split()).removeprefix(f"{path}: ")
    try:
        os.replace(path, bad)
    except OSError as error:
        raise OutputError(
            f"cannot set aside the unusable checkpoint {path} ({why}): "
            f"{error.strerror or error}; delete it to start the run over"
        ) from error
    log.warning("set aside unusable checkpoint %s as %s (%s); starting over", path, bad, why)
    return bad


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_shape: tuple[int, ...],
    *,
    opset_version: int | None = None,
    fold_batchnorm: bool = True,
) -> Path:
    """Export `model` (eval mode, on CPU) to ONNX with a dynamic batch dimension.

    Uses torch's torch.export-based exporter (needs `onnx` and `onnxscript`, the `onnx`
    extra). The spatial size is fixed to `input_shape`: a FoldedConv2d's border term is
    computed for that size and stored as a constant. `fold_batchnorm`: the exported network is
    `sparsenet.deploy.for_inference(model)`, BatchNorm folded into the convolutions before it
    (the same outputs; `model` itself is not changed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fold_batchnorm:
        from sparsenet.deploy import for_inference  # deploy imports the pruning package

        model = for_inference(model)
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
