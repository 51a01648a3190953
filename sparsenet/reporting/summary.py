"""The sweep table: one row per configuration, seeds folded into mean and standard deviation.

Per run and per stage `s` (train, prune, finetune, in the order the run wrote them):

  s.test_acc          test accuracy (%)
  s.params            parameters of the network after the stage (physically kept)
  s.params_pct        100 * s.params / params of the run's first (dense) stage
  s.macs, s.macs_pct  multiply-accumulates for one sample, and the same in % of the dense ones
  s.weight_sparsity   share of the weights that are exactly zero (0..1)
  s.units.<layer>     units (filters, neurons) kept in each Conv/Linear layer
  s.wall_s            wall time of the stage (s)
  s.latency_ms        measured forward time of one batch (ms)

With a baseline run B (say, the dense network), per run r, on the final stages:

  vs_baseline.delta_acc      r.test_acc - B.test_acc              (percentage points)
  vs_baseline.compression    B.params / r.params                  (x fewer parameters)
  vs_baseline.mac_reduction  B.macs / r.macs

Runs are grouped by the grouping keys (by default the swept keys without `seed`); each metric
column `m` becomes `m` (mean over the group) and `m_std` (sample standard deviation, n - 1 in
the denominator; empty for a single run), and `seeds` counts the runs of the group.

Only runs whose metrics.json passed `runs.check_metrics` count as completed. A completed run
whose row still cannot be built, or holds a value that is not a finite number (a hand-made
Run, a figure not checked there), goes to the failed runs with the reason, never into a mean.
"""

from __future__ import annotations

import fnmatch
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from sparsenet.reporting.runs import METRICS_FILE, Run, one_line, swept_keys

FOLDED = ("seed",)
COUNT = "seeds"
STD = "_std"
BASELINE = "vs_baseline"
STAGE_METRICS = ("test_acc", "params", "params_pct", "macs", "macs_pct", "weight_sparsity")
TIME_METRICS = ("wall_s", "latency_ms")
REASON_WIDTH = 300  # characters of a failed run's reason (one line)


@dataclass
class Summary:
    """The tables of a set of runs."""

    table: pd.DataFrame  # one row per configuration: keys, seeds, then m, m_std per metric
    keys: list[str]  # grouping keys
    metrics: list[str]  # metric columns, in order (without the _std twins)
    failed: pd.DataFrame  # failed or unfinished runs: run, status, reason, overrides, keys
    records: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per completed run
    root: Path | None = None  # run paths are shown relative to it

    @property
    def stages(self) -> list[str]:
        return list(dict.fromkeys(m.split(".", 1)[0] for m in self.metrics if m.count(".")))

    @property
    def final_stage(self) -> str | None:
        stages = [s for s in self.stages if s != BASELINE]
        return stages[-1] if stages else None


def run_metrics(run: Run) -> dict[str, float]:
    """The flat metric columns of one completed run (see the module docstring)."""
    stages = run.stages
    first = stages[next(iter(stages))]
    row: dict[str, float] = {}
    for stage, figures in stages.items():
        row[f"{stage}.test_acc"] = figures.get("test_acc")
        row[f"{stage}.params"] = figures.get("params")
        row[f"{stage}.params_pct"] = 100 * figures["params"] / first["params"]
        row[f"{stage}.macs"] = figures.get("macs")
        row[f"{stage}.macs_pct"] = 100 * figures["macs"] / first["macs"]
        row[f"{stage}.weight_sparsity"] = figures.get("weight_sparsity")
        for layer in figures.get("layers", []):
            row[f"{stage}.units.{layer['name']}"] = layer["units_kept"]
        for name in TIME_METRICS:
            row[f"{stage}.{name}"] = figures.get(name)
    return row


def baseline_metrics(run: Run, baseline: Run) -> dict[str, float]:
    """Delta accuracy and compression of a run's final stage against the baseline's final one."""
    mine, base = run.stages[run.final_stage], baseline.stages[baseline.final_stage]
    return {
        f"{BASELINE}.delta_acc": mine["test_acc"] - base["test_acc"],
        f"{BASELINE}.compression": base["params"] / mine["params"],
        f"{BASELINE}.mac_reduction": base["macs"] / mine["macs"],
    }


