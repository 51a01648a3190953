"""Verdicts on the papers' claims (sparsenet/reporting/verdicts.py), on hand-made runs, against
figures worked out by hand from the documented formulas and rule."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from sparsenet.reporting.fronts import Front
from sparsenet.reporting.runs import Run
from sparsenet.reporting.verdicts import (
    BETTER,
    CLAIMS,
    MIXED,
    NOT_ENOUGH,
    NOT_REPRODUCED,
    REPRODUCED,
    TIE,
    WORSE,
    Claim,
    cost_at_accuracy,
    judge,
    render_verdicts,
    without_verdicts,
)

DENSE = 1000  # parameters (and MACs) of every hand-made dense network


def make_run(
    method: str,
    strength: float,
    seed: int,
    acc: float,
    cost: float,
    bundle: str = "x",
    dataset: str = "mnist",
    key: str = "regularizer",
    extra: dict | None = None,
) -> Run:
    """A completed run: train stage dense, prune stage at `cost` % of the parameters and MACs
    with test accuracy `acc`; layers conv1 (5 filters kept) and conv2 (cost - 5 kept), so the
    filters kept (conv*) are `cost` too."""

    def stage(params: float, test_acc: float, conv2: float) -> dict:
        return {
            "test_acc": test_acc,
            "params": params,
            "macs": params,
            "weight_sparsity": 0.0,
            "wall_s": 1.0,
            "latency_ms": 1.0,
            "layers": [
                {"name": "conv1", "units_kept": 5, "units_total": 20},
                {"name": "conv2", "units_kept": conv2, "units_total": 50},
                {"name": "fc1", "units_kept": 100, "units_total": 100},
            ],
        }

    metrics = {
        "status": "completed",
        "stages": {
            "train": stage(DENSE, 99.5, 45),
            "prune": stage(DENSE * cost / 100, acc, cost - 5),
        },
    }
    overrides = {"regularizer.strength": str(strength), "seed": str(seed), **(extra or {})}
    choices = {"experiment": bundle, "dataset": dataset, key: method}
    if key == "experiment":
        choices = {"experiment": method, "dataset": dataset, "regularizer": "x"}
        overrides["experiment"] = method
    else:
        overrides[key] = method
    config = {"seed": seed, "regularizer": {"strength": strength}}
    name = ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    return Run(
        path=Path(name), metrics=metrics, overrides=overrides, choices=choices, config=config
    )


def configs(method: str, points, seeds: int = 3, **kwargs) -> list[Run]:
    """Runs of one method: per (cost, acc) point a configuration of `seeds` seeds whose costs
    are cost - 1, cost, cost + 1 (std 1) and accuracies acc - 0.1, acc, acc + 0.1 (std 0.1)."""
    runs = []
    for index, (cost, acc) in enumerate(points):
        for seed in range(seeds):
            shift = seed - 1 if seeds == 3 else 0
            runs.append(
                make_run(method, index + 1, seed, acc + 0.1 * shift, cost + shift, **kwargs)
            )
    return runs


def claim(levels=(98.0, 99.0), matched: str = "accuracy", **kwargs) -> Claim:
    return Claim(
        id="t",
        title="T",
        text="a beats b",
        bundles=("x",),
        method_key="regularizer",
        pairs=(("a", "b"),),
        cost=kwargs.pop("cost", "params_pct"),
        cost_label="% parameters kept",
        matched=matched,
        levels=levels,
        commands=("sparsenet -m experiment=x",),
        **kwargs,
    )


A_FRONT = [(10, 97.0), (20, 98.0), (30, 98.5), (40, 99.0), (50, 99.2)]
B_FRONT = [(20, 97.0), (40, 98.0), (60, 98.5), (80, 99.0), (100, 99.2)]


def test_cost_at_accuracy_interpolates_between_front_points():
    points = pd.DataFrame(
        {
            "cost": [10.0, 20.0, 30.0, 40.0],
            "cost_std": [1.0, 2.0, 9.0, 4.0],
            "acc": [97.0, 98.0, 97.5, 99.0],  # (30, 97.5) is dominated by (20, 98.0)
            "acc_std": [0.1] * 4,
            "seeds": [3] * 4,
            "label": ["s=1", "s=2", "s=3", "s=4"],
        }
    )
    front = Front("a", points)
    # 97.5 is halfway from (10, 97.0, std 1) to (20, 98.0, std 2): cost 15, spread 1.5
    assert cost_at_accuracy(front, 97.5) == pytest.approx((15.0, 1.5))
    assert cost_at_accuracy(front, 98.0) == pytest.approx((20.0, 2.0))  # on a point
    # 98.25: a quarter from (20, 98.0, 2) to (40, 99.0, 4): 20 + 20 / 4 = 25, 2 + 2 / 4 = 2.5
    assert cost_at_accuracy(front, 98.25) == pytest.approx((25.0, 2.5))
    assert cost_at_accuracy(front, 99.5) is None  # never reached
    assert cost_at_accuracy(front, 96.0) is None  # below the cheapest point: no extrapolation


def test_reproduced_when_better_beyond_the_spread_everywhere():
    verdict = judge(claim(), configs("a", A_FRONT) + configs("b", B_FRONT))
    assert verdict.status == REPRODUCED and not verdict.missing
    assert verdict.configurations == {"a": 5, "b": 5}
    # at 98.0: a keeps 20 ± 1, b 40 ± 1 (cost stds 1): a 20 ahead, margin sqrt(2)
    a, b = verdict.figure(98.0, "a"), verdict.figure(98.0, "b")
    assert (a.value, a.spread, a.seeds) == pytest.approx((20.0, 1.0, 3))
    assert (b.value, b.spread) == pytest.approx((40.0, 1.0))
    first = verdict.comparisons[0]
    assert first.outcome == BETTER
    assert first.difference == pytest.approx(20.0) and first.margin == pytest.approx(2**0.5)
    assert [c.difference for c in verdict.comparisons] == pytest.approx([20.0, 40.0])


def test_not_reproduced_when_better_nowhere():
    verdict = judge(claim(), configs("a", B_FRONT) + configs("b", A_FRONT))
    assert verdict.status == NOT_REPRODUCED
    assert [c.outcome for c in verdict.comparisons] == [WORSE, WORSE]
    # equal fronts: ties only, which is not the claimed "better" either
    tied = judge(claim(), configs("a", A_FRONT) + configs("b", A_FRONT))
    assert tied.status == NOT_REPRODUCED
    assert [c.outcome for c in tied.comparisons] == [TIE, TIE]


def test_mixed_when_better_at_some_points_only():
    # at 99.0 a keeps 79 ± 1, b 80 ± 1: 1 ahead < margin sqrt(2) = 1.41: a tie
    a_front = [(10, 97.0), (20, 98.0), (30, 98.5), (79, 99.0), (90, 99.2)]
    verdict = judge(claim(), configs("a", a_front) + configs("b", B_FRONT))
    assert verdict.status == MIXED
    assert [c.outcome for c in verdict.comparisons] == [BETTER, TIE]
    assert verdict.comparisons[1].difference == pytest.approx(1.0)


def test_matched_cost_compares_accuracy():
    # at 20% a has 98.0 ± 0.1; b is halfway from (10, 96.0) to (30, 97.0): 96.5 ± 0.1;
    # a is 1.5 ahead, margin sqrt(0.01 + 0.01) = 0.141
    b_front = [(10, 96.0), (30, 97.0), (50, 97.5), (70, 98.0), (100, 98.2)]
    verdict = judge(
        claim(levels=(20.0,), matched="cost"), configs("a", A_FRONT) + configs("b", b_front)
    )
    assert verdict.status == REPRODUCED
    assert verdict.figure(20.0, "b").value == pytest.approx(96.5)
    assert verdict.comparisons[0].difference == pytest.approx(1.5)
    assert verdict.comparisons[0].margin == pytest.approx(0.02**0.5)


def test_a_method_that_never_reaches_the_accuracy_loses_there():
    b_front = [(20, 96.0), (40, 97.0), (60, 97.5), (80, 98.5), (100, 98.8)]
    verdict = judge(claim(), configs("a", A_FRONT) + configs("b", b_front))
    assert verdict.figure(99.0, "b").note == "never reaches"
    assert [c.outcome for c in verdict.comparisons] == [BETTER, BETTER]  # 98.0: 20 vs 70
    assert verdict.status == REPRODUCED


def test_not_enough_runs_with_too_few_configurations():
    verdict = judge(claim(), configs("a", A_FRONT[:4]) + configs("b", B_FRONT))
    assert verdict.status == NOT_ENOUGH
    assert verdict.missing == ["a front has 4 configurations, needs 5"]
    none = judge(claim(), configs("a", A_FRONT))
    assert none.status == NOT_ENOUGH and "b front has 0 configurations, needs 5" in none.missing


def test_not_enough_runs_with_too_few_seeds_at_a_matched_point():
    # b's configurations at costs 40 (98.0) and 80 (99.0) ran one seed only
    runs = configs("a", A_FRONT) + configs("b", [p for p in B_FRONT if p[0] not in (40, 80)])
    runs += [make_run("b", 12, 0, 98.0, 40), make_run("b", 14, 0, 99.0, 80)]
    verdict = judge(claim(), runs)
    assert verdict.status == NOT_ENOUGH
    assert len(verdict.missing) == 2
    assert verdict.missing[0].startswith("b at 98.00% accuracy: the configuration(s) it rests on")
    assert "have 1 seed, need 3" in verdict.missing[0]
    assert [c.outcome for c in verdict.comparisons] == [BETTER, BETTER]  # shown, not counted


def test_a_front_that_starts_above_the_level_is_missing_data():
    a_front = [(10, 98.5), (20, 98.7), (30, 98.9), (40, 99.0), (50, 99.2)]
    verdict = judge(claim(), configs("a", a_front) + configs("b", B_FRONT))
    assert verdict.status == NOT_ENOUGH
    assert verdict.missing == [
        "a at 98.00% accuracy: its cheapest front configuration already has 98.50%: "
        "needs configurations below it (stronger regularization)"
    ]


def test_shortened_and_other_dataset_runs_do_not_count():
    runs = configs("a", A_FRONT) + configs("b", B_FRONT)
    runs += configs("b", [(1, 99.9)], extra={"train.epochs": "1"})  # would beat everything
    runs += configs("b", [(2, 99.9)], dataset="fashion_mnist")
    verdict = judge(claim(dataset="mnist"), runs)
    assert verdict.configurations == {"a": 5, "b": 5}
    assert verdict.status == REPRODUCED


def paper(claim_id: str) -> Claim:
    return next(c for c in CLAIMS if c.id == claim_id)


def test_paper_c_counts_filters_at_levels_where_the_fronts_overlap():
    runs = configs("l1_l2", A_FRONT, bundle="paper_c_lenet5")
    for other in ("l1", "l2", "ssl"):
        runs += configs(other, B_FRONT, bundle="paper_c_lenet5")
    verdict = judge(paper("paper_c"), runs)
    # every front spans 97.0-99.2: levels 97.0, 98.1, 99.2; filters = conv1 + conv2 = cost
    assert verdict.levels == pytest.approx([97.0, 98.1, 99.2])
    # l1_l2 at 98.1: from (20, 98.0) to (30, 98.5), a fifth: 22 filters; l1: 40 + 20 / 5 = 44
    assert verdict.figure(98.1, "l1_l2").value == pytest.approx(22.0)
    assert verdict.figure(98.1, "l1").value == pytest.approx(44.0)
    assert verdict.status == REPRODUCED and len(verdict.comparisons) == 9


def test_paper_b_headline_reached_or_not():
    b = paper("paper_b")
    methods = ("sgl_variance", "sparse_group_lasso", "group_lasso")
    near = [(5, 99.3), (10, 99.45), (15, 99.5), (25, 99.6), (40, 99.7)]
    runs = [r for m in methods for r in configs(m, near, bundle="paper_b_mnist")]
    verdict = judge(b, runs)
    assert verdict.status == NOT_REPRODUCED  # equal fronts: ties at 99.4 and 99.5
    # at <= 17.3% the best is (15, 99.5); at >= 99.6% the cheapest is (25, 99.6)
    assert "**not reached** by any of 15 configurations" in verdict.target
    assert (
        "most accurate at <= the cost: group_lasso (regularizer.strength=3): 99.50% at "
        "15.00, 3 seeds" in verdict.target
    )
    assert (
        "cheapest at >= the accuracy: group_lasso (regularizer.strength=4): 99.60% at 25.00"
        in verdict.target
    )
    runs.append(make_run("sgl_variance", 9, 0, 99.6, 17.3, bundle="paper_b_mnist"))
    reached = judge(b, runs)
    assert "**reached** by 1 configuration(s)" in reached.target
    assert "sgl_variance (regularizer.strength=9): 99.60% at 17.30, 1 seed." in reached.target


def test_render_without_runs_says_what_is_missing_and_how_to_run_it():
    text = render_verdicts([])
    assert text.startswith("## Verdicts\n")
    assert text.count("**not enough runs**:") == len(CLAIMS) == 4
    assert "- ssl front has 0 configurations, needs 5" in text
    assert (
        "sparsenet -m experiment=paper_c_lenet5 regularizer=ssl "
        "regularizer.strength=1e-3,2e-3,3e-3,5e-3,1e-2 seed=0,1,2" in text
    )
    assert "sparsenet -m experiment=paper_a_gl dataset=fashion_mnist" in text
    assert "Paper B's headline (>= 99.60% accuracy at <= 17.30% parameters kept): no runs" in text


def test_render_reproduced_claim_shows_the_numbers():
    runs = configs("l1_l2", A_FRONT, bundle="paper_c_lenet5")
    for other in ("l1", "l2", "ssl"):
        runs += configs(other, B_FRONT, bundle="paper_c_lenet5")
    text = render_verdicts(runs, [paper("paper_c")])
    assert "**reproduced**: the claimed method is better in 9 of 9 comparisons" in text
    assert "| 98.10 | l1 | 44.00 ± 1.00 | 3 | l1_l2 better (+22.00, margin 1.41) |" in text


def test_an_old_verdicts_section_is_dropped():
    lines = ["## A", "a", "## Verdicts", "old", "### x", "## B", "b"]
    assert without_verdicts(lines) == ["## A", "a", "## B", "b"]


def test_paper_a_methods_are_the_bundles_and_the_dataset_is_kept_apart():
    runs = []
    for partial, full in (
        ("paper_a_partial_gl", "paper_a_gl"),
        ("paper_a_partial_sgl", "paper_a_sgl"),
    ):
        runs += configs(partial, A_FRONT, key="experiment")
        runs += configs(full, B_FRONT, key="experiment")
        runs += configs(partial, A_FRONT[:2], key="experiment", dataset="fashion_mnist")
    verdict = judge(paper("paper_a_mnist"), runs)
    # common cost range [20, 50] (A: 10-50, B: 20-100): levels 20, sqrt(20 * 50), 50
    assert verdict.levels == pytest.approx([20.0, 1000**0.5, 50.0])
    # at 50%: partial 99.2 ± 0.1; full halfway from (40, 98.0) to (60, 98.5): 98.25 ± 0.1
    assert verdict.figure(50.0, "paper_a_gl").value == pytest.approx(98.25)
    assert verdict.comparisons[-1].difference == pytest.approx(0.95)
    assert verdict.status == REPRODUCED and len(verdict.comparisons) == 6
    fashion = judge(paper("paper_a_fashion"), runs)
    assert fashion.configurations == {
        "paper_a_partial_gl": 2,
        "paper_a_gl": 0,
        "paper_a_partial_sgl": 2,
        "paper_a_sgl": 0,
    }
    assert fashion.status == NOT_ENOUGH
