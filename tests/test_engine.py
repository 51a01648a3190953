"""The training loop: one epoch on data a linear model must learn, and the device settings."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from sparsenet.data.loaders import make_loader
from sparsenet.pipeline.engine import StepSettings, evaluate, parameter_groups, train_epoch
from sparsenet.pipeline.schedules import Cosine, MultiStep, WarmupCosine, make_schedule


def _separable(n: int = 512):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 4, 4, generator=g)
    y = (x.flatten(1).sum(1) > 0).long()  # a linear rule: learnable to ~100%
    return TensorDataset(x, y)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))


@pytest.mark.parametrize("settings", [StepSettings(), StepSettings(amp=True, channels_last=True)])
def test_training_learns_a_linear_rule(settings):
    model, data = _model(), _separable()
    loader = make_loader(data, 32, shuffle=True, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    cpu = torch.device("cpu")
    for _ in range(5):
        stats = train_epoch(
            model, loader, optimizer, None, None, cpu, progress=False, settings=settings
        )
    assert stats["train_acc"] > 90
    assert (
        evaluate(model, make_loader(data, 100, shuffle=False, seed=0), cpu, settings)["test_acc"]
        > 90
    )


def test_schedules_by_hand():
    opt = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=1.0)
    cosine = make_schedule(opt, Cosine(), 4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        cosine.step()
    # 0.5 (1 + cos(pi t / 4)) for t = 0..3
    assert lrs == pytest.approx([1.0, 0.853553, 0.5, 0.146447], abs=1e-6)

    opt = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=1.0)
    multistep = make_schedule(opt, MultiStep(milestones=[0.5, 0.75], gamma=0.1), 8)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        multistep.step()
    assert lrs == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])


def test_warmup_cosine_by_hand():
    # T = 10 steps, W = 0.2 T = 2: factors 0.1, 0.55 (climb), then 0.5 (1 + cos(pi k / 8))
    opt = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=2.0)
    schedule = make_schedule(opt, WarmupCosine(warmup=0.2, start=0.1), 10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    expected = [
        0.1,
        0.55,
        1.0,
        0.9619398,
        0.8535534,
        0.6913417,
        0.5,
        0.3086583,
        0.1464466,
        0.0380602,
    ]
    assert lrs == pytest.approx([2.0 * f for f in expected], abs=1e-6)


def test_weight_decay_spares_norm_and_bias_when_asked():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))
    (together,) = parameter_groups(model, decay_norm_and_bias=True)
    assert len(together["params"]) == 6
    decayed, spared = parameter_groups(model, decay_norm_and_bias=False)
    assert [tuple(p.shape) for p in decayed["params"]] == [(2, 1, 3, 3), (3, 2)]
    assert [tuple(p.shape) for p in spared["params"]] == [(2,), (2,), (2,), (3,)]
    assert spared["weight_decay"] == 0.0


def test_diverging_loss_is_reported():
    model, data = _model(), _separable(64)
    with torch.no_grad():
        model[3].weight.fill_(float("nan"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(FloatingPointError, match="training loss became nan"):
        train_epoch(
            model,
            make_loader(data, 32, shuffle=False, seed=0),
            optimizer,
            None,
            None,
            torch.device("cpu"),
            progress=False,
        )
