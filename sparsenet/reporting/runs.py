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

A run is summarized only when its `metrics.json` is what this version reads (`check_metrics`):
a JSON object whose "schema" version (1 when absent: runs written before it was recorded) is
at most METRICS_SCHEMA and, for a completed run, with every figure a summary reads present and
a finite number in its range. Any other run is kept with its `problem`, a one-line reason
("metrics.json: stages.train.params is 0 (must be > 0)"), and listed in failed.csv: a broken
or foreign file never stops a summary, and no value is dropped from a mean unseen.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# The version of metrics.json this sparsenet writes and reads. The writer
# (sparsenet/pipeline/run.py) records it as "schema"; a file without one is version 1.
# Raise it when a figure changes meaning or a field the summaries read is renamed or removed.
METRICS_SCHEMA = 1

METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
HYDRA_DIR = ".hydra"
COMPLETED = "completed"
UNFINISHED = "unfinished"  # no metrics.json (yet)
INVALID = "invalid"  # a metrics.json this version cannot read (see check_metrics)

# What the summaries read of a completed run (schema 1), and the allowed range of each:
# (low, high, low excluded). Every figure must be a finite number (not a boolean, not null).
ANY, POSITIVE, NOT_NEGATIVE = (None, None, False), (0, None, True), (0, None, False)
STAGE_FIGURES = {
    "test_acc": (0, 100, False),
    "params": POSITIVE,  # divides: params kept in %, compression
    "macs": POSITIVE,
    "weight_sparsity": (0, 1, False),
    "wall_s": NOT_NEGATIVE,
    "latency_ms": NOT_NEGATIVE,
}
LAYER_FIGURES = {"units_kept": NOT_NEGATIVE, "units_total": NOT_NEGATIVE}
SUMMARY_FIGURES = {
    "test_acc": (0, 100, False),
    "params_kept_pct": NOT_NEGATIVE,
    "macs_kept_pct": NOT_NEGATIVE,
    "compression": ANY,
    "mac_reduction": ANY,
    "speedup": ANY,
    "total_wall_s": NOT_NEGATIVE,
}


@dataclass
class Run:
    """One run folder and what it recorded."""

    path: Path
    metrics: dict | None = None
    overrides: dict[str, str] = field(default_factory=dict)  # key -> value as typed
    choices: dict[str, Any] = field(default_factory=dict)  # config group -> chosen file
    config: dict = field(default_factory=dict)
    problem: str | None = None  # why the run is not usable, when it is not
    invalid: bool = False  # its metrics.json cannot be read (problem says why)

    @property
    def status(self) -> str:
        if self.invalid:
            return INVALID
        if self.metrics is None:
            return UNFINISHED
        return str(self.metrics.get("status", "unknown"))

    @property
    def completed(self) -> bool:
        return self.problem is None and self.status == COMPLETED

    @property
    def stages(self) -> dict:
        stages = (self.metrics or {}).get("stages")
        return stages if isinstance(stages, dict) else {}

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
            return _parse_value(self.overrides[key])
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


def _parse_value(text: str) -> Any:
    """A value as typed on the command line, read as YAML (as Hydra reads it); text that is
    not YAML (a hand-edited record) is kept as it is."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _read_yaml(path: Path) -> Any:
    """A Hydra record; None when it is missing or unreadable (the run may still be usable:
    metrics.json holds its config)."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None


