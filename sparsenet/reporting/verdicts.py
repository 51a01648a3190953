"""Verdicts on the papers' claims, judged from run records (issue 22).

Each claim is a small declarative `Claim`: which runs belong to it (the experiment bundles Hydra
recorded as the `experiment=` choice, optionally the dataset choice), the setting that names
the method (`method_key`), the pairs (claimed method, compared method), the cost measure and
the matched points, and the commands that produce the runs it needs.

From the claim's runs (completed, not shortened: no command-line override of a schedule key,
SCHEDULE_OVERRIDES), per method, configurations are the runs grouped by their swept settings
(seeds folded, `summary.build_summary`), each a point (cost, accuracy) = mean over its seeds
of the final stage's cost and test accuracy, with both seed stds (sample std, n - 1) and its
number of seeds. The method's front is its points that no other point of the method
dominates (`fronts.pareto_front`); on it the accuracy rises strictly with the cost.

Matched points, one of two kinds:

- matched accuracy L (`matched="accuracy"`): each method's cost at L, `cost_at_accuracy`: the
  smallest cost at which its front reaches L, interpolated linearly between the two front
  points whose accuracies enclose L, c(L) = c_i + (c_j - c_i) (L - a_i) / (a_j - a_i), with
  the cost's seed std interpolated the same way. Lower is better.
- matched cost b (`matched="cost"`): each method's accuracy at b, `Front.accuracy_at`. Higher is
  better.

Without levels in the claim they are taken where every front overlaps: the common range
[max of the fronts' smallest values, min of their largest] of accuracy (or cost), at its low
end, middle (geometric middle for a cost) and high end.

The rule (`judge`), at each matched point and for each pair (claimed c, compared o), with
values v_c ± s_c and v_o ± s_o and the margin m = sqrt(s_c^2 + s_o^2) (the std of a difference
of two independent figures):

- c is *better* when it beats o by more than m (v_o - v_c > m for a cost, v_c - v_o > m for an
  accuracy), *worse* when o beats c by more than m, else a *tie*. At a matched accuracy a
  method whose front never reaches L (its best configuration is below L) costs more than any
  that does: c is better if only c reaches L, worse if only o does, a tie if neither does.
- status "not enough runs" when a method of the claim has fewer than MIN_CONFIGURATIONS (5)
  configurations, a configuration a matched figure rests on (the one or two front points it is
  interpolated from; a front's best point when it never reaches L) has fewer than MIN_SEEDS
  (3) seeds, or a front does not cover a matched point (its cheapest point is already above
  L, or b is outside its cost range: nothing is extrapolated); the verdict says what is
  missing;
- else "reproduced" when c is better in every comparison (every point, every pair), "not
  reproduced" when it is better in none (ties and losses only: the claim is that it is
  better), and "mixed" otherwise.

Paper B also asks whether any configuration of its runs (any method, mean over seeds) reaches
its headline, >= 99.6% test accuracy at <= 17.3% of the parameters (`target_answer`).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from sparsenet.reporting.export import format_number, markdown_table
from sparsenet.reporting.fronts import Front, enclosing, interpolate
from sparsenet.reporting.runs import Run
from sparsenet.reporting.summary import build_summary

MIN_CONFIGURATIONS = 5  # configurations per method's front
MIN_SEEDS = 3  # seeds of each configuration a matched figure rests on
SCHEDULE_OVERRIDES = (
    "train.epochs",
    "finetune.epochs",
    "train.batch_size",
    "dataset.train_subset",
    "dataset.test_subset",
)
REPRODUCED, NOT_REPRODUCED, MIXED, NOT_ENOUGH = (
    "reproduced",
    "not reproduced",
    "mixed",
    "not enough runs",
)
BETTER, WORSE, TIE = "better", "worse", "tie"
TOLERANCE = 1e-9  # a mean of 99.6 computed as 99.59999999999999 still reaches 99.6


@dataclass(frozen=True)
class Claim:
    """One paper's claim and how sparsenet's runs test it (module docstring)."""

    id: str
    title: str
    text: str  # the claim, one sentence citing the paper
    bundles: tuple[str, ...]  # the `experiment=` choices whose runs belong to it
    method_key: str  # the setting that names the method: `regularizer`, `experiment`, ...
    pairs: tuple[tuple[str, str], ...]  # (claimed method, compared method)
    cost: str  # params_pct | macs_pct | units:<layer pattern> (sum of units kept)
    cost_label: str
    matched: str  # accuracy (compare costs at accuracy levels) | cost (accuracies at budgets)
    commands: tuple[str, ...]
    levels: tuple[float, ...] | None = None  # None: low, middle, high of the common range
    dataset: str | None = None  # the `dataset=` choice, None: any
    target: tuple[float, float] | None = None  # (accuracy >=, cost <=) asked of any config

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(m for pair in self.pairs for m in pair))

    def selects(self, run: Run) -> bool:
        """A completed, not shortened run of one of the claim's bundles (and dataset)."""
        if not run.completed or run.choices.get("experiment") not in self.bundles:
            return False
        if self.dataset is not None and str(run.setting("dataset")) != self.dataset:
            return False
        return not any(key in run.overrides for key in SCHEDULE_OVERRIDES)


