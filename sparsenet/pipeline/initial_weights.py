"""`model.weights`: start a run from trained weights instead of a random initialisation.

The field's usual recipe (and the SSL paper's) compresses a network that is already trained:
train it once, then regularize from its weights, prune and fine-tune. `model.weights` takes

- a sparsenet run folder, or its `model/` folder: the network that run saved (dense, or
  already pruned: the model is narrowed to its layer shapes first). The run's model config
  (registry name and builder options) must be this run's;
- a plain `state_dict` file (`.pt` / `.pth`), loaded with `weights_only=True` (a file that
  would run code when unpickled is refused): its keys and shapes must be the model's;
- for `model=torchvision`, the name of torchvision's pretrained weights of `model.arch`
  (`IMAGENET1K_V1`, `IMAGENET1K_V2`, `DEFAULT`, ...): the file is taken from torch hub's cache
  (`<torch hub dir>/checkpoints/`, `$TORCH_HOME/hub` by default), downloaded there when it is
  missing and the network allows; offline, one line says where to put it.

A file made for another head or stem is fitted to the model (`fit_state`), each change logged:
- the classifier (the last Conv2d/Linear, `sparsenet.pruning.groups.output_layers`) of
  another number of classes is replaced: the model's freshly initialised layer is kept, every
  other layer comes from the file;
- a 3-channel (RGB) stem fitted to 1-channel (grey) input gets the sum of its three input
  kernels: w'[o, 0] = w[o, 0] + w[o, 1] + w[o, 2], the same function as feeding the grey image
  to all three channels;
- structural buffers that are not learned (`ChannelSelect.index`, sparsenet's routing of a
  channel shuffle) keep the model's values.
Any other difference is a mismatch.

Everything is checked when the config is parsed (the file exists and has a known form) and
when the model is built (keys and shapes, before any data is read); a mismatch names the
layer and both shapes. Paths in run folders contain `=` (their names come from overrides):
quote the value on the command line, `'model.weights="outputs/runs/default/seed=1"'`.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from sparsenet.checkpoint import load_pruned
from sparsenet.errors import CheckpointError, ConfigError, UserInputError
from sparsenet.pruning.channel_select import ChannelSelect
from sparsenet.pruning.groups import output_layers

log = logging.getLogger(__name__)

KEY = "model.weights"
SPEC_FILE = "model_spec.json"  # what a sparsenet `model/` folder holds (sparsenet/checkpoint.py)
STATE_SUFFIXES = (".pt", ".pth")
ALLOWED = (
    "null, a sparsenet run folder (or its model/ folder), a .pt/.pth state_dict file, or "
    "(model=torchvision) a torchvision weights name such as IMAGENET1K_V1"
)
# IMAGENET1K_V1, DEFAULT, or the enum's full name MobileNet_V2_Weights.IMAGENET1K_V1
WEIGHTS_NAME = re.compile(r"^(?:[A-Za-z0-9_]+_Weights\.)?([A-Z][A-Z0-9_]*)$")


@dataclass(frozen=True)
class PretrainedWeights:
    """torchvision's pretrained weights `name` of the architecture `arch` (module docstring)."""

    arch: str
    name: str

    @property
    def entry(self):  # the torchvision WeightsEnum member (url, meta)
        import torchvision

        return torchvision.models.get_model_weights(self.arch)[self.name]

    @property
    def cached_file(self) -> Path:
        """Where torch hub keeps (and looks for) the file."""
        filename = Path(urlparse(self.entry.url).path).name
        return Path(torch.hub.get_dir()) / "checkpoints" / filename

    def __str__(self) -> str:
        return f"{self.arch} {self.name}"


def _pretrained(value: str, model_node: dict) -> PretrainedWeights:
    """The torchvision weights `value` names for this model (checked, nothing downloaded)."""
    name = WEIGHTS_NAME.match(value).group(1)
    if model_node.get("name") != "torchvision":
        raise ConfigError(
            KEY,
            value,
            "names torchvision pretrained weights, which only model=torchvision has",
            ALLOWED,
        )
    import torchvision

    arch = model_node.get("arch")
    try:
        names = list(torchvision.models.get_model_weights(arch).__members__)
    except (KeyError, ValueError, TypeError):  # the arch itself is refused with its own line
        names = []
    if name not in names:
        raise ConfigError(
            KEY, value, f"is not a pretrained weights name of {arch}", ", ".join(names) or None
        )
    return PretrainedWeights(str(arch), name)


