"""Learning-rate schedules: a factor of the optimizer's lr per step of a training stage.

One class per schedule, registered by name (`scheduler.name` in conf/scheduler/); its fields
are the schedule's options, checked when it is built. `make_schedule` turns one into a
LambdaLR stepped every iteration over the stage's `total` steps:

    constant       1
    cosine         0.5 (1 + cos(pi t / T))                              (decay to zero)
    multistep      gamma ** (number of milestones m with t >= m T)       (m: fractions of T)
    warmup_cosine  start + (1 - start) t / W for t < W = warmup T, then
                   0.5 (1 + cos(pi (t - W) / (T - W)))                  (decay to zero)

warmup_cosine is the learning-rate shape of the one-cycle policy (Smith & Topin 2017,
"Super-convergence"): a short linear climb to the peak lr, which lets short schedules use a
large peak, then a long anneal to zero (without one-cycle's momentum cycling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sparsenet._registry import Registry
from sparsenet.config.checks import Fractions, Number, Schema, setting

SCHEDULES = Registry("schedule", __name__)
register_schedule = SCHEDULES.register


class Schedule(Schema):
    def factor(self, step: int, total: int) -> float:
        raise NotImplementedError


@register_schedule("constant")
@dataclass(frozen=True)
class Constant(Schedule):
    def factor(self, step: int, total: int) -> float:
        return 1.0


@register_schedule("cosine")
@dataclass(frozen=True)
class Cosine(Schedule):
    def factor(self, step: int, total: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


@register_schedule("multistep")
@dataclass(frozen=True)
class MultiStep(Schedule):
    milestones: tuple[float, ...] = setting(Fractions(), (0.5, 0.75))
    gamma: float = setting(Number(above=0), 0.1)

    def factor(self, step: int, total: int) -> float:
        return self.gamma ** sum(step >= m * total for m in self.milestones)


@register_schedule("warmup_cosine")
@dataclass(frozen=True)
class WarmupCosine(Schedule):
    warmup: float = setting(Number(low=0, below=1), 0.05)  # share of the stage's steps
    start: float = setting(Number(low=0, high=1), 0.1)  # factor at step 0

    def factor(self, step: int, total: int) -> float:
        climb = self.warmup * total
        if step < climb:
            return self.start + (1 - self.start) * step / climb
        rest = max(total - climb, 1e-12)
        return 0.5 * (1 + math.cos(math.pi * min(step - climb, rest) / rest))


def make_schedule(
    optimizer: torch.optim.Optimizer, schedule: Schedule, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step schedule of one training stage of `total_steps` steps."""
    total = max(total_steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule.factor(step, total))