PAPER_C_COMMANDS = tuple(
    f"sparsenet -m experiment=paper_c_lenet5 regularizer={name} "
    f"regularizer.strength={strengths} seed=0,1,2"
    for name, strengths in (
        ("l1_l2", "3e-2,1e-1,2e-1,5e-1,1"),
        ("l1", "1e-4,3e-4,5e-4,1e-3,3e-3"),
        ("l2", "5e-4,2e-3,5e-3,1e-2,3e-2"),
        ("ssl", "1e-3,2e-3,3e-3,5e-3,1e-2"),
    )
)
PAPER_A_BUNDLES = ("paper_a_gl", "paper_a_partial_gl", "paper_a_sgl", "paper_a_partial_sgl")
PAPER_A_STRENGTHS = "3e-5,1e-4,2e-4,5e-4,1e-3"
PAPER_A_PAIRS = (("paper_a_partial_gl", "paper_a_gl"), ("paper_a_partial_sgl", "paper_a_sgl"))
PAPER_A_TEXT = (
    "Partial regularization (E & Gao, arXiv 1912.05078) beats full group lasso and full sparse "
    "group lasso on the MLP 784-400-300-100-10{where}; judged here as higher test accuracy at "
    "the same share of parameters kept (its train accuracy, alive units and time at the "
    'bundles\' own strength: section "Paper A: full vs partial regularization").'
)
PAPER_B_STRENGTHS = "2e-5,3e-5,5e-5,7e-5,1e-4"

