"""Accuracy-cost fronts per method, and numbers that compare them (issue 22).

Regularizer strengths are not on one scale, so one strength per method compares nothing; what
can be compared is each method's whole front. From a sweep summary (configurations with seeds
folded into mean ± std, `summary.py`), per method (a grouping key, `regularizer` by default):

- points: every configuration of the method, (cost, accuracy) = (mean % of the dense MACs or
  parameters kept after the final stage, mean final test accuracy), with the accuracy's seed
  std and the number of seeds;
- front: the points no other point of the same method dominates (`pareto_front`: j dominates
  i when cost_j <= cost_i and acc_j >= acc_i, one strictly), by cost ascending;
- accuracy at a budget b (% of the dense cost): linear interpolation on the front between the
  two front points whose costs enclose b, acc(b) = a_i + (a_j - a_i) (b - c_i) / (c_j - c_i);
  its spread is interpolated the same way from the two points' seed stds (an approximation:
  the seeds of neighbouring configurations are not paired). Outside the front's cost range
  there is no value (no extrapolation: a method that never reached b has no figure there);
- area: the mean of acc(b) over the cost range all methods' fronts cover, [max of their
  smallest costs, min of their largest costs], with b on a log scale (halving the cost counts
  the same anywhere: 50 -> 25% as 4 -> 2%), by the trapezoid rule on the union of the fronts'
  breakpoints, so a front that lies higher over the common range has the larger figure. With
  fewer than two methods, or no overlap, there is no area.

Every figure is computed from the summary's means, never re-fitted; the tables are written like
the sweep summary (csv, md, tex).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sparsenet.reporting.export import ensure_writable, format_cell, format_number, markdown_table
from sparsenet.reporting.summary import COUNT, STD, Summary
from sparsenet.runtime import atomic_write_bytes

MEASURES = ("macs", "params")
METHOD_KEYS = ("regularizer", "regularizer._target_")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, accuracy) that no other point dominates, by cost ascending.

    j dominates i when cost_j <= cost_i and acc_j >= acc_i, one of them strictly."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            xj <= x and yj >= y and (xj < x or yj > y)
            for j, (xj, yj) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


@dataclass
class Front:
    """One method's configurations and its front (module docstring)."""

    method: str
    points: pd.DataFrame  # cost, acc, acc_std, seeds, label, on_front; by cost
    front: pd.DataFrame = field(init=False)

    def __post_init__(self) -> None:
        pairs = list(zip(self.points["cost"], self.points["acc"], strict=True))
        chosen = pareto_front(pairs)
        self.points = self.points.assign(on_front=[i in chosen for i in range(len(pairs))])
        self.front = self.points.iloc[chosen].reset_index(drop=True)

    @property
    def cost_range(self) -> tuple[float, float]:
        return float(self.front["cost"].min()), float(self.front["cost"].max())

    def accuracy_at(self, budget: float) -> tuple[float, float] | None:
        """(accuracy, spread) interpolated on the front at `budget`; None outside its range."""
        stds = [0.0 if math.isnan(s) else s for s in self.front["acc_std"]]
        return interpolate(list(self.front["cost"]), list(self.front["acc"]), stds, budget)


def enclosing(xs: Sequence[float], x: float) -> list[int] | None:
    """Indices of the one (x = xs[i]) or two (xs[i] < x < xs[i + 1]) points of ascending `xs`
    a figure at x is read from; None outside [xs[0], xs[-1]] (nothing is extrapolated)."""
    if not xs or not xs[0] <= x <= xs[-1]:
        return None
    for i, value in enumerate(xs):
        if value == x:
            return [i]
        if value > x:
            return [i - 1, i]
    raise AssertionError("unreachable: x within the range of xs")


def interpolate(
    xs: Sequence[float], ys: Sequence[float], spreads: Sequence[float], x: float
) -> tuple[float, float] | None:
    """(y, spread) at x, linear between the enclosing points of ascending `xs`: y = y_i + t
    (y_j - y_i), t = (x - x_i) / (x_j - x_i), the spread alike; None outside their range."""
    found = enclosing(xs, x)
    if found is None:
        return None
    if len(found) == 1:
        return ys[found[0]], spreads[found[0]]
    i, j = found
    t = (x - xs[i]) / (xs[j] - xs[i])
    return ys[i] + t * (ys[j] - ys[i]), spreads[i] + t * (spreads[j] - spreads[i])