def resolve_init(value: Any, model_node: dict | None = None) -> Path | PretrainedWeights | None:
    """The file, `model/` folder or torchvision weights `model.weights` names (None: random
    initialisation); `model_node` is the model config (its name and arch)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(KEY, value, "must be a path", ALLOWED)
    path = Path(value).expanduser()
    if WEIGHTS_NAME.match(value) and not path.exists():
        return _pretrained(value, model_node or {})
    if path.is_dir() and (path / "model" / SPEC_FILE).is_file():
        return path / "model"
    if path.is_dir() and (path / SPEC_FILE).is_file():
        return path
    if path.is_file() and path.suffix in STATE_SUFFIXES:
        return path
    reason = "does not exist" if not path.exists() else "is not a run folder or a state_dict file"
    raise ConfigError(KEY, value, reason, ALLOWED)


def _state_mismatches(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = [
        f"{k}: missing from the file (the model has {list(s)})"
        for k, s in expected.items()
        if k not in state
    ]
    problems += [f"{k}: not a parameter of this model" for k in state if k not in expected]
    problems += [
        f"{k}: the file has {list(state[k].shape)}, the model {list(s)}"
        for k, s in expected.items()
        if k in state and tuple(state[k].shape) != s
    ]
    return problems


def _load_state_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - an unpickling refusal or a damaged file
        raise CheckpointError(
            f"{KEY}: {path} is not a loadable state_dict (only tensors and plain data are "
            f"read): {' '.join(str(error).split())[:200]}"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # the common {"state_dict": ...} wrapping
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{KEY}: {path} holds no state_dict (a dict of tensors)")
    return state


def _download(weights: PretrainedWeights) -> Path:
    """The cached file of `weights`, downloaded (hash-checked) when it is missing."""
    target = weights.cached_file
    if target.is_file():
        return target
    url = weights.entry.url
    target.parent.mkdir(parents=True, exist_ok=True)
    found = torch.hub.HASH_REGEX.search(target.name)
    log.info("model.weights: downloading %s to %s", url, target)
    try:
        torch.hub.download_url_to_file(url, str(target), found.group(1) if found else None)
    except Exception as error:  # noqa: BLE001 - no network, a proxy, a failed hash
        raise UserInputError(
            f"{KEY}={weights.name}: cannot download {url} "
            f"({' '.join(str(error).split())[:120]}); put that file at {target} "
            f"(torch hub's cache; TORCH_HOME moves it) or set {KEY} to a local copy of it"
        ) from None
    return target


def _stem_key(model: nn.Module) -> str | None:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return f"{name}.weight"
    return None


def fit_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` fitted to `model`'s classifier, stem and routing buffers (module docstring),
    each change logged; the other entries are returned as they are."""
    own = model.state_dict()
    state = dict(state)
    names = {module: name for name, module in model.named_modules()}
    head = output_layers(model)
    if head:
        prefix = names[head[0]]
        weight = f"{prefix}.weight"
        theirs, ours = state.get(weight), own.get(weight)
        if (
            theirs is not None
            and ours is not None
            and theirs.shape[0] != ours.shape[0]
            and theirs.shape[1:] == ours.shape[1:]
        ):
            for key in (weight, f"{prefix}.bias"):
                if key in own and key in state:
                    state[key] = own[key]
            log.info(
                "model.weights: classifier %s replaced (%d classes in the file, %d here; "
                "freshly initialised)",
                prefix,
                theirs.shape[0],
                ours.shape[0],
            )
    stem = _stem_key(model)
    theirs, ours = state.get(stem), own.get(stem)
    if (
        theirs is not None
        and ours is not None
        and theirs.dim() == 4
        and (theirs.shape[1], ours.shape[1]) == (3, 1)
        and theirs.shape[0] == ours.shape[0]
        and theirs.shape[2:] == ours.shape[2:]
    ):
        state[stem] = theirs.sum(dim=1, keepdim=True)
        log.info("model.weights: %s: RGB kernels summed for 1-channel input", stem)
    for name, module in model.named_modules():
        if isinstance(module, ChannelSelect) and f"{name}.index" not in state:
            state[f"{name}.index"] = own[f"{name}.index"]
    return state


def apply_init(
    model: nn.Module, path: Path | PretrainedWeights | None, model_config: dict
) -> nn.Module:
    """`model` with the weights `path` names (module docstring); the model itself if None.
    A run folder's model may be narrower (pruned): the returned model then has its shapes."""
    if path is None:
        return model
    if isinstance(path, PretrainedWeights):
        state = fit_state(model, _load_state_file(_download(path)))
        problems = _state_mismatches(model, state)
        if problems:
            raise ConfigError(KEY, path.name, f"does not fit the model: {'; '.join(problems[:3])}")
        model.load_state_dict(state)
        log.info("model.weights: torchvision's %s weights of %s", path.name, path.arch)
        return model
    if path.is_dir():
        spec = json.loads((path / SPEC_FILE).read_text())
        theirs = spec.get("model") if isinstance(spec, dict) else None
        if theirs != model_config:
            raise ConfigError(
                KEY,
                str(path),
                f"holds a model built as {theirs}, not as this run's {model_config}",
                "a run folder of the same model config",
            )
        loaded = load_pruned(path)
        log.info("model.weights: weights of %s (%s)", path, model_config.get("name"))
        return loaded
    state = fit_state(model, _load_state_file(path))
    problems = _state_mismatches(model, state)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ConfigError(
            KEY, str(path), f"does not fit the model: {'; '.join(problems[:3])}{more}"
        )
    model.load_state_dict(state)
    log.info("model.weights: weights of %s", path)
    return model
