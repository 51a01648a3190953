"""Physical removal: the pruned (narrow) network must compute what the dense network computes
with the removed groups zeroed. Expected unit counts are worked out from which groups the test
zeroes, not read back from the pruner."""

import pytest
import torch
from torch import nn

from sparsenet.cli import config_choices
from sparsenet.config.schema import to_settings
from sparsenet.errors import ConfigError
from sparsenet.measure import count_macs
from sparsenet.pruning import (
    FoldedConv2d,
    PruneSettings,
    criteria,
    prune_dead_units,
    prune_units,
    unit_norms,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _randomize_batchnorm(model: nn.Module) -> None:
    """Non-trivial BN statistics and shifts, so a zeroed filter still emits a constant."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(0.2, 1.0)  # positive: survives the ReLU


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 3)
    ).eval()


def _convnet() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 5, 3),
        nn.BatchNorm2d(5),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5 * 4 * 4, 4),
    )
    _randomize_batchnorm(model)
    return model.eval()


def test_mlp_dead_incoming_and_dead_outgoing_units_are_removed_exactly():
    model = _mlp()
    with torch.no_grad():
        model[0].weight[[1, 4]] = 0  # hidden-1 units 1, 4: no input, output relu(bias) != 0
        model[0].bias[[1, 4]] = torch.tensor([0.7, 0.3])
        model[4].weight[:, 2] = 0  # hidden-2 unit 2: nothing leaves it
    x = torch.randn(32, 6)
    expected = model(x)

    result = prune_dead_units(model, x[:1], threshold=0.0, calibration=x)

    assert [model[0].out_features, model[2].in_features] == [6, 6]
    assert [model[2].out_features, model[4].in_features] == [6, 6]
    assert model[4].out_features == 3  # the output layer is never pruned
    assert sorted(result.removed.values()) == [[1, 4], [2]]
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)


def test_conv_filters_with_batchnorm_shift_fold_into_the_next_layer():
    model = _convnet()
    with torch.no_grad():
        model[0].weight[2] = 0  # conv1 filter 2: output is the BN shift, a non-zero constant
        model[0].bias[2] = 0.4
        model[3].weight[[0, 3]] = 0  # conv2 filters 0, 3: constant maps into the Linear via Flatten
    x = torch.randn(16, 1, 8, 8)
    expected = model(x)

    prune_dead_units(model, x[:1], threshold=0.0, calibration=x)

    assert [model[0].out_channels, model[1].num_features, model[3].in_channels] == [5, 5, 5]
    assert [model[3].out_channels, model[4].num_features] == [3, 3]
    # each conv2 channel feeds 4*4 = 16 Linear inputs: 80 - 2*16 = 48
    assert model[7].in_features == 48
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)


def test_threshold_removes_small_groups_like_zeroing_them():
    model = _mlp()
    with torch.no_grad():
        model[0].weight[3] *= 1e-7  # norm far below the threshold, not exactly zero
    masked = _mlp()
    masked.load_state_dict(model.state_dict())
    with torch.no_grad():
        masked[0].weight[3] = 0
    x = torch.randn(32, 6)

    prune_dead_units(model, x[:1], threshold=1e-4, calibration=x)

    assert model[0].out_features == 7
    torch.testing.assert_close(model(x), masked(x), atol=1e-5, rtol=0)


def test_min_units_keeps_a_layer_alive():
    model = _mlp()
    with torch.no_grad():
        model[2].weight.mul_(1e-9)
        model[2].weight[5, 0] = 1e-6  # the largest of the dead units
    x = torch.randn(8, 6)
    prune_dead_units(model, x[:1], threshold=1e-3, calibration=x, min_units=1)
    # hidden-2 keeps its largest unit (row 5); hidden-1 units now all have outgoing norm
    # <= 1e-3 too, and keep the one with the largest (column 0): the 1e-6 entry survives.
    assert (model[2].out_features, model[2].in_features) == (1, 1)
    assert model[2].weight.item() == pytest.approx(1e-6)


def test_negative_threshold_is_refused():
    model = _mlp()
    with pytest.raises(ValueError, match=r"^threshold=-1.0 is out of range"):
        prune_dead_units(model, torch.randn(1, 6), threshold=-1.0)


def test_unit_norms_by_hand():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, 4.0], [1.0, 0.0]]))
        model[2].weight.copy_(torch.tensor([[0.0, 2.0]]))
    in_norm, out_norm = unit_norms(model, torch.randn(1, 2))["0"]
    # unit 0: incoming (3, 4) -> 5, outgoing 0; unit 1: incoming (1, 0) -> 1, outgoing 2
    assert in_norm.tolist() == pytest.approx([5.0, 1.0])
    assert out_norm.tolist() == pytest.approx([0.0, 2.0])


# --- exact folding into zero-padded convs ------------------------------------------------


def _producer_consumer(**consumer_geometry) -> nn.Sequential:
    """conv (3 -> 6) -> ReLU -> conv (6 -> 4) with the given geometry; the second is the
    output layer, so only the first one's units can go."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, **consumer_geometry)
    )
    with torch.no_grad():
        model[0].weight[[1, 4]] = 0  # constant channels: relu(bias) = 0.7 and 0.3
        model[0].bias[[1, 4]] = torch.tensor([0.7, 0.3])
    return model.eval()


