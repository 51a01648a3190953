"""Accuracy-cost fronts per method (sparsenet/reporting/fronts.py), against figures worked out
by hand from the documented formulas."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from sparsenet.reporting.cli import main as report_main
from sparsenet.reporting.fronts import build_fronts, common_range, compare_fronts, front_points
from sparsenet.reporting.summary import Summary

# (method, strength, cost % MACs, accuracy, accuracy std over seeds)
CONFIGS = [
    ("a", 1, 10.0, 97.0, 0.2),
    ("a", 2, 20.0, 98.0, 0.1),
    ("a", 3, 30.0, 97.5, 0.1),  # dominated by (20, 98.0)
    ("a", 4, 40.0, 99.0, 0.3),
    ("b", 1, 5.0, 96.0, 0.0),
    ("b", 2, 15.0, 98.5, 0.2),
    ("b", 3, 50.0, 99.2, 0.1),
]


def _summary() -> Summary:
    table = pd.DataFrame(
        {
            "regularizer": [c[0] for c in CONFIGS],
            "regularizer.strength": [c[1] for c in CONFIGS],
            "seeds": [3] * len(CONFIGS),
            "finetune.test_acc": [c[3] for c in CONFIGS],
            "finetune.test_acc_std": [c[4] for c in CONFIGS],
            "finetune.macs_pct": [c[2] for c in CONFIGS],
            "finetune.macs_pct_std": [0.0] * len(CONFIGS),
        }
    )
    return Summary(
        table=table,
        keys=["regularizer", "regularizer.strength"],
        metrics=["finetune.test_acc", "finetune.macs_pct"],
        failed=pd.DataFrame(),
    )


def test_each_method_has_its_own_front():
    fronts = {f.method: f for f in build_fronts(_summary(), "macs")}
    assert list(fronts["a"].front["cost"]) == [10.0, 20.0, 40.0]  # 30% is dominated
    assert list(fronts["b"].front["cost"]) == [5.0, 15.0, 50.0]
    on_front = front_points(list(fronts.values()))
    assert on_front["on_front"].sum() == 6


def test_accuracy_at_a_budget_is_interpolated_on_the_front_only():
    fronts = {f.method: f for f in build_fronts(_summary(), "macs")}
    # a at 15%: between (10, 97.0 ± 0.2) and (20, 98.0 ± 0.1), halfway
    acc, spread = fronts["a"].accuracy_at(15.0)
    assert acc == pytest.approx(97.5) and spread == pytest.approx(0.15)
    assert fronts["b"].accuracy_at(15.0) == pytest.approx((98.5, 0.2))  # on a point
    # b at 45%: 98.5 + (99.2 - 98.5) * (45 - 15) / (50 - 15)
    assert fronts["b"].accuracy_at(45.0)[0] == pytest.approx(98.5 + 0.7 * 30 / 35)
    assert fronts["a"].accuracy_at(45.0) is None  # a never went above 40%: no extrapolation
    assert fronts["a"].accuracy_at(5.0) is None


def test_mean_accuracy_over_the_common_range_by_hand():
    fronts = build_fronts(_summary(), "macs")
    assert common_range(fronts) == (10.0, 40.0)
    table, shared = compare_fronts(fronts, budgets=[15, 45])
    rows = {r["method"]: r for r in table.to_dict("records")}
    # breakpoints inside [10, 40]: 15 and 20 (the fronts' costs); trapezoids on log(cost)
    a = {10: 97.0, 15: 97.5, 20: 98.0, 40: 99.0}
    b = {10: 96.0 + 2.5 * 5 / 10, 15: 98.5, 20: 98.5 + 0.7 * 5 / 35, 40: 98.5 + 0.7 * 25 / 35}

    def mean(acc):
        xs = [10, 15, 20, 40]
        area = sum(
            (math.log(x1) - math.log(x0)) * (acc[x0] + acc[x1]) / 2
            for x0, x1 in zip(xs, xs[1:], strict=False)
        )
        return area / math.log(4)

    assert rows["a"]["mean_acc_common"] == pytest.approx(mean(a))
    assert rows["b"]["mean_acc_common"] == pytest.approx(mean(b))
    assert rows["b"]["mean_acc_common"] > rows["a"]["mean_acc_common"]  # b lies higher
    assert rows["a"]["acc_at_15"] == pytest.approx(97.5)
    assert math.isnan(rows["a"]["acc_at_45"])
    assert (rows["a"]["configurations"], rows["a"]["on_front"]) == (4, 3)


def test_one_method_has_no_common_range():
    summary = _summary()
    summary.table = summary.table[summary.table["regularizer"] == "a"]
    table, shared = compare_fronts(build_fronts(summary, "macs"))
    assert shared is None and math.isnan(table["mean_acc_common"][0])


def test_runs_of_one_method_form_one_front_without_a_method_key():
    """A search over one regularizer's strength: no key tells methods apart, all its
    configurations are one front."""
    summary = _summary()
    summary.table = summary.table[summary.table["regularizer"] == "a"].drop(columns="regularizer")
    summary.keys = ["regularizer.strength"]
    (front,) = build_fronts(summary, "macs")
    assert front.method == "all runs"
    assert list(front.front["cost"]) == [10.0, 20.0, 40.0]


def test_a_method_key_that_is_not_grouped_is_a_clear_error():
    with pytest.raises(ValueError, match="--method optimizer is not a grouping key"):
        build_fronts(_summary(), "macs", key="optimizer")


@pytest.mark.slow  # a real sweep (~16 s): the fast tests above cover the figures
@pytest.mark.usefixtures("one_torch_thread")
def test_report_writes_front_tables_and_plot_from_a_sweep(sparsenet_cli, tmp_path):
    proc = sparsenet_cli(
        "-m",
        "experiment=smoke",
        "regularizer=group_lasso,ssl",
        "regularizer.strength=1e-4,3e-2",
        "train.epochs=1",
        "finetune.epochs=0",
        "dataset.train_size=64",
        "dataset.test_size=32",
        "report.latency_repeats=1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "report"
    code = report_main(
        [str(tmp_path / "sweep"), "--fronts", "macs", "--budgets", "50", "--out", str(out)]
        + ["--plot", "fronts-macs"]
    )
    assert code == 0
    text = (out / "fronts_macs.md").read_text()
    assert "| group_lasso |" in text and "| ssl |" in text
    assert (out / "fronts_macs.png").read_bytes().startswith(b"\x89PNG")
    csv_text = (out / "fronts_macs.csv").read_text()
    assert csv_text.startswith("method,configurations,on_front,cost_min,cost_max")