CLAIMS = (
    Claim(
        id="paper_c",
        title="Paper C: l1/l2 against l1, l2 and SSL (LeNet-5, MNIST)",
        text=(
            "The l1/l2 pseudo-norm on filters (Berthelier et al., ICPR Workshops 2020, arXiv "
            "2007.10022) keeps fewer filters than l1, l2 and SSL (Wen et al., NeurIPS 2016) "
            "at the same accuracy."
        ),
        bundles=("paper_c_lenet5",),
        method_key="regularizer",
        pairs=(("l1_l2", "l1"), ("l1_l2", "l2"), ("l1_l2", "ssl")),
        cost="units:conv*",
        cost_label="filters kept (conv layers)",
        matched="accuracy",
        commands=PAPER_C_COMMANDS,
    ),
    *(
        Claim(
            id=f"paper_a_{short}",
            title=f"Paper A: partial against full GL and SGL (MLP, {name})",
            text=PAPER_A_TEXT.format(where=f" on {name}"),
            bundles=PAPER_A_BUNDLES,
            method_key="experiment",
            pairs=PAPER_A_PAIRS,
            cost="params_pct",
            cost_label="% parameters kept",
            matched="cost",
            dataset=dataset,
            commands=tuple(
                f"sparsenet -m experiment={bundle}{extra} "
                f"regularizer.strength={PAPER_A_STRENGTHS} seed=0,1,2"
                for bundle in PAPER_A_BUNDLES
            ),
        )
        for short, name, dataset, extra in (
            ("mnist", "MNIST", "mnist", ""),
            ("fashion", "Fashion-MNIST", "fashion_mnist", " dataset=fashion_mnist"),
        )
    ),
    Claim(
        id="paper_b",
        title="Paper B: SGL + variance against SGL alone and group lasso (CNN, MNIST)",
        text=(
            'Variance regularization added to the sparse group lasso ("Variance-Guided '
            'Structured Sparsity in Deep Neural Networks", IEEE) keeps fewer parameters at '
            "the same accuracy than the sparse group lasso alone and the group lasso."
        ),
        bundles=("paper_b_mnist",),
        method_key="regularizer",
        pairs=(("sgl_variance", "sparse_group_lasso"), ("sgl_variance", "group_lasso")),
        cost="params_pct",
        cost_label="% parameters kept",
        matched="accuracy",
        levels=(99.4, 99.5),
        dataset="mnist",
        target=(99.6, 17.3),
        commands=(
            "sparsenet -m experiment=paper_b_mnist "
            f"regularizer.parts.sgl.strength={PAPER_B_STRENGTHS} seed=0,1,2",
            *(
                f"sparsenet -m experiment=paper_b_mnist regularizer={name} "
                f"regularizer.strength={PAPER_B_STRENGTHS} seed=0,1,2"
                for name in ("sparse_group_lasso", "group_lasso")
            ),
        ),
    ),
)


# ---------------------------------------------------------------------------- configurations


def run_cost(record: pd.Series, stage: str, cost: str) -> float:
    """One run's cost after `stage`: its `<stage>.params_pct` / `.macs_pct` column, or, for
    `units:<pattern>`, the sum of `<stage>.units.<layer>` over the layers matching it."""
    if cost.startswith("units:"):
        pattern, prefix = cost[len("units:") :], f"{stage}.units."
        columns = [
            c
            for c in record.index
            if c.startswith(prefix) and fnmatch.fnmatchcase(c[len(prefix) :], pattern)
        ]
        values = [float(record[c]) for c in columns]
        return math.nan if not values or any(math.isnan(v) for v in values) else sum(values)
    value = record.get(f"{stage}.{cost}")
    return math.nan if value is None else float(value)


def configurations(claim: Claim, runs: Sequence[Run], all_methods: bool = False) -> pd.DataFrame:
    """The claim's configurations: method, label, seeds, cost, cost_std, acc, acc_std (means
    and sample stds over the seeds of the final stage), one row per configuration; only the
    claim's methods unless `all_methods`."""
    chosen = [r for r in runs if claim.selects(r)]
    if not all_methods:
        chosen = [r for r in chosen if str(r.setting(claim.method_key)) in claim.methods]
    columns = ["method", "label", "seeds", "cost", "cost_std", "acc", "acc_std"]
    if not chosen:
        return pd.DataFrame(columns=columns)
    summary = build_summary(chosen)
    keys = [claim.method_key] + [k for k in summary.keys if k != claim.method_key]
    summary = build_summary(chosen, group_by=keys)
    stage, records = summary.final_stage, summary.records
    if stage is None or records.empty:
        return pd.DataFrame(columns=columns)
    per_run = pd.DataFrame(
        {
            "key": records[keys].apply(lambda row: "\x1f".join(map(str, row)), axis=1),
            "method": records[claim.method_key].astype(str),
            "label": records[keys[1:]].apply(
                lambda row: ", ".join(f"{k}={v}" for k, v in row.items()), axis=1
            )
            if keys[1:]
            else "",
            "cost": [run_cost(row, stage, claim.cost) for _, row in records.iterrows()],
            "acc": pd.to_numeric(records[f"{stage}.test_acc"]),
        }
    ).dropna(subset=["cost", "acc"])
    rows = []
    for _, group in per_run.groupby("key", sort=True):
        n = len(group)
        rows.append(
            {
                "method": group["method"].iloc[0],
                "label": group["label"].iloc[0] or "(bundle as is)",
                "seeds": n,
                "cost": group["cost"].mean(),
                "cost_std": group["cost"].std(ddof=1) if n > 1 else math.nan,
                "acc": group["acc"].mean(),
                "acc_std": group["acc"].std(ddof=1) if n > 1 else math.nan,
            }
        )
    return pd.DataFrame(rows, columns=columns)