@pytest.mark.parametrize(
    "geometry",
    [
        {"padding": 1},
        {"padding": 1, "stride": 2},
        {"padding": 2, "dilation": 2},
        {"padding": (0, 2), "stride": (2, 1)},
        {"padding": "same"},
        {"padding": 1, "padding_mode": "reflect"},  # constant stays constant: bias fold only
    ],
    ids=["pad1", "stride2", "dilated", "asymmetric", "same", "reflect"],
)
def test_constant_channels_fold_exactly_into_a_padded_conv_at_any_input_size(geometry):
    model = _producer_consumer(**geometry)
    sizes = [(9, 11), (8, 8), (5, 7)]
    inputs = [torch.randn(2, 3, *size) for size in sizes]
    with torch.no_grad():
        expected = [model(x) for x in inputs]

    result = prune_dead_units(model, inputs[0][:1], threshold=0.0, calibration=inputs[0])

    assert model[0].out_channels == 4 and model[2].in_channels == 4
    assert result.folded == ([] if "padding_mode" in geometry else ["2"])
    with torch.no_grad():
        for x, want in zip(inputs, expected, strict=True):
            torch.testing.assert_close(model(x), want, atol=1e-5, rtol=0)


def test_bias_only_fold_is_exact_inside_and_reports_its_border_error():
    model = _producer_consumer(padding=1)
    x = torch.randn(4, 3, 10, 10)
    with torch.no_grad():
        expected = model(x)

    result = prune_dead_units(model, x[:1], threshold=0.0, calibration=x, fold="bias")

    assert result.folded == [] and not isinstance(model[2], FoldedConv2d)
    with torch.no_grad():
        deviation = (model(x) - expected).abs()
    # interior positions (the 3x3 window fully inside) are exact, the border is not
    assert float(deviation[..., 1:-1, 1:-1].max()) < 1e-5
    assert float(deviation.max()) > 1e-2
    assert result.fold_error["2"] == pytest.approx(float(deviation.max()), rel=1e-4)


def _three_convs() -> nn.Sequential:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 5, 3, padding=1),
        nn.BatchNorm2d(5),
        nn.ReLU(),
        nn.Conv2d(5, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )
    _randomize_batchnorm(model)
    return model.eval()


def test_pruning_again_updates_and_slices_existing_fold_kernels():
    model = _three_convs()
    x = torch.randn(8, 2, 6, 6)

    with torch.no_grad():
        model[0].weight[2] = 0  # round 1: conv2 becomes a FoldedConv2d
        expected = model(x)
    assert prune_dead_units(model, x[:1], 0.0, calibration=x).folded == ["3"]
    assert isinstance(model[3], FoldedConv2d) and model[3].fold_kernel.shape == (5, 1, 3, 3)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)

    with torch.no_grad():
        model[0].weight[0] = 0  # round 2: folds into the existing fold kernel
        model[6].weight[:, 1] = 0  # nothing leaves conv2's unit 1: its row of K goes too
        expected = model(x)
    result = prune_dead_units(model, x[:1], 0.0, calibration=x)
    assert result.folded == []  # conv2 already is a FoldedConv2d
    assert (model[0].out_channels, model[3].in_channels, model[3].out_channels) == (4, 4, 4)
    assert model[3].fold_kernel.shape == (4, 1, 3, 3) and model[4].num_features == 4
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)


def test_a_zeroed_folded_conv_unit_is_not_dead_while_its_border_term_remains():
    model = _three_convs()
    x = torch.randn(8, 2, 6, 6)
    with torch.no_grad():
        model[0].weight[2] = 0
    prune_dead_units(model, x[:1], 0.0, calibration=x)
    with torch.no_grad():
        model[3].weight[0] = 0  # zero weights, but its output still varies at the borders
    in_norm, _ = unit_norms(model, x[:1])["3"]
    assert float(in_norm[0]) == pytest.approx(float(model[3].fold_kernel[0].norm()), rel=1e-6)
    assert prune_dead_units(model, x[:1], 0.0, calibration=x).removed == {}


