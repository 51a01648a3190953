"""Finding runs on disk and reading what they were: results, status and settings.

A run folder is any folder holding a `metrics.json` or Hydra's `.hydra/overrides.yaml` (a run
that started but wrote no results yet). Folders are searched recursively, so a sweep folder,
several sweeps, or a tree copied back from a cluster all work.

A run's *settings* are looked up by key, in this order (a documented choice):
  1. the config-group choice Hydra recorded (`.hydra/hydra.yaml`: `regularizer` -> `none`),
  2. the value in the run's resolved config (`metrics.json` "config", else `.hydra/config.yaml`),
  3. the value written on the command line (`.hydra/overrides.yaml`).
The *swept keys* of a set of runs are the overridden keys whose values differ between runs;
runs without Hydra records fall back to every config key whose value differs.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sparsenet.pipeline.resume import IGNORED_KEYS

METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
HYDRA_DIR = ".hydra"
COMPLETED = "completed"
# Not settings of an experiment: where data or outputs go, how progress is shown.
NOT_SETTINGS = frozenset(IGNORED_KEYS) | {"stages"}


@dataclass
class Run:
    """One run folder and what it recorded."""

    path: Path
    metrics: dict | None = None
    overrides: dict[str, str] = field(default_factory=dict)  # key -> value as typed
    choices: dict[str, Any] = field(default_factory=dict)  # config group -> chosen file
    config: dict = field(default_factory=dict)
    problem: str | None = None  # why the run is not usable, when it is not

    @property
    def status(self) -> str:
        if self.metrics is None:
            return "unfinished"
        return str(self.metrics.get("status", "unknown"))

    @property
    def completed(self) -> bool:
        return self.problem is None and self.status == COMPLETED

    @property
    def stages(self) -> dict:
        return (self.metrics or {}).get("stages", {})

    @property
    def final_stage(self) -> str | None:
        return list(self.stages)[-1] if self.stages else None

    def setting(self, key: str) -> Any:
        """The value of one setting (see the module docstring for the lookup order)."""
        if key in self.choices:
            return self.choices[key]
        found, value = _lookup(self.config, key)
        if found and not isinstance(value, dict | list):
            return value
        if key in self.overrides:
            return yaml.safe_load(self.overrides[key])
        return _hashable(value) if found else None

    def label(self, root: Path | None = None) -> str:
        """The run folder, relative to root when it lies under it."""
        if root is not None:
            try:
                return self.path.relative_to(root).as_posix() or "."
            except ValueError:
                pass
        return self.path.as_posix()


def _lookup(tree: dict, key: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def parse_overrides(lines: Iterable[str]) -> dict[str, str]:
    """`['+a.b=1', 'regularizer=none', 'hydra.x=y']` -> {'a.b': '1', 'regularizer': 'none'}."""
    parsed = {}
    for line in lines:
        key, sep, value = str(line).partition("=")
        key = key.lstrip("+~")
        if sep and key and not key.startswith("hydra"):
            parsed[key] = value
    return parsed


def load_run(path: str | Path) -> Run:
    """Read one run folder (or its metrics.json); never raises on a broken run."""
    path = Path(path)
    if path.name == METRICS_FILE:
        path = path.parent
    run = Run(path=path)
    metrics_file = path / METRICS_FILE
    if metrics_file.is_file():
        try:
            run.metrics = json.loads(metrics_file.read_text())
        except (OSError, ValueError) as error:
            run.problem = f"unreadable {METRICS_FILE}: {error}"
        if run.metrics is not None and not isinstance(run.metrics, dict):
            run.metrics, run.problem = None, f"{METRICS_FILE} is not a JSON object"
    else:
        run.problem = f"no {METRICS_FILE}"
    hydra_dir = path / HYDRA_DIR
    run.overrides = parse_overrides(_read_yaml(hydra_dir / "overrides.yaml") or [])
    hydra_cfg = _read_yaml(hydra_dir / "hydra.yaml") or {}
    choices = ((hydra_cfg.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    run.choices = {k: v for k, v in choices.items() if not k.startswith("hydra/")}
    config = (run.metrics or {}).get("config")
    run.config = (
        config if isinstance(config, dict) else (_read_yaml(hydra_dir / "config.yaml") or {})
    )
    if run.problem is None and run.status == COMPLETED and not run.stages:
        run.problem = f"{METRICS_FILE} has no stages"
    return run


def _is_run_dir(folder: Path, files: Sequence[str]) -> bool:
    return METRICS_FILE in files or (folder / HYDRA_DIR / "overrides.yaml").is_file()


def find_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Every run folder under the given folders (or metrics.json files), sorted by path."""
    found: dict[Path, None] = {}
    for top in paths:
        top = Path(top)
        if top.is_file():
            found[top.parent.resolve()] = None
            continue
        if not top.is_dir():
            raise FileNotFoundError(f"{top}: no such folder or file")
        for folder, dirnames, files in os.walk(top):
            here = Path(folder)
            if _is_run_dir(here, files):
                found[here.resolve()] = None
                dirnames[:] = []  # a run's own subfolders (model/) hold no runs
            else:
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return [load_run(p) for p in sorted(found)]


def swept_keys(runs: Sequence[Run]) -> list[str]:
    """The settings whose values differ between the runs, in command-line order."""
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(run.overrides))
    if not keys:  # no Hydra records: compare the configs themselves
        for run in runs:
            keys.update(dict.fromkeys(_leaf_keys(run.config)))
    swept = []
    for key in keys:
        if key in NOT_SETTINGS:
            continue
        values = {_hashable(run.setting(key)) for run in runs}
        if len(values) > 1:
            swept.append(key)
    return swept


def _leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            keys.extend(_leaf_keys(value, key + "."))
        else:
            keys.append(key)
    return keys


def select_runs(
    runs: Sequence[Run], patterns: Sequence[str] | None, root: Path | None = None
) -> list[Run]:
    """The completed runs whose folder (relative to root, or absolute) or command-line
    overrides ('a=1,b=2', sorted) match a shell pattern; all completed runs without patterns."""
    done = [r for r in runs if r.completed]
    if not patterns:
        return done

    def names(run: Run) -> tuple[str, ...]:
        overrides = ",".join(sorted(f"{k}={v}" for k, v in run.overrides.items()))
        return run.label(root), run.path.as_posix(), overrides

    return [r for r in done if any(fnmatch.fnmatchcase(n, p) for n in names(r) for p in patterns)]