def claim_fronts(table: pd.DataFrame) -> dict[str, Front]:
    """One Front per method of a configurations table (points keep cost_std)."""
    fronts = {}
    for method, group in table.groupby("method", sort=True):
        points = group.drop(columns="method").sort_values(["cost", "acc"])
        fronts[str(method)] = Front(str(method), points.reset_index(drop=True))
    return fronts


def _std(value: float) -> float:
    return 0.0 if value is None or math.isnan(value) else float(value)


def cost_at_accuracy(front: Front, acc: float) -> tuple[float, float] | None:
    """(cost, spread): the smallest cost at which the front reaches accuracy `acc`.

    On the front (cost ascending, accuracy then strictly ascending), between the points i, j
    whose accuracies enclose acc: c = c_i + (c_j - c_i) (acc - a_i) / (a_j - a_i), and the
    spread interpolated the same way from their cost seed stds (`cost_std`; 0 when absent or
    for one seed), as `Front.accuracy_at` does for the accuracy. None when the front never
    reaches acc (above its best accuracy) or starts above it (below its cheapest point's
    accuracy: the cost there is unknown, only at most the cheapest cost; no extrapolation)."""
    accs = [float(a) for a in front.front["acc"]]
    costs = [float(c) for c in front.front["cost"]]
    stds = [_std(s) for s in front.front.get("cost_std", pd.Series([math.nan] * len(costs)))]
    return interpolate(accs, costs, stds, acc)


# ---------------------------------------------------------------------------- judging


@dataclass
class Figure:
    """One method's figure at one matched point."""

    level: float
    method: str
    value: float | None  # cost (matched accuracy) or accuracy (matched cost); None: no figure
    spread: float = 0.0
    seeds: int = 0  # fewest seeds among the configurations the figure rests on
    note: str = ""  # "never reaches" / why there is no figure


@dataclass
class Comparison:
    level: float
    claimed: str
    other: str
    outcome: str  # better | worse | tie (of the claimed method)
    difference: float | None  # how much the claimed method is ahead (cost saved / acc gained)
    margin: float


@dataclass
class Verdict:
    claim: Claim
    status: str
    levels: list[float] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    configurations: dict[str, int] = field(default_factory=dict)  # method -> configurations
    on_front: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    target: str | None = None  # paper B's headline question, answered

    def figure(self, level: float, method: str) -> Figure:
        return next(f for f in self.figures if f.level == level and f.method == method)


def auto_levels(fronts: Sequence[Front], matched: str) -> list[float]:
    """Low end, middle and high end of the range every front covers (accuracy, or cost with a
    geometric middle); [] when they share none."""
    column = "acc" if matched == "accuracy" else "cost"
    low = max(float(f.front[column].min()) for f in fronts)
    high = min(float(f.front[column].max()) for f in fronts)
    if not low < high:
        return []
    middle = (low + high) / 2 if matched == "accuracy" else math.sqrt(low * high)
    return [low, middle, high]


def _cost_text(claim: Claim, cost: float) -> str:
    """`12.50% parameters kept`, `22.00 filters kept (conv layers)`."""
    space = "" if claim.cost_label.startswith("%") else " "
    return f"{format_number(cost, 2)}{space}{claim.cost_label}"


