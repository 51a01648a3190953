"""Write docs/results.md: every experiment bundle's runs beside the paper's figures.

    python scripts/paper_results.py [FOLDER ...] [--out docs/results.md] [--records results]

FOLDERs (default: outputs/) are searched for runs (`metrics.json`). Each completed run of a
bundle found there is also kept as a *record* in the committed folder `--records`
(`results/<bundle>/<sweep name>/<run folder>/`: its `metrics.json` and Hydra's
`.hydra/{config,overrides,hydra}.yaml`, a few kB, no weights), and the page is built from the
records of every run kept so far plus the runs found: results survive the machines that
produced them, and the page can be rebuilt from the repository alone
(`python scripts/paper_results.py results`). Sections of the page that the records do not
cover (bundles measured before records were kept) are carried over verbatim from the page
being replaced, and the page says which; the summary sections before "Every bundle" are
rebuilt only when no bundle is carried over (they compare across all bundles).

A run belongs to the bundle
Hydra recorded as its `experiment=` choice, and the paper's figures come from the bundle's
`reference:` block as the run saved it. Runs of a bundle are grouped by their command-line
overrides without `seed` (seeds folded into mean ± sample std). A group is marked *shortened*
where its schedule or data (epochs, subsets, batch size) differ from the bundle's own, composed
here from the installed configs: those figures do not test the paper's claim.

Nothing in the output is typed by hand: rerun this script after new runs.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from sparsenet.reporting.runs import Run, find_runs
from sparsenet.reporting.verdicts import SCHEDULE_OVERRIDES, render_verdicts, without_verdicts
from sparsenet.runtime import atomic_write_bytes

SCHEDULE_KEYS = SCHEDULE_OVERRIDES  # one definition of a shortened run's keys
IGNORED_OVERRIDES = {
    "seed",
    "train.progress",
    "train.num_threads",  # how many cores a run used, not what it computes
    "dataset.root",
    "dataset.format",
    "name",
}
LATENCY_BATCHES = ("1", "64")  # the batch sizes the page shows (scripts/run_latency.py)
MNIST_PARAMS_PCT = 17.3  # paper B's ratio: the MNIST target of issue 6


def lookup(tree: dict, key: str):
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def bundle_tree(bundle: str) -> dict:
    """The bundle's config as its YAML defines it today (unresolved)."""
    cfg = compose(config_name="config", overrides=[f"experiment={bundle}"])
    return OmegaConf.to_container(cfg, resolve=False)


def bundle_schedule(bundle: str) -> dict:
    """The schedule keys of a bundle as its YAML defines them."""
    tree = bundle_tree(bundle)
    return {key: lookup(tree, key) for key in SCHEDULE_KEYS}


def fmt_mean(values: list[float], digits: int = 2) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def units(stage: dict, key: str = "units_kept", skip_output: bool = True) -> str:
    layers = stage.get("layers", [])
    if skip_output:
        layers = layers[:-1]
    return "-".join(str(layer[key]) for layer in layers)


def inputs_alive(stage: dict) -> str:
    """Paper A's alive units: input units of each layer with sum |outgoing w| > 1e-3."""
    return "-".join(str(layer["inputs_alive"]) for layer in stage.get("layers", []))


def final(run: Run) -> dict:
    return run.stages[run.final_stage]


def first(run: Run) -> dict:
    return next(iter(run.stages.values()))


def before_pruning(run: Run) -> dict:
    """The stage the prune stage started from (the regularized training), else the first."""
    names = list(run.stages)
    if "prune" in names and names.index("prune") > 0:
        return run.stages[names[names.index("prune") - 1]]
    return first(run)


def group_key(run: Run) -> tuple:
    kept = {k: v for k, v in run.overrides.items() if k not in IGNORED_OVERRIDES}
    return tuple(sorted(kept.items()))


def shortened(runs: list[Run], schedule: dict) -> str:
    """'' when the runs used the bundle's schedule, else what differs."""
    differences = []
    for key, bundle_value in schedule.items():
        value = lookup(runs[0].config, key)
        if value != bundle_value:
            differences.append(f"{key}={value} (bundle: {bundle_value})")
    return "; ".join(differences)


def latency(run: Run) -> dict | None:
    """The run's latency.json (scripts/run_latency.py), or None."""
    path = run.path / "latency.json"
    return json.loads(path.read_text()) if path.is_file() else None


def latency_cell(runs: list[Run]) -> str:
    """Median ms per forward pass at batch 1 / 64 (mean over seeds), '—' where not timed."""
    cells = []
    for batch in LATENCY_BATCHES:
        values = [
            timed["batch_sizes"][batch]["median_ms"]
            for timed in map(latency, runs)
            if timed and batch in timed["batch_sizes"]
        ]
        cells.append(fmt_mean(values) if values else "—")
    return " / ".join(cells)


