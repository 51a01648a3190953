"""Compress to a budget: `budget.target` (macs | params | latency) and `budget.keep` (a share of
the dense network's cost). Two parts (docs/methods.md#compress-to-a-budget):

1. **Strength control** during the `train` stage. Every `every` steps the network's *projected*
   cost is computed: the cost (`cost.UnitCosts.total`, weights of the Conv2d/Linear layers) of
   the network without the units the prune stage would take first, those whose pruning score
   s(u) = min(in_norm, out_norm) is at most

       max(prune.threshold, relative * max_v s(v))      (v: the units of u's group)

   and the regularizer's strength is moved towards the budget multiplicatively,

       lambda <- lambda * (P / T(t)) ** rate,    P the projected cost (a share of the dense
       T(t) = keep + (1 - keep) * (1 - min(1, t / (ramp * steps))) ** 3

   i.e. log lambda follows an integral controller on log(P / T): up while the projected network
   is too expensive, down once it is cheaper, so the units the budget cuts are already near
   zero when the prune stage comes. The target T(t) falls from the dense network to the budget
   over the first `ramp` share of the stage's steps along Zhu & Gupta's cubic schedule (2017,
   "To prune, or not to prune"), then stays: a unit driven to zero seldom comes back, so a
   target reached at once makes the strength overshoot it (measured: LeNet-5 / MNIST, budget
   12.5% of the MACs, no ramp: the projection fell to 5.9% within two epochs and stayed). The
   strength stays within [strength / LIMIT, strength * LIMIT] of the starting one: the
   configured strength, or with
   `start_penalty` c the strength at which the term starts at c on the weights the stage
   starts from, c / R(W) (R without its strength: regularizers' values differ by orders of
   magnitude, so this puts a sweep over regularizers on one footing), or with `start_reach`
   the strength whose shrinking alone would zero the units the budget cuts by the ramp's end,
   lambda_0 = r_cut / (g * sum_{t < ramp * steps} lr_t) (`reach`; g = 1 / (1 - momentum) for
   the gradient, 1 for the proximal step). The
   trajectory (step, strength, P / dense) is recorded in metrics.json, the epoch's last values
   in history.csv, the controller's state in the checkpoint (a resumed run continues it).
   Every process of a data-parallel run computes the same P from the same weights.

2. **The prune stage cuts to the budget**: `prune.criterion=ratio` with `target` the budget's
   and `ratio = 1 - keep` (scope global: the smallest relative scores first, after every unit
   at or below `prune.threshold`), so it removes units until the cost is within the budget and
   no more (criteria.py); the kept share is reported as `target_kept`.

The projection's relative cut is the ordering key of the ratio criterion, so when P <= T the
units the prune stage removes all have relative scores at most `relative`: the cut costs little
accuracy before fine-tuning. A `relative` of 0 projects with the absolute floor only (exact
zeros: the proximal option, SSL's zeroing).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from sparsenet.config.checks import Boolean, Choice, Integer, Number, Schema, setting
from sparsenet.errors import ConfigError
from sparsenet.pruning.cost import COSTS, UnitCosts
from sparsenet.pruning.criteria import PruneSettings

LIMIT = 1e4  # the strength stays within [configured / LIMIT, configured * LIMIT]
TRAJECTORY_DIGITS = 6


@dataclass
class BudgetSettings(Schema):
    """The `budget` config group (conf/budget/default.yaml); `target` null: no budget."""

    target: str | None = setting(Choice(COSTS, optional=True), None)
    keep: float = setting(Number(above=0, high=1), 0.5)  # share of the dense network's cost
    relative: float = setting(Number(low=0, below=1), 0.01)  # projection: the relative cut
    rate: float = setting(Number(above=0), 0.05)  # exponent of each multiplicative update
    every: int = setting(Integer(low=1), 20)  # steps between two updates
    ramp: float = setting(Number(low=0, high=1), 0.5)  # share of the steps T(t) falls over
    start_penalty: float | None = setting(Number(above=0, optional=True), None)  # c / R(W)
    start_reach: bool = setting(Boolean(), False, hash_unless=False)  # lambda_reach (docstring)

    @property
    def active(self) -> bool:
        return self.target is not None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.start_reach and self.start_penalty is not None:
            raise ConfigError(
                "start_penalty",
                self.start_penalty,
                "conflicts with budget.start_reach=true (both choose the starting strength)",
                "null with start_reach, or start_reach=false",
            )


def prune_settings_for(budget: BudgetSettings, prune: PruneSettings) -> PruneSettings:
    """The prune stage's settings under a budget (module docstring, part 2). The criterion the
    user chose must be the default `threshold` (its threshold stays the floor): another one
    would cut by its own rule, not to the budget."""
    if not budget.active:
        return prune
    if prune.criterion != "threshold":
        raise ConfigError(
            "prune.criterion",
            prune.criterion,
            f"conflicts with budget.target={budget.target}: the prune stage then cuts to the "
            "budget (ratio on its target)",
            "threshold (the default; prune.threshold stays the floor)",
        )
    return dataclasses.replace(
        prune, criterion="ratio", target=budget.target, ratio=1.0 - budget.keep, scope="global"
    )


class StrengthController:
    """Part 1 of the module docstring for one `train` stage: `bind` on the model as it stands,
    then `step` after every optimizer step."""

    def __init__(self, budget: BudgetSettings, floor: float) -> None:
        self.budget = budget
        self.floor = floor  # prune.threshold
        self.regularizer = None
        self.steps = 0
        self.factor = 1.0  # strength / configured strength
        self.trajectory: list[tuple[int, float, float]] = []
        self.projected: float | None = None  # P / dense cost at the last update
        self.total_steps = 0

    def bind(
        self,
        model: nn.Module,
        example: torch.Tensor,
        regularizer,
        total_steps: int,
        lr_at: Callable[[int], float] | None = None,
        momentum: float = 0.0,
    ) -> None:
        """The dense costs of `model` (every unit alive), the regularizer whose strength moves
        (its configured strength is the starting point) and the stage's number of steps;
        for `start_reach`, the stage's scheduled learning rate `lr_at(step)` and the
        optimizer's momentum."""
        self.regularizer = regularizer
        self.total_steps = total_steps
        self.configured = float(regularizer.strength)
        self.costs = UnitCosts(model, example, self.budget.target, threshold=self.floor)
        self.dense = self.costs.total()
        if self.budget.start_penalty is not None:
            value = regularizer.magnitude(model)
            if value > 0:  # (0: all weights zero; the configured strength)
                self.configured = self.budget.start_penalty / value
        if self.budget.start_reach:
            if lr_at is None:
                raise ValueError("start_reach needs the stage's learning rates (lr_at)")
            gain = 1.0 if regularizer.shrinks_by_prox else 1.0 / (1.0 - momentum)
            # the ramp's steps (no ramp: the whole stage, not one step's worth of shrinking)
            span = max(1, round(self.budget.ramp * total_steps) or total_steps)
            travel = gain * sum(lr_at(step) for step in range(span))
            reach = self.reach(model)
            if travel > 0 and math.isfinite(reach) and reach > 0:
                self.configured = reach / travel
        if self.configured <= 0:
            raise ConfigError(
                "regularizer.strength",
                self.configured,
                "is the starting point of budget control and must be positive",
                "a number > 0",
            )
        self.apply_strength()

    def reach(self, model: nn.Module) -> float:
        """lambda * lr-time at which the regularizer's shrinking alone takes the last unit the
        budget cuts to zero (module docstring, `start_reach`), to first order. Under gradient
        descent on lambda * R with step lr, a slice set w (a unit's incoming rows, or its
        consumers' input columns) shrinks as d||w||/dt = -lambda * lr * <w, dR/dw> / ||w||,
        so at its initial rate it reaches zero after lambda * sum lr = ||w||^2 / <w, dR/dw>
        (exact for one group-lasso group of weight c: ||w|| / c; a set spread over several
        groups, as a unit's columns in layer-wise groups, gets the weighted mean of their
        times, not the largest; inf when R does not shrink it). A unit is cut when either of
        its two norms (its pruning score min(in_norm, out_norm)) is gone:
        r_u = min(r_in, r_out). The units are taken in increasing r_u until the cost is
        within the budget: the r_u of the last one taken."""
        index = self.costs.index
        parameters = [p for p in model.parameters() if p.requires_grad]
        value = self.regularizer.magnitude(model, differentiable=True)
        if not value.requires_grad:  # a penalty with no weights in it
            return math.inf
        grads = torch.autograd.grad(value, parameters, allow_unused=True)
        by_tensor = {id(p): g for p, g in zip(parameters, grads, strict=True)}

        def inner(p: torch.Tensor) -> torch.Tensor:
            g = by_tensor.get(id(p))
            return torch.zeros_like(p) if g is None else p.detach() * g

        with torch.no_grad():
            reach = None
            for kind in ("out", "in"):
                squared = index.sums(torch.square, (kind,)).detach()
                shrink = index.sums(inner, (kind,))
                part = torch.where(shrink > 0, squared / shrink.clamp_min(1e-30), math.inf)
                part = torch.where(squared > 0, part, 0.0)  # already zero
                reach = part if reach is None else torch.minimum(reach, part)
            order = torch.argsort(reach)
            low, high = 0, len(order)  # the fewest units (in order) that meet the budget
            while low < high:
                middle = (low + high) // 2
                if self._share_without(order[:middle]) <= self.budget.keep:
                    high = middle
                else:
                    low = middle + 1
            self._share_without(order[:0])  # back to every unit alive
            return float(reach[order[low - 1]]) if low > 0 else 0.0

    def _share_without(self, removed: torch.Tensor) -> float:
        alive = torch.ones(self.costs.num_units, dtype=torch.bool, device=removed.device)
        alive[removed] = False
        self.costs.refresh(alive)
        return self.costs.total() / self.dense if self.dense else 1.0

    @torch.no_grad()
    def projected_share(self) -> float:
        """P / dense cost for the current weights (module docstring)."""
        scores = self.costs.scores()
        relative = self.costs.relative_scores(scores)
        alive = (scores > self.floor) & (relative > self.budget.relative)
        self.costs.refresh(alive)
        return self.costs.total() / self.dense if self.dense else 1.0

    def step(self) -> None:
        """After an optimizer step: every `every` steps, P and the strength's update."""
        self.steps += 1
        if self.steps % self.budget.every:
            return
        share = self.projected_share()
        self.projected = share
        error = math.log(max(share, 1e-12) / self.target_share(self.steps))
        self.factor = min(max(self.factor * math.exp(self.budget.rate * error), 1 / LIMIT), LIMIT)
        self.apply_strength()
        self.trajectory.append(
            (
                self.steps,
                round(self.regularizer.strength, TRAJECTORY_DIGITS + 4),
                round(share, TRAJECTORY_DIGITS),
            )
        )

    def target_share(self, step: int) -> float:
        """T(t): the budget's share on the cubic ramp (module docstring)."""
        keep = self.budget.keep
        span = self.budget.ramp * self.total_steps
        progress = min(1.0, step / span) if span > 0 else 1.0
        return keep + (1.0 - keep) * (1.0 - progress) ** 3

    def apply_strength(self) -> None:
        """The regularizer's strength from the start and the factor (after `configured` moved)."""
        self.regularizer.strength = self.configured * self.factor

    def epoch_figures(self) -> dict:
        """The last strength and projected share, for the epoch's history row."""
        share = self.projected if self.projected is not None else self.projected_share()
        return {"strength": self.regularizer.strength, "projected_cost": share}

    def figures(self) -> dict:
        """For metrics.json: the budget, the final strength and projection, the trajectory."""
        return {
            "target": self.budget.target,
            "keep": self.budget.keep,
            "dense_cost": self.dense,
            "configured_strength": self.configured,
            "final_strength": self.regularizer.strength,
            "projected_cost": self.projected,
            "trajectory": [list(t) for t in self.trajectory],
        }

    def state_dict(self) -> dict:
        return {
            "steps": self.steps,
            "configured": self.configured,
            "factor": self.factor,
            "projected": self.projected,
            "trajectory": list(self.trajectory),
        }

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.configured = float(state["configured"])  # from the stage's first weights
        self.factor = float(state["factor"])
        self.projected = state["projected"]
        self.trajectory = [tuple(t) for t in state["trajectory"]]
        self.apply_strength()
