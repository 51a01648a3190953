"""`model.weights`: start a run from trained weights instead of a random initialisation.

The field's usual recipe (and the SSL paper's) compresses a network that is already trained:
train it once, then regularize from its weights, prune and fine-tune. `model.weights` takes

- a sparsenet run folder, or its `model/` folder: the network that run saved (dense, or
  already pruned: the model is narrowed to its layer shapes first). The run's model config
  (registry name and builder options) must be this run's;
- a plain `state_dict` file (`.pt` / `.pth`), loaded with `weights_only=True` (a file that
  would run code when unpickled is refused): its keys and shapes must be the model's.

Everything is checked when the config is parsed (the file exists and has a known form) and
when the model is built (keys and shapes, before any data is read); a mismatch names the
layer and both shapes. Paths in run folders contain `=` (their names come from overrides):
quote the value on the command line, `'model.weights="outputs/runs/default/seed=1"'`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsenet.checkpoint import load_pruned
from sparsenet.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

KEY = "model.weights"
SPEC_FILE = "model_spec.json"  # what a sparsenet `model/` folder holds (sparsenet/checkpoint.py)
STATE_SUFFIXES = (".pt", ".pth")
ALLOWED = "null, a sparsenet run folder (or its model/ folder), or a .pt/.pth state_dict file"


def resolve_init(value: Any) -> Path | None:
    """The file or `model/` folder `model.weights` names (None: random initialisation)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(KEY, value, "must be a path", ALLOWED)
    path = Path(value).expanduser()
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


def apply_init(model: nn.Module, path: Path | None, model_config: dict) -> nn.Module:
    """`model` with the weights `path` names (module docstring); the model itself if None.
    A run folder's model may be narrower (pruned): the returned model then has its shapes."""
    if path is None:
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
    state = _load_state_file(path)
    problems = _state_mismatches(model, state)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ConfigError(
            KEY, str(path), f"does not fit the model: {'; '.join(problems[:3])}{more}"
        )
    model.load_state_dict(state)
    log.info("model.weights: weights of %s", path)
    return model