def after_cut(run: Run) -> float | None:
    """Test accuracy right after the prune stage, before fine-tuning (None without one)."""
    return run.stages["prune"]["test_acc"] if "prune" in run.stages else None


def describe_group(runs: list[Run]) -> dict:
    cut = [a for a in map(after_cut, runs) if a is not None]
    return {
        "after_cut": fmt_mean(cut) if cut else "—",
        "latency": latency_cell(runs),
        "seeds": len(runs),
        "dense_acc": fmt_mean([before_pruning(r)["test_acc"] for r in runs]),
        "acc": fmt_mean([final(r)["test_acc"] for r in runs]),
        "params_pct": fmt_mean([r.metrics["summary"]["params_kept_pct"] for r in runs], 1),
        "params": fmt_mean([final(r)["params"] for r in runs], 0),
        "macs_pct": fmt_mean([r.metrics["summary"]["macs_kept_pct"] for r in runs], 1),
        "units": " / ".join(sorted({units(final(r)) for r in runs})),
        "wall_min": fmt_mean([r.metrics["summary"]["total_wall_s"] / 60 for r in runs], 1),
    }


def paper_figures(reference: dict | None) -> str:
    if not reference:
        return "—"
    parts = []
    for key, label in (
        ("baseline_acc", "baseline"),
        ("compressed_acc", "compressed"),
        ("params_kept_pct", "params kept %"),
    ):
        if reference.get(key) is not None:
            parts.append(f"{label} {reference[key]}")
    if reference.get("structure"):
        parts.append(str(reference["structure"]))
    return "; ".join(parts) or "—"


def label(key: tuple) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in key) or "(bundle as is)"


def bundle_section(bundle: str, runs: list[Run]) -> list[str]:
    # the figures as the runs saved them; runs made before the bundle had any: today's YAML's
    reference = runs[0].config.get("reference") or bundle_tree(bundle).get("reference") or {}
    schedule = bundle_schedule(bundle)
    pretrained = any("dense" in r.stages for r in runs)  # a dense stage: its accuracy too
    pruned = any(after_cut(r) is not None for r in runs)  # the cut's own loss, before fine-tuning
    timed = any(latency(r) for r in runs)
    extra = (pretrained, pruned, timed)
    lines = [
        f"### `experiment={bundle}`",
        "",
        f"Source: {reference.get('source', '—')}. Paper: {paper_figures(reference)}.",
        "",
        "| runs | seeds | shortened | "
        + ("dense acc (dense stage) | " if pretrained else "")
        + "acc before pruning | "
        + ("acc after the cut | " if pruned else "")
        + "final acc | params kept % | params | MACs kept % | "
        + ("latency ms, batch 1 / 64 | " if timed else "")
        + "units per layer (final) | wall (min) |",
        "|---|---|---|---|---|---|---|---|---|---|" + "---|" * sum(extra),
    ]
    groups = defaultdict(list)
    for run in runs:
        groups[group_key(run)].append(run)
    commands = []
    for key, members in sorted(groups.items()):
        commands.append(f"- `{command(members)}`")
        d = describe_group(members)
        short = shortened(members, schedule) or "no"
        dense = (
            fmt_mean([r.stages["dense"]["test_acc"] for r in members if "dense" in r.stages])
            + " | "
            if pretrained
            else ""
        )
        cut = f"{d['after_cut']} | " if pruned else ""
        timing = f"{d['latency']} | " if timed else ""
        lines.append(
            f"| {label(key)} | {d['seeds']} | {short} | {dense}{d['dense_acc']} | {cut}"
            f"{d['acc']} | {d['params_pct']} | {d['params']} | {d['macs_pct']} | {timing}"
            f"{d['units']} | {d['wall_min']} |"
        )
    notes = []
    if timed:
        sessions = {json.dumps(t["measured_with"]) for t in map(latency, runs) if t}
        threads = sorted({t["threads"] for t in map(latency, runs) if t})
        notes = [
            "",
            "Latency: median wall time of one forward pass of the deployed network (BatchNorm "
            "folded), CPU, "
            + ", ".join(map(str, threads))
            + " thread(s), timed interleaved with the other networks of its session "
            f"(`python scripts/run_latency.py <run folders>`, {len(sessions)} session(s); "
            "figures from different sessions are not side by side).",
        ]
    return lines + notes + ["", "Commands (`SPARSENET_DATA=../shared/data`):", "", *commands, ""]