def _level_text(claim: Claim, level: float) -> str:
    if claim.matched == "accuracy":
        return f"{format_number(level, 2)}% accuracy"
    return _cost_text(claim, level)


def _figure(claim: Claim, front: Front, level: float) -> tuple[Figure, str | None]:
    """The method's figure at a matched point, and what is missing for it (or None)."""
    name, where = front.method, _level_text(claim, level)
    points = front.front
    if claim.matched == "accuracy":
        found = cost_at_accuracy(front, level)
        index = enclosing([float(a) for a in points["acc"]], level)
        if found is None and level > float(points["acc"].max()):
            best = int(points["acc"].idxmax())
            seeds = int(points.at[best, "seeds"])
            figure = Figure(level, name, None, 0.0, seeds, "never reaches")
            return figure, None if seeds >= MIN_SEEDS else (
                f"{name} at {where}: its best configuration ({points.at[best, 'label']}) has "
                f"{seeds} seed{'s' * (seeds != 1)}, needs {MIN_SEEDS}"
            )
        if found is None:
            cheapest = points.iloc[0]
            return Figure(level, name, None, note="front starts above"), (
                f"{name} at {where}: its cheapest front configuration already has "
                f"{format_number(float(cheapest['acc']), 2)}%: needs configurations below it "
                "(stronger regularization)"
            )
    else:
        found = front.accuracy_at(level)
        index = enclosing([float(c) for c in points["cost"]], level)
        if found is None:
            low, high = front.cost_range
            return Figure(level, name, None, note="outside its cost range"), (
                f"{name} at {where}: its front covers {format_number(low, 2)}-"
                f"{format_number(high, 2)} only: needs configurations around it"
            )
    seeds = min(int(points.at[i, "seeds"]) for i in index)
    figure = Figure(level, name, found[0], found[1], seeds)
    if seeds < MIN_SEEDS:
        labels = "; ".join(str(points.at[i, "label"]) for i in index)
        return figure, (
            f"{name} at {where}: the configuration(s) it rests on ({labels}) have {seeds} "
            f"seed{'s' * (seeds != 1)}, need {MIN_SEEDS}"
        )
    return figure, None


def compare(claim: Claim, mine: Figure, other: Figure) -> Comparison:
    """The claimed method's figure against another's at one matched point (module rule)."""
    margin = math.hypot(mine.spread, other.spread)
    if mine.value is None or other.value is None:  # only at matched accuracy: never reaches
        outcome = (
            TIE
            if mine.value is None and other.value is None
            else (BETTER if mine.value is not None else WORSE)
        )
        return Comparison(mine.level, mine.method, other.method, outcome, None, margin)
    ahead = other.value - mine.value if claim.matched == "accuracy" else mine.value - other.value
    outcome = BETTER if ahead > margin else WORSE if -ahead > margin else TIE
    return Comparison(mine.level, mine.method, other.method, outcome, ahead, margin)


def target_answer(claim: Claim, table: pd.DataFrame) -> str | None:
    """Whether any configuration (mean over its seeds) has accuracy >= the target's and cost
    <= the target's (to TOLERANCE: floating-point rounding of the means); with the cheapest such
    configuration, else the nearest ones."""
    if claim.target is None:
        return None
    acc, cost = claim.target
    asked = f">= {format_number(acc, 2)}% accuracy at <= {_cost_text(claim, cost)}"

    def show(row: pd.Series) -> str:
        return (
            f"{row['method']} ({row['label']}): {format_number(row['acc'], 2)}% at "
            f"{format_number(row['cost'], 2)}, {int(row['seeds'])} "
            f"seed{'s' * (int(row['seeds']) != 1)}"
        )

    if table.empty:
        return f"Paper B's headline ({asked}): no runs yet."
    reaches = table["acc"] >= acc - TOLERANCE
    cheap_enough = table["cost"] <= cost + TOLERANCE
    hits = table[reaches & cheap_enough]
    if not hits.empty:
        best = hits.sort_values(["cost", "acc"], ascending=[True, False]).iloc[0]
        return (
            f"Paper B's headline ({asked}): **reached** by {len(hits)} configuration(s); "
            f"the cheapest: {show(best)}."
        )
    near = []
    cheap = table[cheap_enough]
    if not cheap.empty:
        near.append("most accurate at <= the cost: " + show(cheap.loc[cheap["acc"].idxmax()]))
    accurate = table[reaches]
    if not accurate.empty:
        near.append("cheapest at >= the accuracy: " + show(accurate.loc[accurate["cost"].idxmin()]))
    return (
        f"Paper B's headline ({asked}): **not reached** by any of {len(table)} configurations"
        + (f"; {'; '.join(near)}." if near else ".")
    )


