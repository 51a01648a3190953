"""The prune and fine-tune stages on a run context: config choices reach the code, bad values
are refused by name, and a pruned ResNet with folded convs fine-tunes with the regularizer on."""

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


def test_ratio_prune_then_regularized_finetune_on_a_resnet(tmp_path, compose_cfg):
    cfg = compose_cfg(
        "experiment=smoke",
        "model=resnet20",
        "dataset.input_shape=[3,32,32]",
        "dataset.train_size=64",
        "dataset.test_size=32",
        "prune=ratio",
        "prune.ratio=0.4",
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