def command(runs: list[Run]) -> str:
    """The sweep command that reproduces a group of runs."""
    seeds = sorted({int(lookup(r.config, "seed")) for r in runs})
    overrides = {k: v for k, v in runs[0].overrides.items() if k not in ("seed", "train.progress")}
    words = [f"{k}={v}" for k, v in sorted(overrides.items())]
    return " ".join(["sparsenet -m", *words, f"seed={','.join(map(str, seeds))}"])


def paper_a_section(by_bundle: dict[str, list[Run]]) -> list[str]:
    """Full vs partial regularization (paper A's own metrics, measured before pruning)."""
    names = ["paper_a_gl", "paper_a_partial_gl", "paper_a_sgl", "paper_a_partial_sgl"]
    present = [n for n in names if by_bundle.get(n)]
    if not present:
        return []
    lines = [
        "## Paper A: full vs partial regularization",
        "",
        "Paper A's metrics on the trained network (train stage, before pruning): train and test "
        "accuracy, alive input units per layer (sum |outgoing w| > 1e-3: 784-400-300-100 "
        "dense), sparsity = share of |w| < 1e-3, and training wall time. Mean ± std over seeds. "
        "The last column is sparsenet's own count: hidden units whose group norm "
        "min(||incoming||, ||outgoing||) <= prune.threshold = 1e-3, removed by the prune stage "
        "with no change in test accuracy (an L2 criterion: under Adam, dead units keep weights "
        "around 1e-5, whose L1 sum over hundreds of weights still passes paper A's 1e-3).",
        "",
        "| bundle | seeds | shortened | train acc | test acc | alive units | alive total | "
        "sparsity % | train time (s) | units kept by pruning |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    stats = {}
    for name in present:
        runs = by_bundle[name]
        train = [r.stages["train"] for r in runs]
        alive_total = [sum(layer["inputs_alive"] for layer in t["layers"]) for t in train]
        stats[name] = {
            "train_acc": [t.get("train_acc") for t in train],
            "test_acc": [t["test_acc"] for t in train],
            "alive": alive_total,
            "time": [t["wall_s"] for t in train],
        }
        short = shortened(runs, bundle_schedule(name)) or "no"
        lines.append(
            f"| `{name}` | {len(runs)} | {short} | {fmt_mean(stats[name]['train_acc'])} | "
            f"{fmt_mean(stats[name]['test_acc'])} | "
            f"{' / '.join(sorted({inputs_alive(t) for t in train}))} | "
            f"{fmt_mean(alive_total, 0)} | "
            f"{fmt_mean([100 * t['small_weight_share'] for t in train], 1)} | "
            f"{fmt_mean(stats[name]['time'], 0)} | "
            f"{' / '.join(sorted({units(final(r)) for r in runs}))} |"
        )
    lines.append("")
    for full, partial in (
        ("paper_a_gl", "paper_a_partial_gl"),
        ("paper_a_sgl", "paper_a_partial_sgl"),
    ):
        if full not in stats or partial not in stats:
            continue
        f, p = stats[full], stats[partial]
        verdicts = []
        for metric, text, higher_better in (
            ("train_acc", "train acc", True),
            ("test_acc", "test acc", True),
            ("alive", "alive units", False),
            ("time", "training time", False),
        ):
            fv = [v for v in f[metric] if v is not None]
            pv = [v for v in p[metric] if v is not None]
            if not fv or not pv:
                continue
            diff = statistics.mean(pv) - statistics.mean(fv)
            better = (diff > 0) == higher_better and diff != 0
            verdicts.append(f"{text} {diff:+.2f} ({'better' if better else 'not better'})")
        lines.append(f"- partial vs full, `{partial}` − `{full}`: " + "; ".join(verdicts) + ".")
    return lines + [""]


def mnist_best(runs: list[Run]) -> list[str]:
    """The most accurate MNIST network kept at <= paper B's 17.3% of its dense parameters."""
    candidates = []
    for run in runs:
        if lookup(run.config, "dataset.name") != "mnist" or "summary" not in run.metrics:
            continue
        if run.metrics["summary"]["params_kept_pct"] <= MNIST_PARAMS_PCT:
            candidates.append(run)
    if not candidates:
        return []
    best = max(candidates, key=lambda r: final(r)["test_acc"])
    s = best.metrics["summary"]
    overrides = ", ".join(f"{k}={v}" for k, v in sorted(best.overrides.items()))
    return [
        "## MNIST: the best compressed network at <= 17.3% of its parameters",
        "",
        f"{final(best)['test_acc']:.2f}% test accuracy with {final(best)['params']:,} parameters "
        f"({s['params_kept_pct']:.1f}% of {first(best)['params']:,}; units "
        f"{units(final(best))}), run `{best.path.name}` ({overrides}). Paper B: 99.6% at 17.3%.",
        "",
    ]


RECORD_FILES = (
    "metrics.json",
    ".hydra/config.yaml",
    ".hydra/overrides.yaml",
    ".hydra/hydra.yaml",
    "latency.json",  # scripts/run_latency.py, when the run's network was timed
)
IN_PROGRESS = "in_progress"  # <records>/in_progress/: run folders carried between sessions
EVERY_BUNDLE = "## Every bundle"
BUNDLE_HEADING = re.compile(r"^### `experiment=([^`]+)`$")


def record_folder(records: Path, run: Run) -> Path:
    """Where a run's record is kept: <records>/<bundle>/<sweep name>/<run folder name>."""
    name = str(lookup(run.config, "name") or "default")
    return records / str(run.choices["experiment"]) / name / run.path.name


def keep_record(records: Path, run: Run) -> Path:
    """Copy the run's record files (RECORD_FILES) into the records folder."""
    target = record_folder(records, run)
    for name in RECORD_FILES:
        if (run.path / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run.path / name, target / name)
    return target


def old_sections(page: Path) -> tuple[list[str], dict[str, list[str]]]:
    """(the summary sections before "Every bundle", {bundle: its section}) of a page."""
    if not page.is_file():
        return [], {}
    lines = page.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("## ")]
    summary = lines[starts[0] : lines.index(EVERY_BUNDLE)] if EVERY_BUNDLE in lines else []
    bundles: dict[str, list[str]] = {}
    current = None
    for line in lines[lines.index(EVERY_BUNDLE) + 1 :] if EVERY_BUNDLE in lines else []:
        found = BUNDLE_HEADING.match(line)
        if found:
            current = found.group(1)
            bundles[current] = []
        if current is not None:
            bundles[current].append(line)
    return summary, bundles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", default=["outputs"])
    parser.add_argument("--out", default="docs/results.md")
    parser.add_argument("--records", default="results")
    args = parser.parse_args(argv)
    records = Path(args.records)
    found = [r for r in find_runs(args.folders) if r.completed and r.choices.get("experiment")]
    for run in found:
        if not run.path.resolve().is_relative_to(records.resolve()):
            keep_record(records, run)
    runs = find_runs([records]) if records.is_dir() else []
    runs = [r for r in runs if not r.path.is_relative_to((records / IN_PROGRESS).resolve())]
    runs = [r for r in runs if r.completed and r.choices.get("experiment")]
    by_bundle: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_bundle[str(run.choices["experiment"])].append(run)
    old_summary, old_bundles = old_sections(Path(args.out))
    carried = sorted(set(old_bundles) - set(by_bundle))
    if not by_bundle and not carried:
        print(f"no completed runs of an experiment bundle under {args.folders}", file=sys.stderr)
        return 1
    lines = [
        "# sparsenet's measured results beside the papers' figures",
        "",
        f"Generated by `python scripts/paper_results.py` from the run records in `{records}/` "
        "(kept there from each run's folder); do not edit by hand. Accuracy is test "
        "accuracy (%) after the run's last stage; *acc before pruning* is after the stage the "
        "prune stage started from (the regularized training; the dense network's accuracy in "
        "`regularizer=none` rows). Hardware: 2 CPU cores, no GPU.",
        "",
    ]
    if carried:
        lines += [
            "Carried over from the previous version of this page (measured before run records "
            "were kept; rerun their commands to rebuild them): "
            + ", ".join(f"`{b}`" for b in carried)
            + ". The summary sections below are carried over with them.",
            "",
        ]
    with initialize_config_module("sparsenet.conf", version_base="1.3"):
        if carried:
            lines += without_verdicts(old_summary)
        else:
            lines += mnist_best(runs)
            lines += paper_a_section(by_bundle)
        # --- Verdicts on the papers' claims (issue 22; sparsenet/reporting/verdicts.py), from
        # the run records alone; a claim without its runs says "not enough runs" and gives the
        # commands that produce them.
        lines += [*render_verdicts(runs).splitlines(), ""]
        # --- end of verdicts
        lines += [EVERY_BUNDLE, ""]
        for bundle in sorted(set(by_bundle) | set(carried)):
            if bundle in by_bundle:
                lines += bundle_section(bundle, by_bundle[bundle])
            else:
                lines += old_bundles[bundle]
    atomic_write_bytes(args.out, "\n".join(lines).encode())
    print(f"wrote {args.out} ({len(runs)} run records, {len(carried)} bundles carried over)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
