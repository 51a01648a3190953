"""The prune and fine-tune stages on a run context: config choices reach the code, bad values
are refused by name, and a pruned ResNet with folded convs fine-tunes with the regularizer on."""

import dataclasses

import pytest
import torch

from sparsenet.errors import ConfigError
from sparsenet.pipeline.run import build_context
from sparsenet.pipeline.settings import parse_config
from sparsenet.pipeline.stages import finetune_stage, prune_stage
from sparsenet.pruning import FoldedConv2d

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    ("overrides", "optimizer", "lr"),
    [
        ((), torch.optim.SGD, 0.01),  # the training optimizer with finetune.lr
        (("optimizer=adam", "finetune.lr=null"), torch.optim.Adam, 1e-3),  # its own lr
        (("optimizer=adam", "finetune=sgd"), torch.optim.SGD, 0.01),  # a separate optimizer
        (
            ("finetune.optimizer={_target_:torch.optim.RMSprop}", "finetune.lr=0.2"),
            torch.optim.RMSprop,
            0.2,
        ),
    ],
)
def test_finetune_optimizer_choice(overrides, optimizer, lr, compose_cfg):
    settings = parse_config(compose_cfg(*overrides)).finetune
    built = settings.optimizer.build([torch.nn.Parameter(torch.ones(2))], settings.lr)
    assert type(built) is optimizer and built.param_groups[0]["lr"] == pytest.approx(lr)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("finetune.epochs=-1", "finetune.epochs=-1 is out of range; allowed: an integer >= 0"),
        ("finetune.lr=0", "finetune.lr=0.0 is out of range; allowed: null or a finite number > 0"),
        ("prune.min_units=0", "prune.min_units=0 is out of range; allowed: an integer >= 1"),
        (
            "prune.ratio=2",
            "prune.ratio=2.0 is out of range; allowed: a finite number >= 0 and < 1",
        ),
    ],
)
def test_stage_configs_are_checked_up_front(override, message, compose_cfg):
    with pytest.raises(ConfigError) as refused:
        parse_config(compose_cfg(override))
    assert str(refused.value) == message


# a smoke run of ResNet-20 on 64 synthetic images, cut with the ratio criterion
RESNET_RATIO_CUT = (
    "experiment=smoke",
    "model=resnet20",
    "dataset.input_shape=[3,32,32]",
    "dataset.train_size=64",
    "dataset.test_size=32",
    "prune=ratio",
    "prune.ratio=0.4",
)


def test_ratio_prune_then_regularized_finetune_on_a_resnet(tmp_path, compose_cfg):
    cfg = compose_cfg(
        *RESNET_RATIO_CUT,
        "prune.calibration_samples=32",
        "finetune=sgd",
        "finetune.regularize=true",
        "regularizer.structure=coupled",
    )
    ctx = build_context(parse_config(cfg), tmp_path)

    def conv_weights() -> int:
        return sum(m.weight.numel() for m in ctx.model.modules() if isinstance(m, torch.nn.Conv2d))

    dense = conv_weights()

    figures = prune_stage(ctx)

    assert figures["criterion"] == "ratio" and figures["target"] == "macs"
    assert figures["units_removed"] == sum(figures["removed_units"].values())
    folded = [n for n, m in ctx.model.named_modules() if isinstance(m, FoldedConv2d)]
    assert folded and folded == figures["folded_layers"]
    assert conv_weights() < dense

    figures = finetune_stage(ctx)
    assert figures["epochs"] == 1 and figures["final_reg"] > 0
    assert figures["optimizer"] == "torch.optim.SGD"
    x = torch.randn(2, 3, 32, 32)
    ctx.model.eval()
    assert torch.isfinite(ctx.model(x)).all()


# --- BatchNorm recalibration after the cut (sparsenet/pruning/recalibrate.py) ---------------
def test_recalibration_averages_the_batch_statistics_worked_out_by_hand():
    """conv (1 -> 2, 1x1, weights 1 and 2, no bias) -> BN: the conv outputs are x and 2x, so
    over two batches the running mean is the mean of the batch means of x (times 1 and 2) and
    the running variance the mean of the unbiased batch variances (times 1 and 4)."""
    from sparsenet.pruning.recalibrate import recalibrate_batchnorm

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1, bias=False), torch.nn.BatchNorm2d(2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
    model[1].running_mean.fill_(7.0)  # stale statistics of a network before a cut
    model.eval()
    first = torch.tensor([0.0, 1.0, 2.0, 3.0]).view(1, 1, 2, 2)  # mean 1.5, var 5/3
    second = torch.tensor([4.0, 4.0, 6.0, 6.0]).view(1, 1, 2, 2)  # mean 5, var 4/3
    assert recalibrate_batchnorm(model, [first, second]) == 2
    mean, var = (1.5 + 5.0) / 2, (5 / 3 + 4 / 3) / 2
    assert model[1].running_mean.tolist() == pytest.approx([mean, 2 * mean])
    assert model[1].running_var.tolist() == pytest.approx([var, 4 * var])
    assert model[1].momentum == 0.1 and not model.training  # left as they were


def test_recalibration_changes_nothing_without_batchnorm():
    from sparsenet.pruning.recalibrate import recalibrate_batchnorm

    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    assert recalibrate_batchnorm(model, [torch.ones(1, 3)]) == 0


def test_the_prune_stage_recalibrates_when_asked(tmp_path, compose_cfg):
    """prune.recalibrate_batches=2 on a ResNet: the statistics are those of the training
    batches after the cut (not the dense network's), and every process would get the same."""
    cfg = compose_cfg(
        *RESNET_RATIO_CUT,
        "prune.calibration_samples=16",
        "prune.recalibrate_batches=2",
    )
    from sparsenet.data.loaders import make_loader

    ctx = build_context(parse_config(cfg), tmp_path)
    figures = prune_stage(ctx)
    assert figures["recalibrated_batches"] == 2
    # the same cut without recalibration, then BatchNorm in train mode over the first two
    # batches of a fresh seeded, augmented loader (the split holds one batch: two epochs)
    plain = build_context(parse_config(cfg.copy()), tmp_path / "plain")
    plain.settings = dataclasses.replace(
        plain.settings, prune=dataclasses.replace(plain.settings.prune, recalibrate_batches=0)
    )
    assert "recalibrated_batches" not in prune_stage(plain)
    loader = make_loader(
        plain.data.train,
        64,
        shuffle=True,
        seed=plain.settings.seed,
        augment=plain.data.train_augment,
    )
    batches = [x for epoch in range(2) for x, _ in loader]
    assert len(batches) == 2
    norms = [m for m in plain.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    plain.model.train()
    with torch.no_grad():
        for x in batches:
            plain.model(x)
    got = [m for m in ctx.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for mine, expected in zip(got, norms, strict=True):
        assert torch.allclose(mine.running_mean, expected.running_mean, atol=1e-6)
        assert torch.allclose(mine.running_var, expected.running_var, atol=1e-6)
    assert any(float(m.running_mean.abs().sum()) > 0 for m in got)  # re-estimated (init: 0)
