"""Which units to remove: the `prune.*` settings and the three selection criteria.

Every unit u of a coupled group g (see `remove.py`) has a score
    s(u) = min(in_norm(u), out_norm(u))
(0 when nothing reaches the unit or nothing leaves it). The criteria (`prune.criterion`):
- `threshold`: remove u when s(u) <= threshold (absolute).
- `relative`:  remove u when s(u) <= max(threshold, relative * max_v s(v)), max over the
  units of u's group: a per-layer cut that does not depend on the layer's weight scale.
- `ratio`:     remove every u with s(u) <= threshold, then further units one at a time until
  a share `ratio` of the prunable units (`target: units`) or of the network's MACs, weights or
  latency (`target: macs | params | latency`) is gone, in the order of
    `scope: global`: the relative score r(u) = s(u) / max_v s(v), smallest first, across all
                     groups (ties: smaller s first): layers lose units where they matter least;
    `scope: layer`:  the rank fraction k(u) / n_g of u among its group's n_g scores (k = 1 for
                     the smallest), so every layer loses about the same share of its units
                     (a uniform width multiplier, smallest scores first within each layer).
In every mode `prune.threshold` is an absolute floor (units at or below it always go), and at
least `min_units` units of each group stay, the ones with the largest scores, so no layer
vanishes (a `ratio` that would need more is not reached; the result says what was).

`round_to` N > 1 keeps every group's width a multiple of N (vectorised kernels and GPU tiles
run full multiples of 8 or 16 at the speed of the next one up, so a width of 33 costs what 48
does): under `ratio` each group's kept count is rounded *down* (its next-smallest scores go
too, so a budget stays met; never below N), under `threshold` and `relative` *up* (the
largest-scored of its removed units come back, so no unit the rule kept is cut). A group of
at most N units is left as the criterion chose. The reported MACs and `target_kept` are those
of the rounded selection.

MACs of a Conv2d/Linear layer with n_out out-units and n_in in-units are P * n_out * n_in,
P = H_out * W_out * kh * kw / groups (1 for Linear); removing a unit lowers n_out of its
producers and n_in of its consumers (by H*W per channel for a Linear after Flatten). The greedy
`ratio` selection updates these counts unit by unit, so the MACs it reports removed are exact
for the architecture it leaves (cross terms included). `target: params` and `latency` use the
same ledger with another cost per (out, in) pair of a layer: its weights per pair
(kh * kw / groups; weights only, biases and BatchNorm not counted) or its measured latency
spread over them (`cost.layer_latency_ms`, the model of `cost.py`). A budget
(`budget.target`, `budget.keep`; sparsenet/pruning/budget.py) is this criterion with
`ratio = 1 - keep` on its target.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from sparsenet.config.checks import Choice, Integer, Number, Schema, setting

CRITERIA = ("threshold", "relative", "ratio")
TARGETS = ("units", "macs", "params", "latency")
FOLDS = ("exact", "bias")
SCOPES = ("global", "layer")


@dataclass
class PruneSettings(Schema):
    """The `prune` config group (its schema too): each bad value raises ConfigError naming it.
    The defaults serve library use (`PruneSettings(criterion="ratio")`); runs take every value
    from conf/prune/."""

    criterion: str = setting(Choice(CRITERIA), "threshold")
    threshold: float = setting(Number(low=0), 1e-3)  # absolute floor, every criterion
    relative: float = setting(Number(low=0, high=1), 0.0)  # criterion=relative: share of max
    ratio: float = setting(Number(low=0, below=1), 0.5)  # criterion=ratio: share to remove
    target: str = setting(Choice(TARGETS), "units")  # criterion=ratio: units|macs|params|latency
    scope: str = setting(Choice(SCOPES), "global")  # criterion=ratio: global | layer
    min_units: int = setting(Integer(low=1), 1)  # kept in every group
    round_to: int = setting(Integer(low=1), 1, hash_unless=1)  # widths kept multiples of it
    fold: str = setting(Choice(FOLDS), "exact")  # exact (border-correct) | bias (interior)
    calibration_samples: int = setting(Integer(low=1), 256)  # samples whose means are folded
    # training batches that re-estimate BatchNorm statistics after the cut (recalibrate.py)
    recalibrate_batches: int = setting(Integer(low=0), 0, hash_unless=0)

    @property
    def cost_target(self) -> str | None:
        """params or latency when a ratio cut is measured in them (their per-layer costs are
        then needed beside the MACs), else None."""
        wanted = self.criterion == "ratio" and self.target in ("params", "latency")
        return self.target if wanted else None


@dataclass
class UnitGroup:
    """One coupled group as the criteria see it: a score per unit and, per Conv2d/Linear
    slice of the group, how many of that layer's out- or in-units each unit owns."""

    name: str
    score: torch.Tensor  # (n,) min(in_norm, out_norm)
    slices: list[tuple[str, str, torch.Tensor]] = field(default_factory=list)  # layer, out|in, (n,)

    @property
    def size(self) -> int:
        return int(self.score.numel())


@dataclass
class LayerCost:
    """A cost (MACs, weights, latency) = per_pair * n_out * n_in for one Conv2d/Linear layer
    (one sample): the property is named for the default, MACs."""

    per_pair: float
    n_out: int
    n_in: int

    @property
    def macs(self) -> float:
        return self.per_pair * self.n_out * self.n_in


@dataclass
class Selection:
    removed: list[torch.Tensor]  # per group, sorted unit indices
    units_total: int
    units_removed: int
    macs_total: int
    macs_removed: int  # of the architecture left, by the P * n_out * n_in model
    cut: float | None = None  # ratio: ordering key (r or k / n) of the last unit removed
    target_kept: float | None = None  # ratio on macs | params | latency: share of it left


