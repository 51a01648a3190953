"""Figures of a sweep, as PNG and PDF (matplotlib's Agg canvas; no display needed).

- accuracy versus parameters (or MACs) kept, one series per regularizer, mean ± std over
  seeds, with the Pareto front: the configurations no other one beats on both axes (fewer
  parameters kept and at least the accuracy, one of the two strictly);
- fronts: every configuration of every method and each method's own front (fronts.py);
- units kept per layer of chosen runs, beside the dense network's;
- training curves of chosen runs from their history.csv: loss, accuracy, regularizer value
  and, when the history has a column for it, the share of zero groups.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sparsenet.reporting.fronts import Front, pareto_front
from sparsenet.reporting.runs import HISTORY_FILE, Run, swept_keys
from sparsenet.reporting.summary import STD, Summary
from sparsenet.runtime import atomic_write_bytes

FIGURE_FORMATS = ("png", "pdf")
SERIES_KEYS = ("regularizer", "regularizer._target_")


def save_figure(fig: Figure, stem: str | Path) -> list[Path]:
    """Write stem.png and stem.pdf atomically; return their paths."""
    stem = Path(stem)
    FigureCanvasAgg(fig)
    paths = []
    for fmt in FIGURE_FORMATS:
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=150, bbox_inches="tight")
        path = stem.parent / f"{stem.name}.{fmt}"
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths


def _series_key(summary: Summary) -> str | None:
    return next((k for k in SERIES_KEYS if k in summary.keys), None)


def plot_accuracy_vs_kept(
    summary: Summary, stem: str | Path, measure: str = "params"
) -> list[Path]:
    """Final-stage accuracy against the % of parameters ('params') or MACs ('macs') kept."""
    stage = summary.final_stage
    x_col, y_col = f"{stage}.{measure}_pct", f"{stage}.test_acc"
    table = summary.table
    if stage is None or x_col not in table or y_col not in table or table.empty:
        raise ValueError(f"no completed run with {x_col} and {y_col} to plot")
    series = _series_key(summary)
    labels = [k for k in summary.keys if k != series]
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    groups = table.groupby(table[series].astype(str), sort=True) if series else [("runs", table)]
    for name, group in groups:
        ax.errorbar(
            group[x_col],
            group[y_col],
            xerr=group[x_col + STD].fillna(0),
            yerr=group[y_col + STD].fillna(0),
            fmt="o",
            capsize=3,
            label=str(name),
        )
        for _, row in group.iterrows():
            text = ", ".join(str(row[k]) for k in labels)
            if text:
                ax.annotate(text, (row[x_col], row[y_col]), fontsize=7, xytext=(4, 4),
                            textcoords="offset points")  # fmt: skip
    points = list(zip(table[x_col], table[y_col], strict=True))
    front = pareto_front(points)
    ax.step(
        [points[i][0] for i in front],
        [points[i][1] for i in front],
        where="post",
        color="black",
        linestyle="--",
        linewidth=1,
        label="Pareto front",
    )
    ax.scatter(
        [points[i][0] for i in front],
        [points[i][1] for i in front],
        s=140,
        facecolors="none",
        edgecolors="black",
    )
    xs = [p[0] for p in points if p[0] > 0]
    if xs and max(xs) / min(xs) > 10:
        ax.set_xscale("log")
    what = "parameters" if measure == "params" else "MACs"
    ax.set_xlabel(f"{what} kept after {stage} (% of dense)")
    ax.set_ylabel(f"test accuracy after {stage} (%)")
    ax.set_title(f"accuracy vs {what} kept")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, title=series)
    return save_figure(fig, stem)


def run_labels(runs: Sequence[Run], root: Path | None = None) -> list[str]:
    """Short legend labels: the settings that differ between the runs ('strength=0.01, seed=1'),
    else the run folders."""
    keys = swept_keys(runs)
    if keys:
        return [", ".join(f"{k.rsplit('.', 1)[-1]}={r.setting(k)}" for k in keys) for r in runs]
    labels = [r.label(root) for r in runs]
    return [label if len(label) <= 48 else "…" + label[-47:] for label in labels]


def plot_units_per_layer(
    runs: Sequence[Run], stem: str | Path, root: Path | None = None, stage: str | None = None
) -> list[Path]:
    """Units kept per Conv/Linear layer after `stage` (default: each run's final stage)."""
    runs = [r for r in runs if r.completed]
    if not runs:
        raise ValueError("no completed run to plot units for")
    layers = [layer["name"] for layer in runs[0].stages[stage or runs[0].final_stage]["layers"]]
    fig = Figure(figsize=(max(6.4, 0.9 * len(layers) + 2), 4.4))
    ax = fig.add_subplot()
    width = 0.8 / (len(runs) + 1)
    dense = runs[0].stages[runs[0].final_stage]["layers"]
    positions = range(len(layers))
    ax.bar(
        [p - 0.4 + width / 2 for p in positions],
        [layer["units_total"] for layer in dense],
        width,
        color="lightgray",
        edgecolor="gray",
        label="dense",
    )
    for k, (run, label) in enumerate(zip(runs, run_labels(runs, root), strict=True), start=1):
        by_name = {layer["name"]: layer for layer in run.stages[stage or run.final_stage]["layers"]}
        ax.bar(
            [p - 0.4 + width / 2 + k * width for p in positions],
            [by_name.get(name, {}).get("units_kept", 0) for name in layers],
            width,
            label=label,
        )
    ax.set_xticks(list(positions), layers, rotation=45 if len(layers) > 6 else 0, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("units kept (filters / neurons)")
    ax.set_title(f"units kept per layer ({stage or 'final stage'})")
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    return save_figure(fig, stem)


def zero_group_columns(history: pd.DataFrame) -> list[str]:
    """History columns that hold a share of zero groups (or group sparsity), if any."""
    return [c for c in history.columns if "zero" in c.lower() or "group_sparsity" in c.lower()]


def plot_training_curves(
    runs: Sequence[Run], stem: str | Path, root: Path | None = None
) -> list[Path]:
    """Per epoch (train then fine-tune, one axis): loss, accuracy, regularizer, zero groups."""
    histories = []
    for run in runs:
        path = run.path / HISTORY_FILE
        if path.is_file():
            history = pd.read_csv(path)
            if not history.empty:
                histories.append((run, history))
    if not histories:
        raise ValueError(f"none of the {len(runs)} chosen runs has a {HISTORY_FILE}")
    zero_cols = list(dict.fromkeys(c for _, h in histories for c in zero_group_columns(h)))
    panels = [("loss (solid: train, dashed: test)", ["loss", "test_loss"])]
    panels.append(("accuracy % (solid: train, dashed: test)", ["train_acc", "test_acc"]))
    panels.append(("regularizer value", ["reg"]))
    if zero_cols:
        panels.append(("share of zero groups", zero_cols))
    rows = (len(panels) + 1) // 2
    fig = Figure(figsize=(10, 3.2 * rows + 0.4 * len(histories)))
    axes = [fig.add_subplot(rows, 2, i + 1) for i in range(len(panels))]
    labels = run_labels([run for run, _ in histories], root)
    for k, ((_, history), label) in enumerate(zip(histories, labels, strict=True)):
        x = range(1, len(history) + 1)  # epochs of every stage, one after the other
        for ax, (_, columns) in zip(axes, panels, strict=True):
            for n, column in enumerate(c for c in columns if c in history):
                ax.plot(
                    x,
                    history[column],
                    color=f"C{k % 10}",
                    linestyle=("-", "--", ":")[n % 3],
                    marker="." if len(history) < 30 else None,
                    label=label if ax is axes[0] and n == 0 else None,
                )
        if "stage" in history:
            starts = history.index[history["stage"] != history["stage"].shift()].tolist()
            for ax in axes:
                for start in starts[1:]:
                    ax.axvline(start + 0.5, color="gray", linestyle=":", linewidth=1)
    for ax, (title, _) in zip(axes, panels, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch (train, then fine-tune)")
        ax.grid(True, alpha=0.3)
    fig.legend(loc="lower center", ncol=2, fontsize=7, bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.05 + 0.02 * len(histories), 1, 1))
    return save_figure(fig, stem)


def plot_fronts(fronts: Sequence[Front], stem: str | Path, measure: str = "macs") -> list[Path]:
    """Every configuration (mean ± std over seeds), each method's front as a step line with
    its points ringed (sparsenet.reporting.fronts)."""
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    for front in fronts:
        points = front.points
        bars = ax.errorbar(
            points["cost"],
            points["acc"],
            yerr=points["acc_std"].fillna(0),
            fmt="o",
            capsize=3,
            alpha=0.6,
            label=front.method,
        )
        color = bars[0].get_color()
        ax.step(front.front["cost"], front.front["acc"], where="post", color=color, linewidth=1.5)
        ax.scatter(
            front.front["cost"], front.front["acc"], s=120, facecolors="none", edgecolors=color
        )
    costs = [c for f in fronts for c in f.points["cost"] if c > 0]
    if costs and max(costs) / min(costs) > 10:
        ax.set_xscale("log")
    what = "parameters" if measure == "params" else "MACs"
    ax.set_xlabel(f"{what} kept (% of dense)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"accuracy-{what} front per method (fronts ringed)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, stem)