def build_summary(
    runs: Sequence[Run],
    group_by: Sequence[str] | None = None,
    baseline: Run | None = None,
    root: Path | None = None,
) -> Summary:
    """Group the completed runs into configurations; list the others in `failed`."""
    if baseline is not None and not baseline.completed:
        why = baseline.problem or f"status is '{baseline.status}', not completed"
        raise ValueError(f"baseline {baseline.path} cannot be used: {why}")
    checked, rows = [], []
    for run in runs:
        row, problem = _row(run, baseline) if run.completed else (None, None)
        if problem is not None:
            run = replace(run, problem=problem, invalid=True)
        elif row is not None:
            rows.append((run, row))
        checked.append(run)
    runs, done = checked, [run for run, _ in rows]
    if group_by is None:
        group_by = [k for k in swept_keys(done or runs) if k not in FOLDED]
    keys = list(group_by)
    rows = [{"run": r.label(root), **{k: r.setting(k) for k in keys}, **row} for r, row in rows]
    records = pd.DataFrame(rows, columns=["run", *keys] if not rows else None)
    metrics = [c for c in records.columns if c not in ("run", *keys)]
    return Summary(
        table=_aggregate(records, keys, metrics),
        keys=keys,
        metrics=metrics,
        failed=failed_table(runs, keys, root),
        records=records,
        root=root,
    )


def _row(run: Run, baseline: Run | None) -> tuple[dict | None, str | None]:
    """The metric columns of a completed run, or why they cannot be built from it."""
    try:
        row = run_metrics(run)
        if baseline is not None:
            row.update(baseline_metrics(run, baseline))
    except (ArithmeticError, AttributeError, KeyError, IndexError, TypeError, ValueError) as e:
        return None, f"{METRICS_FILE}: cannot be summarized: {type(e).__name__}: {e}"
    for column, value in row.items():
        if not _is_number(value):
            return None, f"{METRICS_FILE}: {column}={value!r} is not a finite number"
    return row, None


def _is_number(value: object) -> bool:
    """A finite number; None (a figure a run does not have: an empty cell) passes too."""
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return math.isfinite(value)


def _aggregate(records: pd.DataFrame, keys: list[str], metrics: list[str]) -> pd.DataFrame:
    columns = [*keys, COUNT] + [c for m in metrics for c in (m, m + STD)]
    if records.empty:
        return pd.DataFrame(columns=columns)
    # Key values may be None or mixed types: group on their text, show the values themselves.
    # (str() per cell: pandas 3's astype(str) leaves a missing value as NaN, not text.)
    labels = (
        records[keys].apply(lambda row: "\x1f".join(map(str, row)), axis=1)
        if keys
        else pd.Series(0, records.index)
    )
    rows = []
    for _, group in records.groupby(labels, sort=False):
        row = {k: group[k].iloc[0] for k in keys}
        row[COUNT] = len(group)
        for m in metrics:
            values = pd.to_numeric(group[m])  # numbers or missing (NaN): checked per run
            row[m] = values.mean()
            row[m + STD] = values.std(ddof=1) if values.count() > 1 else float("nan")
        rows.append(row)
    table = pd.DataFrame(rows, columns=columns)
    return _sort_rows(table, keys)


def _sort_rows(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    def order(value: object) -> tuple:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return (0, 0.0, "")
        if isinstance(value, bool):
            return (1, float(value), "")
        if isinstance(value, int | float):
            return (1, float(value), "")
        return (2, 0.0, str(value))

    if not keys:
        return table.reset_index(drop=True)
    ordered = sorted(table.index, key=lambda i: tuple(order(table.at[i, k]) for k in keys))
    return table.loc[ordered].reset_index(drop=True)


def failed_table(
    runs: Sequence[Run], keys: Sequence[str], root: Path | None = None
) -> pd.DataFrame:
    """Runs that did not complete: folder, status, why (one line), command-line overrides,
    grouping keys."""
    from sparsenet.pipeline.resume import describe_failure  # (sparsenet.pipeline imports us)

    rows = []
    for run in runs:
        if run.completed:
            continue
        metrics = run.metrics or {}
        reason = (
            run.problem
            or describe_failure(metrics)
            or metrics.get("error")
            or f"status is '{run.status}'"
        )
        rows.append(
            {
                "run": run.label(root),
                "status": run.status,
                "reason": one_line(reason, REASON_WIDTH),
                "overrides": " ".join(f"{k}={v}" for k, v in run.overrides.items()),
                **{k: run.setting(k) for k in keys},
            }
        )
    return pd.DataFrame(rows, columns=["run", "status", "reason", "overrides", *keys])


def select_metrics(summary: Summary, patterns: Sequence[str]) -> Summary:
    """Keep the metric columns matching any of the shell patterns ('finetune.*', '*.test_acc')."""
    chosen = [m for m in summary.metrics if any(fnmatch.fnmatchcase(m, p) for p in patterns)]
    if not chosen:
        raise ValueError(
            f"no column matches {list(patterns)}; columns: {', '.join(summary.metrics)}"
        )
    columns = [*summary.keys, COUNT] + [c for m in chosen for c in (m, m + STD)]
    return replace(summary, table=summary.table[columns], metrics=chosen)