# --- criteria ------------------------------------------------------------------------------


def _two_hidden_layers() -> nn.Sequential:
    """3 -> 4 -> 5 -> 2 with unit scores set by hand.

    hidden-1: incoming row norms a = (4, 1, 2, 3); outgoing column norms of W2 are all
      sqrt((10^2 + 2^2 + 4^2 + 6^2 + 8^2) / 4) = sqrt(55) > 4, so scores = a,
      relative scores (/ 4) = (1, .25, .5, .75).
    hidden-2: incoming row norms r = (10, 2, 4, 6, 8); outgoing columns of W3 = 5 * ones:
      norm sqrt(50) = 7.07, so scores = (7.07, 2, 4, 6, 7.07), relative = (1, .283, .566,
      .849, 1).
    MACs: 3*4 + 4*5 + 5*2 = 42.
    """
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[4.0, 0, 0], [0, 1, 0], [0, 0, 2], [3, 0, 0]]))
        rows = torch.tensor([10.0, 2, 4, 6, 8])
        model[2].weight.copy_((rows / 2)[:, None].expand(5, 4))
        model[4].weight.fill_(5.0)
    return model.eval()


def _widths(model: nn.Sequential) -> tuple[int, int]:
    return model[0].out_features, model[2].out_features


@pytest.mark.parametrize(("relative", "widths"), [(0.1, (4, 5)), (0.3, (3, 4)), (0.6, (2, 3))])
def test_relative_threshold_is_a_fraction_of_the_groups_largest_score(relative, widths):
    # limits: hidden-1 0.4 / 1.2 / 2.4 of 4 (scores 4, 1, 2, 3);
    #         hidden-2 0.71 / 2.12 / 4.24 of 7.07 (scores 7.07, 2, 4, 6, 7.07)
    model = _two_hidden_layers()
    settings = PruneSettings(criterion="relative", relative=relative, threshold=0.0)
    prune_units(model, torch.randn(4, 3), settings)
    assert _widths(model) == widths


def test_ratio_of_units_removes_the_smallest_relative_scores_across_layers():
    # 9 units, ratio 0.4 -> at least 3.6: 4 units, in order h1u1 .25, h2u1 .283, h1u2 .5,
    # h2u2 .566
    model = _two_hidden_layers()
    result = prune_units(model, torch.randn(4, 3), PruneSettings(criterion="ratio", ratio=0.4))
    assert (result.units_total, result.units_removed) == (9, 4)
    assert result.removed == {"0": [1, 2], "2": [1, 2]}
    assert result.cut == pytest.approx(4 / (50**0.5))


@pytest.mark.parametrize(
    ("scope", "removed"),
    [
        # 0.3 * 9 = 2.7 -> 3 units. global: h1u1 .25, h2u1 .283, h1u2 .5.
        ("global", {"0": [1, 2], "2": [1]}),
        # layer: rank fractions h2u1 1/5, h1u1 1/4, h2u2 2/5 (then h1u2 2/4, ...).
        ("layer", {"0": [1], "2": [1, 2]}),
    ],
)
def test_ratio_scope_orders_units_globally_or_layer_by_layer(scope, removed):
    model = _two_hidden_layers()
    settings = PruneSettings(criterion="ratio", ratio=0.3, scope=scope)
    assert prune_units(model, torch.randn(4, 3), settings).removed == removed


@pytest.mark.parametrize(("ratio", "removed", "macs_left"), [(0.45, 3, 22), (0.5, 4, 18)])
def test_ratio_of_macs_counts_each_removal_against_what_is_left(ratio, removed, macs_left):
    # Removing h1u1 saves 3 (its row) + 5 (its column in W2) = 8; h2u1: 3 + 2 = 5 (13);
    # h1u2: 3 + 4 = 7 (20 >= 0.45 * 42 = 18.9: stop); h2u2: 2 + 2 = 4 (24 >= 21: stop).
    model = _two_hidden_layers()
    settings = PruneSettings(criterion="ratio", ratio=ratio, target="macs")
    result = prune_units(model, torch.randn(4, 3), settings)
    assert result.units_removed == removed
    assert (result.macs_total, result.macs_removed) == (42, 42 - macs_left)
    assert count_macs(model, (3,)) == macs_left


