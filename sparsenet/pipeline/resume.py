"""Re-running a command resumes it: run folders are named from the command's overrides (not
the time), so the same command finds the same folder, skips runs that completed with the same
resolved config and continues unfinished ones from their last checkpoint."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# Overrides that change where data is read or how progress is shown, not what a run computes.
IGNORED_KEYS = (
    "dataset.root",
    "dataset.download",
    "dataset.num_workers",
    "train.progress",
    "resume",
    "name",
)
MAX_DIRNAME = 120
RESOLVER = "sparsenet.dirname"


def run_dirname(overrides: Iterable[str]) -> str:
    """A folder name from the command-line overrides: sorted, ignored keys dropped, '/' made
    safe, long names cut and suffixed with a hash so they stay unique."""
    kept = sorted(
        str(o) for o in overrides if str(o).split("=", 1)[0].lstrip("+~") not in IGNORED_KEYS
    )
    name = ",".join(kept).replace("/", "_") or "defaults"
    if len(name) > MAX_DIRNAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[: MAX_DIRNAME - 11]}-{digest}"
    return name


def register_resolvers() -> None:
    """`${sparsenet.dirname:${hydra.overrides.task}}` in conf/config.yaml."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, lambda overrides: run_dirname(overrides))


def config_hash(cfg: DictConfig | dict) -> str:
    """Hash of the resolved config without the keys that do not change results."""
    resolved = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)
    resolved = json.loads(json.dumps(resolved, sort_keys=True, default=str))
    for key in IGNORED_KEYS:
        node = resolved
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]


def completed_metrics(metrics_file: Path, expected_hash: str) -> dict | None:
    """The metrics of a completed run with this config hash, else None."""
    if not metrics_file.is_file():
        return None
    try:
        metrics = json.loads(metrics_file.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if metrics.get("status") == "completed" and metrics.get("config_hash") == expected_hash:
        return metrics
    return None