def method_key(summary: Summary, key: str | None = None) -> str | None:
    """The grouping key that names the method: `key`, else the first of METHOD_KEYS present,
    else None: the runs are one method (a search over one regularizer's strength), one front."""
    if key is not None:
        if key not in summary.keys:
            raise ValueError(
                f"--method {key} is not a grouping key of the summary "
                f"({', '.join(summary.keys) or 'none'}); add it with --group-by"
            )
        return key
    return next((k for k in METHOD_KEYS if k in summary.keys), None)


ONE_METHOD = "all runs"  # the front's name when no key tells methods apart


def build_fronts(summary: Summary, measure: str = "macs", key: str | None = None) -> list[Front]:
    """One Front per method of the summary's final stage (module docstring)."""
    if measure not in MEASURES:
        raise ValueError(f"measure {measure!r} is not one of {', '.join(MEASURES)}")
    stage = summary.final_stage
    cost, acc = f"{stage}.{measure}_pct", f"{stage}.test_acc"
    table = summary.table
    if stage is None or cost not in table or acc not in table or table.empty:
        raise ValueError(f"no completed run with {cost} and {acc} to compare")
    key = method_key(summary, key)
    others = [k for k in summary.keys if k != key]
    fronts = []
    methods = [(ONE_METHOD, table)] if key is None else table.groupby(table[key].astype(str))
    for method, group in methods:
        points = pd.DataFrame(
            {
                "cost": group[cost].astype(float),
                "acc": group[acc].astype(float),
                "acc_std": group[acc + STD].astype(float),
                "seeds": group[COUNT],
                "label": [
                    ", ".join(f"{k}={row[k]}" for k in others) for _, row in group.iterrows()
                ],
            }
        )
        points = points.sort_values(["cost", "acc"]).reset_index(drop=True)
        fronts.append(Front(str(method), points))
    return fronts


def common_range(fronts: Sequence[Front]) -> tuple[float, float] | None:
    """[max of the smallest front costs, min of the largest]; None if they do not overlap."""
    if len(fronts) < 2:
        return None
    low = max(f.cost_range[0] for f in fronts)
    high = min(f.cost_range[1] for f in fronts)
    return (low, high) if 0 < low < high else None


def mean_accuracy(front: Front, low: float, high: float, breaks: Sequence[float]) -> float:
    """Mean of acc(b) over [low, high] with b on a log scale, trapezoids on `breaks`."""
    xs = sorted({low, high, *(b for b in breaks if low < b < high)})
    area = 0.0
    for a, b in zip(xs, xs[1:], strict=False):
        ya, yb = front.accuracy_at(a)[0], front.accuracy_at(b)[0]
        area += (math.log(b) - math.log(a)) * (ya + yb) / 2
    return area / (math.log(high) - math.log(low))


def compare_fronts(
    fronts: Sequence[Front], budgets: Sequence[float] = ()
) -> tuple[pd.DataFrame, tuple[float, float] | None]:
    """One row per method: configurations, front size, cost range, mean accuracy over the
    common range, and accuracy ± spread at each budget; and the common range."""
    shared = common_range(fronts)
    breaks = sorted({float(c) for f in fronts for c in f.front["cost"]})
    rows = []
    for front in fronts:
        low, high = front.cost_range
        row = {
            "method": front.method,
            "configurations": len(front.points),
            "on_front": len(front.front),
            "cost_min": low,
            "cost_max": high,
            "mean_acc_common": (
                mean_accuracy(front, *shared, breaks) if shared is not None else float("nan")
            ),
        }
        for budget in budgets:
            found = front.accuracy_at(float(budget))
            row[f"acc_at_{budget:g}"] = found[0] if found else float("nan")
            row[f"acc_at_{budget:g}{STD}"] = found[1] if found else float("nan")
        rows.append(row)
    return pd.DataFrame(rows), shared


