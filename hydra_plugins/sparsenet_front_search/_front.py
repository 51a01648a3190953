"""The front a search found: the study's Pareto-optimal trials (no other completed trial has
both higher accuracy and lower cost; Optuna's `best_trials`), one row per run folder, by cost.

Written into the sweep folder, and the table printed:
- `front_search.csv`: trial, each searched key as it was run, test_acc, the cost column
  (`macs_kept_pct` or `params_kept_pct`) and the run folder;
- `front_search.md`: the same table, what the study holds (completed, failed, interrupted)
  and the reason each failed trial gave.
`sparsenet-report --fronts` compares fronts over seeds from the same run folders.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from sparsenet.reporting.export import markdown_table
from sparsenet.runtime import atomic_write_bytes

from ._results import ACCURACY, COST_KEYS

FRONT_FILE = "front_search"


def searched_values(trial: optuna.trial.FrozenTrial) -> dict[str, str]:
    """The searched keys as the trial's run got them (`key=value` overrides)."""
    return dict(o.split("=", 1) for o in trial.user_attrs.get("overrides", []))


def front_table(study: optuna.Study, cost: str) -> pd.DataFrame:
    cost_key = COST_KEYS[cost]
    rows, seen = [], set()
    for trial in sorted(study.best_trials, key=lambda t: (t.values[1], -t.values[0], t.number)):
        folder = trial.user_attrs.get("run") or str(trial.number)
        if folder in seen:  # trials that shared a run folder are one point
            continue
        seen.add(folder)
        accuracy, kept = trial.values
        rows.append(
            {"trial": trial.number, **searched_values(trial), ACCURACY: accuracy, cost_key: kept}
            | {"run": trial.user_attrs.get("run", "")}
        )
    columns = ["trial", *dict.fromkeys(k for r in rows for k in r if k not in ("trial", "run"))]
    columns = [c for c in columns if c not in (ACCURACY, cost_key)] + [ACCURACY, cost_key, "run"]
    return pd.DataFrame(rows, columns=columns)


def failures(study: optuna.Study) -> list[str]:
    trials = study.get_trials(deepcopy=False)
    retries = {t.user_attrs["retry_of"]: t.number for t in trials if "retry_of" in t.user_attrs}
    lines = []
    for trial in trials:
        if trial.state != TrialState.FAIL:
            continue
        shown = " ".join(trial.user_attrs.get("overrides", [])) or "no overrides recorded"
        if trial.number in retries:
            reason = f"interrupted; asked again as trial {retries[trial.number]}"
        else:
            reason = trial.user_attrs.get("failure", "no reason recorded")
        lines.append(f"- trial {trial.number} ({shown}): {reason}")
    return lines


def write_front(
    study: optuna.Study, folder: Path, cost: str, storage: str, echo: bool = True
) -> list[Path]:
    table = front_table(study, cost)
    trials = study.get_trials(deepcopy=False)
    states = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.FAIL)}
    shown = table.copy()
    for column in (ACCURACY, COST_KEYS[cost]):
        shown[column] = shown[column].map(lambda v: f"{v:.2f}")
    title = (
        f"Front search: study {study.study_name!r}, {len(trials)} trials "
        f"({states[TrialState.COMPLETE]} completed, {states[TrialState.FAIL]} failed), "
        f"{len(table)} on the front"
    )
    lines = [
        f"# {title}",
        "",
        f"Maximize {ACCURACY}, minimize {COST_KEYS[cost]}. Storage: `{storage}`.",
        "",
        markdown_table(shown) if len(table) else "No completed trial yet.",
    ]
    failed = failures(study)
    if failed:
        lines += ["", "## Failed trials", "", *failed]
    csv_path, md_path = folder / f"{FRONT_FILE}.csv", folder / f"{FRONT_FILE}.md"
    atomic_write_bytes(csv_path, table.to_csv(index=False).encode())
    atomic_write_bytes(md_path, ("\n".join(lines) + "\n").encode())
    if echo:
        print("\n".join(lines[:5]), flush=True)
        print(f"wrote {csv_path.name}, {md_path.name} in {folder}", flush=True)
    return [csv_path, md_path]