def _dig(tree: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(tree, dict):
            return None
        tree = tree.get(key)
    return tree


def parse_overrides(lines: Iterable[str]) -> dict[str, str]:
    """`['+a.b=1', 'regularizer=none', 'hydra.x=y']` -> {'a.b': '1', 'regularizer': 'none'}."""
    parsed = {}
    if not isinstance(lines, list | tuple):  # not Hydra's list of overrides: none known
        return parsed
    for line in lines:
        key, sep, value = str(line).partition("=")
        key = key.lstrip("+~")
        if sep and key and not key.startswith("hydra"):
            parsed[key] = value
    return parsed


class MetricsProblem(ValueError):
    """Why a metrics.json cannot be summarized, in one line."""


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def _show(value: Any, width: int = 40) -> str:
    """A value as it reads in the file ('abc' quoted, null, true, NaN), cut to `width`."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= width else text[: width - 1] + "…"


def _field(node: dict, key: str, where: str) -> Any:
    path = f"{where}.{key}" if where else key
    if key not in node:
        raise MetricsProblem(f"missing {path}")
    return node[key]


def _object(value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise MetricsProblem(f"{path} is not an object ({_kind(value)})")
    return value


def _number(node: dict, key: str, where: str, allowed: tuple) -> None:
    value, path = _field(node, key, where), f"{where}.{key}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MetricsProblem(f"{path}={_show(value)} is not a number")
    if not math.isfinite(value):
        raise MetricsProblem(f"{path}={_show(value)} is not a finite number")
    low, high, low_excluded = allowed
    too_low = low is not None and (value <= low if low_excluded else value < low)
    if too_low or (high is not None and value > high):
        rule = f"{low} to {high}" if high is not None else f"{'>' if low_excluded else '>='} {low}"
        raise MetricsProblem(f"{path} is {value} (must be {rule})")


def check_metrics(metrics: Any) -> None:
    """Raise MetricsProblem unless `metrics` (a parsed metrics.json) is one this version reads:
    a JSON object of schema version 1..METRICS_SCHEMA and, when its status is completed, with
    every figure the summaries read (STAGE_FIGURES per stage, LAYER_FIGURES and a name per
    layer, SUMMARY_FIGURES) present and a finite number in its range. Runs that did not
    complete are not summarized, so only their schema version is checked."""
    if not isinstance(metrics, dict):
        raise MetricsProblem(f"not a JSON object ({_kind(metrics)})")
    version = metrics.get("schema", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise MetricsProblem(f"schema version {_show(version)} is not a whole number")
    if version > METRICS_SCHEMA:
        raise MetricsProblem(
            f"schema version {version} is newer than this sparsenet reads ({METRICS_SCHEMA})"
        )
    if version < 1:
        raise MetricsProblem(f"schema version {version} is unknown (versions start at 1)")
    if metrics.get("status") != COMPLETED:
        return
    stages = _object(_field(metrics, "stages", ""), "stages")
    if not stages:
        raise MetricsProblem("stages is empty")
    for name, figures in stages.items():
        where = f"stages.{name}"
        figures = _object(figures, where)
        for key, allowed in STAGE_FIGURES.items():
            _number(figures, key, where, allowed)
        layers = _field(figures, "layers", where)
        if not isinstance(layers, list):
            raise MetricsProblem(f"{where}.layers is not a list ({_kind(layers)})")
        for index, layer in enumerate(layers):
            at = f"{where}.layers.{index}"
            layer = _object(layer, at)
            layer_name = _field(layer, "name", at)
            if not isinstance(layer_name, str) or not layer_name:
                raise MetricsProblem(f"{at}.name={_show(layer_name)} is not a layer name")
            for key, allowed in LAYER_FIGURES.items():
                _number(layer, key, at, allowed)
    summary = _object(_field(metrics, "summary", ""), "summary")
    for key, allowed in SUMMARY_FIGURES.items():
        _number(summary, key, "summary", allowed)


def one_line(text: object, width: int = 300) -> str:
    """Text on one line (whitespace runs made one space), cut to `width` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= width else line[: width - 1] + "…"


def _parse_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise MetricsProblem(f"not JSON: {one_line(error)}") from None
    except OSError as error:
        raise MetricsProblem(f"cannot be read: {error.strerror or error}") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:  # RecursionError: nested thousands deep
        raise MetricsProblem(f"not JSON: {one_line(error)}") from None


def read_metrics(path: str | Path) -> dict:
    """A metrics.json checked by check_metrics; MetricsProblem (one line) when it cannot be
    read, is not JSON, or is not what this version reads."""
    metrics = _parse_json(Path(path))
    check_metrics(metrics)
    return metrics


def load_run(path: str | Path) -> Run:
    """Read one run folder (or its metrics.json); never raises on a broken run: a metrics.json
    it cannot use makes the run `invalid`, with the reason in `problem`."""
    path = Path(path)
    if path.name == METRICS_FILE:
        path = path.parent
    run = Run(path=path)
    metrics_file = path / METRICS_FILE
    if metrics_file.is_file():
        metrics = None
        try:
            metrics = _parse_json(metrics_file)
            check_metrics(metrics)
        except MetricsProblem as problem:
            run.problem, run.invalid = f"{METRICS_FILE}: {one_line(problem)}", True
        # An object kept even when invalid: its config still names the run's settings.
        run.metrics = metrics if isinstance(metrics, dict) else None
    else:
        run.problem = f"no {METRICS_FILE}"
    hydra_dir = path / HYDRA_DIR
    run.overrides = parse_overrides(_read_yaml(hydra_dir / "overrides.yaml") or [])
    choices = _dig(_read_yaml(hydra_dir / "hydra.yaml"), "hydra", "runtime", "choices")
    if isinstance(choices, dict):
        run.choices = {str(k): v for k, v in choices.items() if not str(k).startswith("hydra/")}
    config = (run.metrics or {}).get("config")
    if not isinstance(config, dict):
        config = _read_yaml(hydra_dir / "config.yaml")
    run.config = config if isinstance(config, dict) else {}
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
    not_settings = _not_settings()
    for key in keys:
        if key in not_settings or _ignored_key(key):
            continue
        values = {_hashable(run.setting(key)) for run in runs}
        if len(values) > 1:
            swept.append(key)
    return swept


def _ignored_key(key: str) -> bool:
    """resume.ignored_key (imported here: sparsenet.pipeline may import this module)."""
    from sparsenet.pipeline.resume import ignored_key

    return ignored_key(key.lstrip("+~"))


@functools.cache
def _not_settings() -> frozenset[str]:
    """Keys that are no settings of an experiment: where data or outputs go, how progress is
    shown. (Imported here, not at the top: sparsenet.pipeline may import this module.)"""
    from sparsenet.pipeline.resume import IGNORED_KEYS

    return frozenset(IGNORED_KEYS) | {"stages"}


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