class _CostLedger:
    """Tracks n_out / n_in per layer while units are removed one by one, and the cost gone."""

    def __init__(self, costs: Mapping[str, LayerCost]) -> None:
        self.costs_at_start = costs
        self.costs = {k: LayerCost(v.per_pair, v.n_out, v.n_in) for k, v in costs.items()}
        self.total = sum(c.macs for c in self.costs.values())
        self.removed = 0.0

    def remove(self, group: UnitGroup, unit: int) -> None:
        for layer, kind, counts in group.slices:
            count = int(counts[unit])
            cost = self.costs.get(layer)
            if not count or cost is None:
                continue
            if kind == "out":
                self.removed += cost.per_pair * count * cost.n_in
                cost.n_out -= count
            else:
                self.removed += cost.per_pair * cost.n_out * count
                cost.n_in -= count


def _keep_floor(dead: torch.Tensor, score: torch.Tensor, min_units: int) -> torch.Tensor:
    """`dead` (bool mask) with the top-`min_units` scores forced alive."""
    keep = min(min_units, score.numel())
    if int((~dead).sum()) < keep:
        order = torch.argsort(score, descending=True, stable=True)
        dead = torch.ones_like(dead)
        dead[order[:keep]] = False
    return dead


def _round_width(score: torch.Tensor, dead: torch.Tensor, n: int, down: bool) -> torch.Tensor:
    """`dead` with the group's kept count rounded to a multiple of `n` (module docstring)."""
    size, kept = score.numel(), int((~dead).sum())
    if size <= n or kept % n == 0:
        return dead
    goal = (kept // n) * n if down else min(size, -(-kept // n) * n)
    goal = max(goal, n)
    dead = dead.clone()
    order = torch.argsort(score, descending=True, stable=True)  # largest scores first
    if goal < kept:  # cut the smallest kept scores
        alive = [u for u in order.tolist() if not dead[u]]
        dead[alive[goal:]] = True
    else:  # bring back the largest removed scores
        removed = [u for u in order.tolist() if dead[u]]
        dead[removed[: goal - kept]] = False
    return dead


def select_units(
    groups: list[UnitGroup],
    settings: PruneSettings,
    costs: Mapping[str, LayerCost],
    target_costs: Mapping[str, LayerCost] | None = None,
) -> Selection:
    """Apply `settings.criterion` to every group; see the module docstring. `costs`: each
    layer's MACs; `target_costs`: its cost in `settings.target` units when that is params or
    latency (the MACs otherwise)."""
    ledger = _CostLedger(costs)
    target = ledger
    if settings.cost_target is not None:
        if target_costs is None:
            raise ValueError(f"target={settings.target} needs the layers' {settings.target}")
        target = _CostLedger(target_costs)
    ledgers = (ledger,) if target is ledger else (ledger, target)
    masks: list[torch.Tensor] = []
    for group in groups:
        score = group.score
        limit = settings.threshold
        if settings.criterion == "relative" and score.numel():
            limit = max(limit, settings.relative * float(score.max()))
        masks.append(_keep_floor(score <= limit, score, settings.min_units))
    for group, dead in zip(groups, masks, strict=True):
        for unit in dead.nonzero().flatten().tolist():
            for book in ledgers:
                book.remove(group, unit)

    units_total = sum(g.size for g in groups)
    units_removed = sum(int(m.sum()) for m in masks)
    cut = None
    if settings.criterion == "ratio":
        candidates = []
        for gi, (group, dead) in enumerate(zip(groups, masks, strict=True)):
            top = float(group.score.max()) if group.size else 0.0
            relative = group.score / top if top > 0 else torch.zeros_like(group.score)
            if settings.scope == "layer":
                rank = torch.empty(group.size)
                rank[torch.argsort(group.score, stable=True)] = torch.arange(1.0, group.size + 1)
                key = rank / group.size
            else:
                key = relative
            for unit in (~dead).nonzero().flatten().tolist():
                candidates.append((float(key[unit]), float(group.score[unit]), gi, unit))
        candidates.sort()
        kept = [g.size - int(m.sum()) for g, m in zip(groups, masks, strict=True)]
        floor = [min(settings.min_units, g.size) for g in groups]

        def reached() -> bool:
            if settings.target == "units":
                return units_removed >= settings.ratio * units_total
            return target.removed >= settings.ratio * target.total

        for key, _, gi, unit in candidates:
            if reached():
                break
            if kept[gi] <= floor[gi]:
                continue
            masks[gi][unit] = True
            kept[gi] -= 1
            units_removed += 1
            for book in ledgers:
                book.remove(groups[gi], unit)
            cut = key
    if settings.round_to > 1:
        masks = [
            _round_width(group.score, dead, settings.round_to, down=settings.criterion == "ratio")
            for group, dead in zip(groups, masks, strict=True)
        ]
        ledgers = tuple(_CostLedger(book.costs_at_start) for book in ledgers)
        ledger, target = ledgers[0], ledgers[-1]
        for group, dead in zip(groups, masks, strict=True):
            for unit in dead.nonzero().flatten().tolist():
                for book in ledgers:
                    book.remove(group, unit)
        units_removed = sum(int(m.sum()) for m in masks)
    return Selection(
        removed=[m.nonzero().flatten() for m in masks],
        units_total=units_total,
        units_removed=units_removed,
        macs_total=round(ledger.total),
        macs_removed=round(ledger.removed),
        cut=cut,
        target_kept=(
            1.0 - target.removed / target.total
            if settings.criterion == "ratio" and settings.target != "units" and target.total
            else None
        ),
    )
