"""Compress to a budget (sparsenet/pruning/budget.py): the projected cost against MACs worked
out by hand, the strength law step by step, the prune stage's cut to a weight budget by hand,
the config checks, and a run under a budget (trajectory recorded, budget met, resumable).

The network (as in test_cost_aware.py): conv1 (1 -> 2, 3x3) -> BN -> ReLU -> conv2 (2 -> 3,
3x3) -> flatten -> fc (12 -> 2) on 1x6x6 inputs; conv1 at 16 positions, conv2 at 4.
  MACs: conv1 2*9*16 = 288, conv2 3*2*9*4 = 216, fc 12*2 = 24; whole network 528.
  conv2 filter 0 gone:            - 1*2*9*4 (its filter) - 4*2 (its fc columns) = 448
  and conv1 filter 1 gone too:    - 9*16 (its filter) - 2*9*4 (its conv2 input,
                                    in the two conv2 filters left)             = 448 - 216 = 232
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_conv_net
from torch import nn

from sparsenet.config.schema import register_schemas
from sparsenet.errors import ConfigError
from sparsenet.pipeline import run_experiment
from sparsenet.pipeline.resume import config_hash
from sparsenet.pipeline.settings import parse_config
from sparsenet.pruning import PruneSettings, prune_units
from sparsenet.pruning.budget import BudgetSettings, StrengthController
from sparsenet.regularizers import GroupLasso

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXAMPLE = torch.zeros(1, 1, 6, 6)


def tiny() -> nn.Sequential:
    """`tiny_conv_net` with every weight 1 (biases 0): conv1's filters have norm 3, conv2's
    input channels norm sqrt(3 * 9), conv2's filters norm sqrt(2 * 9), fc's columns norm
    sqrt(2)."""
    model = tiny_conv_net()
    with torch.no_grad():
        for m in (model.conv1, model.conv2, model.fc):
            m.weight.fill_(1.0)
            m.bias.zero_()
    return model


def controller(model, proximal=False, **budget) -> tuple[StrengthController, GroupLasso]:
    settings = BudgetSettings(**{"target": "macs", "keep": 0.5, "ramp": 0.0, **budget})
    regularizer = GroupLasso(strength=1e-3, proximal=proximal)
    control = StrengthController(settings, floor=1e-3)
    control.bind(model, EXAMPLE, regularizer, total_steps=100)
    return control, regularizer


# --- the projection, by hand ------------------------------------------------------------------
def test_projected_macs_drop_the_units_the_prune_stage_takes_first():
    model = tiny()
    control, _ = controller(model)
    assert control.dense == 528
    assert control.projected_share() == 1.0
    with torch.no_grad():
        model.conv2.weight[0].zero_()  # a dead conv2 filter
    assert control.projected_share() == pytest.approx(448 / 528)
    with torch.no_grad():
        model.conv1.weight[1].fill_(0.001)  # norm 0.003 > the floor 1e-3, relative 0.001
    assert control.projected_share() == pytest.approx(232 / 528)


def test_the_relative_cut_is_what_the_projection_uses():
    model = tiny()
    with torch.no_grad():
        model.conv1.weight[1].fill_(0.001)  # relative score 0.003 / 3 = 0.001
    assert controller(model, relative=0.01)[0].projected_share() == pytest.approx(
        (528 - 144 - 3 * 9 * 4) / 528  # conv1 filter 1 and its input to all 3 conv2 filters
    )
    assert controller(model, relative=0.0009)[0].projected_share() == 1.0
    assert controller(model, relative=0.0)[0].projected_share() == 1.0  # the floor alone


# --- the strength law -------------------------------------------------------------------------
def test_the_strength_moves_by_the_projected_over_budget_ratio_to_the_rate():
    model = tiny()
    control, regularizer = controller(model, keep=0.5, rate=0.5, every=2)
    control.step()
    assert regularizer.strength == 1e-3  # no update between two `every`
    control.step()  # projected 1.0, budget 0.5: x (1 / 0.5) ** 0.5
    assert regularizer.strength == pytest.approx(1e-3 * math.sqrt(2))
    control.step()
    control.step()
    assert regularizer.strength == pytest.approx(2e-3)
    with torch.no_grad():
        model.conv2.weight[0].zero_()
        model.conv1.weight[1].zero_()  # projected 232 / 528 < 0.5: the strength comes down
    control.step()
    control.step()
    assert regularizer.strength == pytest.approx(2e-3 * math.sqrt((232 / 528) / 0.5))
    assert control.trajectory == [
        (2, pytest.approx(1e-3 * math.sqrt(2)), 1.0),
        (4, pytest.approx(2e-3), 1.0),
        (6, pytest.approx(regularizer.strength), round(232 / 528, 6)),
    ]


def test_the_target_falls_to_the_budget_on_a_cubic_ramp():
    control, _ = controller(tiny(), keep=0.2, ramp=0.5)  # 100 steps: the ramp ends at 50
    assert control.target_share(0) == 1.0
    assert control.target_share(25) == pytest.approx(0.2 + 0.8 * 0.5**3)  # 0.3
    assert control.target_share(50) == pytest.approx(0.2)
    assert control.target_share(90) == pytest.approx(0.2)


def test_a_start_penalty_sets_the_starting_strength_from_the_weights():
    """GroupLasso, structure out, sqrt weighting, on tiny(): conv1's filters sqrt(9) * 3 each,
    conv2's sqrt(18) * sqrt(18), fc's rows sqrt(12) * sqrt(12):
    R = 2 * 9 + 3 * 18 + 2 * 12 = 96, so c = 0.48 gives strength 0.005."""
    control, regularizer = controller(tiny(), start_penalty=0.48)
    assert regularizer.strength == pytest.approx(0.005)
    assert control.configured == pytest.approx(0.005)


def test_a_start_penalty_reads_r_of_the_weights_under_the_proximal_option_too():
    """The proximal option has no smooth term (its penalty is 0), but R(W) is the same 96."""
    control, regularizer = controller(tiny(), proximal=True, start_penalty=0.48)
    assert float(regularizer.penalty(tiny())) == 0.0
    assert regularizer.strength == pytest.approx(0.005)
    assert regularizer.proximal  # switched back on after the reading


def reach_net() -> nn.Sequential:
    """tiny() with conv1's filter 1 at 0.25 and conv2's filter 0 at 0.5. GroupLasso (out,
    sqrt weighting) shrinks a row of weight c at c * w / ||w||, so r_in = ||row|| / c: conv1
    rows 1 and 0.25, conv2 rows 0.5, 1, 1. Every element of a conv2 row has gradient 1 (c =
    ||w|| / value), as every fc element, so r_out = sum b^2 / sum b over the column's slices:
    conv1 units (0.25 + 1 + 1) / (0.5 + 1 + 1) = 0.9, conv2 units 8 / 8 = 1. So r = min:
    conv1 0.9, 0.25; conv2 0.5, 1, 1. Taken in that order: conv1 unit 1 leaves 528 - 144 -
    108 = 276 MACs (52.3%), then conv2 unit 0 232 (43.9%), then conv1 unit 0."""
    model = tiny()
    with torch.no_grad():
        model.conv1.weight[1].fill_(0.25)
        model.conv2.weight[0].fill_(0.5)
    return model


@pytest.mark.parametrize(
    ("keep", "reach"), [(0.6, 0.25), (0.5, 0.5), (0.45, 0.5), (0.4, 0.9), (1.0, 0.0)]
)
def test_the_reach_is_the_shrink_time_of_the_last_unit_the_budget_cuts(keep, reach):
    model = reach_net()
    control, _ = controller(model, keep=keep)
    assert control.reach(model) == pytest.approx(reach)


@pytest.mark.parametrize(
    ("proximal", "momentum", "ramp", "strength"),
    [
        (True, 0.9, 0.5, 0.5 / 5.0),  # the prox step: lr per step, 50 steps of the ramp
        (False, 0.9, 0.5, 0.5 / 50.0),  # the gradient under momentum 0.9: 10 lr per step
        (True, 0.0, 0.25, 0.5 / 2.5),  # a shorter ramp: 25 steps of lr 0.1
    ],
)
def test_start_reach_sets_the_strength_that_cuts_the_budget_by_the_ramps_end(
    proximal, momentum, ramp, strength
):
    settings = BudgetSettings(target="macs", keep=0.5, ramp=ramp, start_reach=True)
    regularizer = GroupLasso(strength=1e-3, proximal=proximal)
    control = StrengthController(settings, floor=1e-3)
    model = reach_net()
    control.bind(model, EXAMPLE, regularizer, 100, lr_at=lambda step: 0.1, momentum=momentum)
    assert regularizer.strength == pytest.approx(strength)
    assert bool(control.costs.alive.all())  # the costs are back to the dense network's
    assert control.costs.total() == control.dense


def test_start_reach_without_a_ramp_spreads_the_shrinking_over_the_whole_stage():
    """ramp 0: the target is the budget at once, but the reach is not crammed into one step:
    100 steps of lr 0.1 (proximal: gain 1), so 0.5 / 10."""
    settings = BudgetSettings(target="macs", keep=0.5, ramp=0.0, start_reach=True)
    regularizer = GroupLasso(strength=1e-3, proximal=True)
    control = StrengthController(settings, floor=1e-3)
    control.bind(reach_net(), EXAMPLE, regularizer, 100, lr_at=lambda step: 0.1, momentum=0.9)
    assert regularizer.strength == pytest.approx(0.5 / 10.0)


def test_a_combination_of_proximal_parts_shrinks_by_prox():
    """Combined's own `proximal` is False; its parts' prox steps set the gain (no momentum)."""
    from sparsenet.regularizers.combined import Combined

    prox = Combined(strength=1.0, parts={"a": GroupLasso(strength=1.0, proximal=True)})
    mixed = Combined(
        strength=1.0,
        parts={"a": GroupLasso(strength=1.0, proximal=True), "b": GroupLasso(strength=1.0)},
    )
    assert prox.shrinks_by_prox and not mixed.shrinks_by_prox
    assert GroupLasso(proximal=True).shrinks_by_prox and not GroupLasso().shrinks_by_prox


def test_start_reach_and_start_penalty_are_one_choice():
    with pytest.raises(ConfigError, match="start_penalty.*start_reach"):
        BudgetSettings(target="macs", start_penalty=0.5, start_reach=True)


def test_the_strength_stays_within_its_limits():
    control, regularizer = controller(tiny(), keep=0.01, rate=10.0, every=1)
    for _ in range(5):
        control.step()  # x 100 ** 10 each time
    assert regularizer.strength == pytest.approx(1e-3 * 1e4)


def test_a_controller_put_back_from_its_state_continues_as_the_first():
    model = tiny()
    first, first_reg = controller(model, every=1)
    for _ in range(3):
        first.step()
    second, second_reg = controller(model, every=1)
    second.load_state_dict(first.state_dict())
    assert second_reg.strength == first_reg.strength
    first.step()
    second.step()
    assert second_reg.strength == first_reg.strength
    assert second.trajectory == first.trajectory


# --- the cut to a budget, by hand ---------------------------------------------------------------
@torch.no_grad()
def test_a_weight_budget_cuts_smallest_scores_first_until_it_is_met():
    """Weights: conv1 18, conv2 54, fc 24 = 96. Half of them (48) must go. conv2's filters
    (scores: their norms sqrt(18) * 0.1, 0.2, 1, whose fc columns have norm sqrt(2)) each
    hold 18 + 8 = 26 weights: removing filters 0 and 1 (smallest first) leaves 96 - 52 = 44,
    the first point at or below 48; filter 2 stays."""
    model = tiny()
    model.conv2.weight[0].mul_(0.1)
    model.conv2.weight[1].mul_(0.2)
    model.conv1.weight.mul_(10)  # conv1's units score high: they stay
    settings = PruneSettings(criterion="ratio", target="params", ratio=0.5, scope="global")
    result = prune_units(model, EXAMPLE, settings)
    assert result.removed == {"conv2": [0, 1]}
    assert result.target_kept == pytest.approx(44 / 96)
    assert model.conv2.weight.shape[0] == 1


# --- the config ---------------------------------------------------------------------------------
def _settings(compose_cfg, quick_smoke, *more):
    register_schemas()
    return parse_config(compose_cfg(*quick_smoke, *more))


def test_a_budget_makes_the_prune_stage_cut_to_it(compose_cfg, quick_smoke):
    settings = _settings(compose_cfg, quick_smoke, "budget.target=params", "budget.keep=0.25")
    prune = settings.prune
    assert (prune.criterion, prune.target, prune.ratio, prune.scope) == (
        "ratio",
        "params",
        0.75,
        "global",
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("budget.target=macs", "prune=ratio"), "prune.criterion='ratio' conflicts with budget"),
        (("budget.target=macs", "regularizer=none"), "regularizer.strength=0"),
        (("budget.target=flops",), "budget.target"),
        (("budget.target=macs", "budget.keep=0"), "budget.keep=0"),
        (("budget.target=macs", "budget.keep=1.5"), "budget.keep=1.5"),
    ],
)
def test_bad_budget_settings_are_one_line_naming_the_key(
    compose_cfg, quick_smoke, overrides, message
):
    with pytest.raises(ConfigError) as caught:
        _settings(compose_cfg, quick_smoke, *overrides)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value).strip()


def test_no_budget_leaves_the_run_identity_as_before_budgets(compose_cfg, quick_smoke):
    with_node = _settings(compose_cfg, quick_smoke).config
    without = {k: v for k, v in with_node.items() if k != "budget"}
    assert config_hash(with_node) == config_hash(without)
    budgeted = _settings(compose_cfg, quick_smoke, "budget.target=macs").config
    assert config_hash(budgeted) != config_hash(with_node)


# --- a run under a budget -------------------------------------------------------------------
def test_a_run_under_a_mac_budget_records_its_strength_and_meets_the_budget(
    compose_cfg, quick_smoke, tmp_path
):
    cfg = compose_cfg(
        *quick_smoke,
        "train.epochs=2",
        "train.batch_size=8",
        "budget.target=macs",
        "budget.keep=0.3",
        "budget.every=2",
        "budget.rate=0.5",
        "budget.ramp=0",
    )
    run_experiment(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    train = metrics["stages"]["train"]["budget"]
    steps = 2 * 64 // 8
    assert [t[0] for t in train["trajectory"]] == list(range(2, steps + 1, 2))
    strengths = [t[1] for t in train["trajectory"]]
    # while the projection is above the budget the strength only rises, by (P / 0.3) ** 0.5
    first_share = train["trajectory"][0][2]
    assert strengths[0] == pytest.approx(1e-3 * (first_share / 0.3) ** 0.5, rel=1e-3)
    dense_macs = metrics["stages"]["train"]["macs"]
    assert metrics["stages"]["prune"]["macs"] <= 0.3 * dense_macs * 1.001
    assert metrics["stages"]["prune"]["target_kept"] <= 0.3
    history = (tmp_path / "history.csv").read_text().splitlines()
    assert "strength" in history[0] and "projected_cost" in history[0]


class _Stop(Exception):
    """Stands for a kill right after the first mid-stage checkpoint is on disk."""


def test_a_run_killed_mid_train_resumes_its_strength_trajectory(
    compose_cfg, quick_smoke, tmp_path, monkeypatch
):
    """Killed after the train stage's first epoch: the continued run ends with the strength
    trajectory, history and figures of an uninterrupted one (the controller's state is in the
    checkpoint; without it the strength would restart from the configured one)."""
    from sparsenet.pipeline import stages

    cfg = compose_cfg(
        *quick_smoke,
        "train.epochs=2",
        "train.batch_size=8",
        "finetune.epochs=0",
        "budget.target=macs",
        "budget.keep=0.3",
        "budget.every=3",
        "budget.start_penalty=0.5",
    )
    straight = run_experiment(cfg, tmp_path / "straight")
    real_save = stages.save_checkpoint

    def save_then_stop(run_dir, state):
        real_save(run_dir, state)
        if state["stage_epoch"] == 1:
            raise _Stop

    monkeypatch.setattr(stages, "save_checkpoint", save_then_stop)
    with pytest.raises(_Stop):
        run_experiment(cfg, tmp_path / "killed")
    monkeypatch.setattr(stages, "save_checkpoint", real_save)
    resumed = run_experiment(cfg, tmp_path / "killed")
    budget = straight["stages"]["train"]["budget"]
    assert resumed["stages"]["train"]["budget"] == budget
    assert len(budget["trajectory"]) == 2 * 64 // 8 // 3
    assert (tmp_path / "killed" / "history.csv").read_text() == (
        tmp_path / "straight" / "history.csv"
    ).read_text()