def front_points(fronts: Sequence[Front]) -> pd.DataFrame:
    """Every configuration of every method, marked on or off its method's front."""
    return pd.concat([f.points.assign(method=f.method) for f in fronts], ignore_index=True).loc[
        :, ["method", "label", "seeds", "cost", "acc", "acc_std", "on_front"]
    ]


def format_fronts(
    comparison: pd.DataFrame,
    points: pd.DataFrame,
    shared: tuple[float, float] | None,
    measure: str,
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Display tables (cells as text, mean ± spread) of the comparison and the points, and a
    sentence that says what the figures mean."""
    what = "MACs" if measure == "macs" else "parameters"
    display = pd.DataFrame(
        {
            "method": comparison["method"],
            "configurations": comparison["configurations"].astype(str),
            "on front": comparison["on_front"].astype(str),
            f"% {what} range": [
                f"{format_number(a, 2)}-{format_number(b, 2)}"
                for a, b in zip(comparison["cost_min"], comparison["cost_max"], strict=True)
            ],
            "mean acc over common range": [
                format_number(v, 2) for v in comparison["mean_acc_common"]
            ],
        }
    )
    for column in comparison.columns:
        if column.startswith("acc_at_") and not column.endswith(STD):
            display[f"acc at {column[len('acc_at_') :]}% {what}"] = [
                format_cell(m, s, 2)
                for m, s in zip(comparison[column], comparison[column + STD], strict=True)
            ]
    shown = pd.DataFrame(
        {
            "method": points["method"],
            "configuration": points["label"],
            "seeds": points["seeds"].astype(int).astype(str),
            f"% {what} kept": [format_number(v, 2) for v in points["cost"]],
            "accuracy": [
                format_cell(m, s, 2) for m, s in zip(points["acc"], points["acc_std"], strict=True)
            ],
            "on front": ["yes" if v else "" for v in points["on_front"]],
        }
    )
    common = (
        f"the common range is {shared[0]:.2f}-{shared[1]:.2f}% of the dense {what}"
        if shared
        else "the fronts share no cost range (or there is one method): no mean accuracy"
    )
    note = (
        f"Accuracy (%) against % of the dense network's {what} kept after the final stage, "
        f"mean ± std over seeds; each method's front: its configurations no other of the same "
        f"method beats on both. Mean acc over common range: the front's accuracy averaged over "
        f"log(cost) on the range every front covers ({common}). acc at b: interpolated "
        f"linearly on the front between the configurations around b (± the seeds' std, "
        f"interpolated), empty outside the front's range."
    )
    return display, shown, note


def write_fronts(
    comparison: pd.DataFrame,
    points: pd.DataFrame,
    shared: tuple[float, float] | None,
    measure: str,
    folder: Path,
    formats: Sequence[str],
) -> list[Path]:
    """fronts_<measure>.csv (every number: comparison, then the points), .md, .tex."""
    display, shown, note = format_fronts(comparison, points, shared, measure)
    files = {}
    stem = folder / f"fronts_{measure}"
    for fmt in formats:
        if fmt == "csv":
            data = comparison.to_csv(index=False) + "\n" + points.to_csv(index=False)
        elif fmt == "md":
            data = format_fronts_markdown(display, shown, note, measure)
        else:
            data = "\n".join(
                [
                    f"% sparsenet fronts ({measure}); needs \\usepackage{{booktabs}}",
                    display.to_latex(index=False, escape=True).replace("±", "$\\pm$"),
                    shown.to_latex(index=False, escape=True).replace("±", "$\\pm$"),
                ]
            )
        files[Path(f"{stem}.{fmt}")] = data.encode()
    ensure_writable(folder)
    for path, data in files.items():
        atomic_write_bytes(path, data)
    return list(files)


def format_fronts_markdown(
    display: pd.DataFrame, shown: pd.DataFrame, note: str, measure: str
) -> str:
    return "\n".join(
        [
            f"# Accuracy-{measure} fronts",
            "",
            note,
            "",
            "## Fronts compared",
            "",
            markdown_table(display),
            "",
            "## Every configuration",
            "",
            markdown_table(shown),
            "",
        ]
    )