def test_ratio_never_takes_a_layer_below_min_units():
    model = _two_hidden_layers()
    settings = PruneSettings(criterion="ratio", ratio=0.99, min_units=2)
    result = prune_units(model, torch.randn(4, 3), settings)
    assert _widths(model) == (2, 2)
    # hidden-1 keeps its two largest (units 0 and 3); hidden-2 its two relative-1 units
    assert result.removed == {"0": [1, 2], "2": [1, 2, 3]}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "criterion",
            "median",
            "criterion='median' is not allowed; allowed: threshold, relative, ratio",
        ),
        ("threshold", -0.5, "threshold=-0.5 is out of range; allowed: a finite number >= 0"),
        ("relative", 1.5, "relative=1.5 is out of range; allowed: a finite number >= 0 and <= 1"),
        ("ratio", 1.0, "ratio=1.0 is out of range; allowed: a finite number >= 0 and < 1"),
        ("target", "flops", "target='flops' is not allowed; allowed: units, macs, params, latency"),
        ("min_units", 0, "min_units=0 is out of range; allowed: an integer >= 1"),
        ("fold", "none", "fold='none' is not allowed; allowed: exact, bias"),
        ("scope", "local", "scope='local' is not allowed; allowed: global, layer"),
        ("calibration_samples", 2.5, "calibration_samples=2.5 must be an integer >= 1"),
        ("ratio", "half", "ratio='half' must be a finite number >= 0 and < 1"),
    ],
)
def test_bad_settings_are_refused_naming_key_value_and_range(key, value, message):
    """Built directly, the settings name their own key; the config layer adds `prune.`."""
    with pytest.raises(ConfigError) as refused:
        PruneSettings(**{key: value})
    assert str(refused.value) == message
    assert str(refused.value.at("prune")) == f"prune.{message}"


def test_unknown_setting_is_refused():
    with pytest.raises(ConfigError) as refused:
        to_settings(PruneSettings, {"treshold": 0.1}, "prune")
    assert str(refused.value).startswith("prune.treshold is not a config key; allowed: ")
    assert "threshold" in str(refused.value)


@pytest.mark.parametrize("name", config_choices("prune"))
def test_every_prune_config_is_valid(name, compose_cfg):
    cfg = compose_cfg(f"prune={name}")
    settings = to_settings(PruneSettings, cfg.prune, "prune")
    assert settings.criterion == name
    assert settings.threshold == cfg.prune.threshold  # the absolute floor, in every mode


# --- round_to: widths kept multiples of N --------------------------------------------------
def _one_layer_group(scores: list[float]) -> tuple[list, dict]:
    """One group of len(scores) units, each owning one out-unit of layer "a" (1 input, 1 MAC
    per pair) and one in-unit of layer "b" (2 outputs): a unit costs 1 + 2 = 3 MACs."""
    n = len(scores)
    group = criteria.UnitGroup(
        "a",
        torch.tensor(scores),
        [
            ("a", "out", torch.ones(n, dtype=torch.long)),
            ("b", "in", torch.ones(n, dtype=torch.long)),
        ],
    )
    costs = {"a": criteria.LayerCost(1.0, n, 1), "b": criteria.LayerCost(1.0, 2, n)}
    return [group], costs


def test_round_to_rounds_a_ratio_cut_down_and_a_threshold_cut_up():
    scores = [float(v) for v in range(1, 11)]  # unit u scores u + 1
    groups, costs = _one_layer_group(scores)
    # ratio 0.35 of 10 units: 4 go (scores 1-4), 6 kept -> rounded down to 4: scores 5, 6 go too
    ratio = criteria.PruneSettings(criterion="ratio", ratio=0.35, target="units", round_to=4)
    selection = criteria.select_units(groups, ratio, costs)
    assert selection.removed[0].tolist() == [0, 1, 2, 3, 4, 5]
    assert (selection.macs_total, selection.macs_removed) == (30, 18)  # 6 units x 3 MACs
    # threshold 3.5: scores 1-3 go, 7 kept -> rounded up to 8: score 3 comes back
    threshold = criteria.PruneSettings(threshold=3.5, round_to=4)
    assert criteria.select_units(groups, threshold, costs).removed[0].tolist() == [0, 1]
    # a multiple already, and a group no larger than N: as the criterion chose
    eight = criteria.PruneSettings(threshold=2.5, round_to=8)  # 8 kept
    assert criteria.select_units(groups, eight, costs).removed[0].tolist() == [0, 1]
    small, small_costs = _one_layer_group([0.0, 1.0, 2.0])
    kept_as_is = criteria.PruneSettings(threshold=0.5, round_to=4)
    assert criteria.select_units(small, kept_as_is, small_costs).removed[0].tolist() == [0]