def judge(claim: Claim, runs: Sequence[Run]) -> Verdict:
    """The verdict on a claim from runs (rule: module docstring)."""
    table = configurations(claim, runs)
    fronts = claim_fronts(table)
    verdict = Verdict(claim, NOT_ENOUGH)
    if claim.target is not None:
        verdict.target = target_answer(claim, configurations(claim, runs, all_methods=True))
    for method in claim.methods:
        front = fronts.get(method)
        verdict.configurations[method] = 0 if front is None else len(front.points)
        verdict.on_front[method] = 0 if front is None else len(front.front)
        n = verdict.configurations[method]
        if n < MIN_CONFIGURATIONS:
            verdict.missing.append(
                f"{method} front has {n} configuration{'s' * (n != 1)}, needs {MIN_CONFIGURATIONS}"
            )
    present = [m for m in claim.methods if m in fronts]  # the figures of these are shown
    if claim.levels is not None:
        levels = list(claim.levels)
    elif len(present) >= 2:
        levels = auto_levels([fronts[m] for m in present], claim.matched)
    else:
        return verdict
    if not levels:
        verdict.missing.append(f"the fronts share no {claim.matched} range to match them on")
        return verdict
    verdict.levels = levels
    for level in levels:
        for method in present:
            figure, missing = _figure(claim, fronts[method], level)
            verdict.figures.append(figure)
            if missing:
                verdict.missing.append(missing)
    for level in levels:
        for claimed, other in claim.pairs:
            if claimed not in present or other not in present:
                continue
            mine, theirs = verdict.figure(level, claimed), verdict.figure(level, other)
            if (mine.value is None and mine.note != "never reaches") or (
                theirs.value is None and theirs.note != "never reaches"
            ):
                continue
            verdict.comparisons.append(compare(claim, mine, theirs))
    if verdict.missing:
        return verdict
    outcomes = [c.outcome for c in verdict.comparisons]
    if all(o == BETTER for o in outcomes):
        verdict.status = REPRODUCED
    elif BETTER not in outcomes:
        verdict.status = NOT_REPRODUCED
    else:
        verdict.status = MIXED
    return verdict


# ---------------------------------------------------------------------------- rendering


def _value(figure: Figure, digits: int = 2) -> str:
    if figure.value is None:
        return figure.note or "—"
    return f"{format_number(figure.value, digits)} ± {format_number(figure.spread, digits)}"


def _counts(verdict: Verdict) -> str:
    outcomes = [c.outcome for c in verdict.comparisons]
    if not outcomes:
        return "no comparison could be made yet"
    so_far = "on the runs so far, " if verdict.status == NOT_ENOUGH else ""
    return (
        f"{so_far}the claimed method is better in {outcomes.count(BETTER)} of {len(outcomes)} "
        f"comparisons (matched point × compared method), tied in {outcomes.count(TIE)}, "
        f"worse in {outcomes.count(WORSE)}"
    )


def render_verdict(verdict: Verdict) -> list[str]:
    claim = verdict.claim
    measured = claim.cost_label if claim.matched == "accuracy" else "test accuracy (%)"
    at = "accuracy (%)" if claim.matched == "accuracy" else claim.cost_label
    lines = [
        f"### {claim.title}",
        "",
        f"Claim: {claim.text}",
        "",
        f"**{verdict.status}**: {_counts(verdict)}.",
        "",
        f"Runs: `experiment={','.join(claim.bundles)}`"
        + (f", `dataset={claim.dataset}`" if claim.dataset else "")
        + f"; methods told apart by `{claim.method_key}`; {measured} compared at matched "
        f"{at}"
        + (
            f" ({', '.join(format_number(v, 2) for v in claim.levels)})"
            if claim.levels
            else " (where every front overlaps: its low end, middle and high end)"
        )
        + ".",
        "",
    ]
    if verdict.missing:
        lines += ["Missing:", "", *(f"- {m}" for m in verdict.missing), ""]
    lines += [
        markdown_table(
            pd.DataFrame(
                {
                    "method": claim.methods,
                    "configurations": [str(verdict.configurations[m]) for m in claim.methods],
                    "on front": [str(verdict.on_front[m]) for m in claim.methods],
                }
            )
        ),
        "",
    ]
    if verdict.figures:
        claimed = {c for c, _ in claim.pairs}
        rows = []
        for figure in verdict.figures:
            found = [
                c
                for c in verdict.comparisons
                if c.level == figure.level and c.other == figure.method
            ]
            outcome = "; ".join(
                f"{c.claimed} {c.outcome}"
                + (
                    f" ({c.difference:+.2f}, margin {format_number(c.margin, 2)})"
                    if c.difference is not None
                    else ""
                )
                for c in found
            )
            rows.append(
                {
                    f"matched {at}": format_number(figure.level, 2),
                    "method": figure.method + (" (claimed)" if figure.method in claimed else ""),
                    f"{measured} (± seed spread)": _value(figure),
                    "seeds": str(figure.seeds) if figure.seeds else "—",
                    "claimed method vs this one (lead, margin)": outcome or "",
                }
            )
        lines += [markdown_table(pd.DataFrame(rows)), ""]
    if verdict.target:
        lines += [verdict.target, ""]
    lines += ["Reproduce (`SPARSENET_DATA=../shared/data`):", "", "```bash", *claim.commands]
    return lines + ["```", ""]


VERDICTS = "## Verdicts"


def without_verdicts(lines: Sequence[str]) -> list[str]:
    """Page lines without their "## Verdicts" section (up to the next "## " heading)."""
    kept, inside = [], False
    for line in lines:
        if line.startswith("## "):
            inside = line == VERDICTS
        if not inside:
            kept.append(line)
    return kept


def render_verdicts(runs: Sequence[Run], claims: Sequence[Claim] = CLAIMS) -> str:
    """The "## Verdicts" section of the results page: one verdict per claim."""
    lines = [
        VERDICTS,
        "",
        "Each claim judged on sparsenet's runs (`sparsenet/reporting/verdicts.py`: the formulas "
        "and the rule). Per method, the configurations (seeds folded) and their front; figures "
        "interpolated on the fronts at matched points, ± the seeds' std. The claimed method is "
        "better than another where it is ahead by more than the margin sqrt(s1^2 + s2^2) of "
        "the two spreads, worse where behind by more, tied otherwise: **reproduced** when "
        "better everywhere, **not reproduced** when better nowhere, **mixed** in between; "
        f"**not enough runs** while a front has fewer than {MIN_CONFIGURATIONS} configurations, "
        f"a figure rests on a configuration with fewer than {MIN_SEEDS} seeds, or a front does "
        "not cover a matched point. Runs with a shortened schedule (epochs, batch size or "
        "subsets set on the command line) do not count. A strength search "
        "(`hydra/sweeper=front_search`) can place the strengths instead of the grids below; "
        "re-run what it finds with `seed=0,1,2`.",
        "",
    ]
    for claim in claims:
        lines += render_verdict(judge(claim, runs))
    return "\n".join(lines)
