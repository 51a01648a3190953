"""Budget control vs Torch-Pruning: LeNet-5 / MNIST compressed to a share of its dense MACs.

What it measures: for each budget `keep` (a share of the dense network's multiply-accumulates)
and each seed, two compressions of the same LeNet-5 (20-50-500-10) on the same MNIST tensors,
with the same optimizer, learning-rate schedule, batch order and epochs:

* **sparsenet**: the CLI in a subprocess, `budget.target=macs budget.keep=<keep>` on the
  defaults (group lasso, 10 train epochs whose strength the budget controller moves, a prune
  stage that cuts to the budget, 3 fine-tune epochs), one run folder per (keep, seed):

      SPARSENET_DATA=<data> python -m sparsenet budget.target=macs budget.keep=<keep>
          seed=<seed> train.progress=false train.num_threads=<threads> train.epochs=<epochs>
          finetune.epochs=<finetune_epochs> resume=<true|false> hydra.run.dir=<runs>/...

* **torch_pruning** (the peer, in this process): Torch-Pruning's `GroupNormPruner` sparse
  training (DepGraph, Fang et al. CVPR 2023) with `GroupMagnitudeImportance(p=2)`, global
  ranking and the classifier ignored: `pruner.regularize(model)` after every `backward()`,
  then `pruner.step()` (`iterative_steps` small steps of a rising channel ratio) until the
  MACs are within the budget, then fine-tuning. Model, data, loaders, optimizer and schedule
  are sparsenet's own, built from the same composed config (`parse_config`), so the
  initial weights and the batch order for a seed are the ones the sparsenet run gets:
  SGD lr 0.05, momentum 0.9, Nesterov, no weight decay, batch 128, per-step cosine decay to
  zero over each stage (conf/optimizer/sgd.yaml, conf/scheduler/cosine.yaml,
  conf/train/default.yaml), fine-tuning at finetune.lr = 0.01 (conf/finetune/default.yaml).
  MACs are sparsenet's count (Conv2d/Linear multiply-accumulates, `sparsenet.measure`) for
  both tools, so both are held to the same budget; Torch-Pruning's own count (which adds
  bias, ReLU and pooling operations) is recorded next to it.

Recorded per run: test accuracy after fine-tuning, right after the cut (before fine-tuning)
and right before it, MACs and parameters (and their share of the dense network's), units per
layer, wall time of the stages (train + prune + fine-tune, what both tools do) and of the whole
job (sparsenet: the subprocess, with its start-up, data loading and reporting). The tools
alternate per (keep, seed) so background load hits both alike. Every run is one thread.

Full benchmark (2 budgets x 3 seeds x 2 tools, 12 runs of 13 epochs on 60,000 images):

    SPARSENET_DATA=/work/shared/data nice -n 19 python scripts/bench_budget.py \\
        --keeps 0.125 0.04 --seeds 3 --threads 1 --out scripts/results

Options: `--resume` skips the (tool, keep, seed) runs already in the json (and sparsenet reuses
its completed run folders); `--epochs/--finetune-epochs/--train-subset/--test-subset` shorten
it (the table is then marked "shortened"); `--sparsenet-overrides "regularizer.strength=..."`
adds sparsenet overrides (they also shape the peer's schedule when they touch optimizer,
scheduler, train or finetune keys); `--tp-reg` is the peer's regularization coefficient.
Writes <out>/bench_budget.json and <out>/bench_budget.md (atomically, after every run).

Targets (the issue): at keep = 12.5% of the MACs sparsenet >= 99.30% test accuracy (mean of 3
seeds) vs the peer's 99.16%; at keep = 4%: >= 98.95% vs 98.74%; and sparsenet's job no slower
than the peer's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torch_pruning as tp
from hydra import compose, initialize_config_module
from torch import nn

import sparsenet.pruning  # noqa: F401  (before sparsenet.measure: it closes an import cycle)
from sparsenet.data.loaders import make_loader
from sparsenet.measure import count_macs, count_params, dense_layer_units, layer_units
from sparsenet.pipeline.engine import evaluate, parameter_groups
from sparsenet.pipeline.resume import register_resolvers
from sparsenet.pipeline.schedules import make_schedule
from sparsenet.pipeline.settings import RunSettings, parse_config
from sparsenet.runtime import (
    atomic_write_bytes,
    atomic_write_json,
    flush_denormals,
    seed_everything,
)

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = "bench_budget"
TOOLS = ("sparsenet", "torch_pruning")
# The schedule the targets are quoted for; anything else is a shortened benchmark.
FULL_EPOCHS, FULL_FINETUNE_EPOCHS = 10, 3
# keep -> (sparsenet's target, the peer's reference accuracy), mean of 3 seeds, percent.
TARGETS = {0.125: (99.30, 99.16), 0.04: (98.95, 98.74)}
# Settings that change what a run measures: a --resume must agree on them with the json.
RESULT_SETTINGS = (
    "epochs",
    "finetune_epochs",
    "train_subset",
    "test_subset",
    "sparsenet_overrides",
    "tp_reg",
    "tp_steps",
    "tp_max_ratio",
    "threads",
)


class BenchError(RuntimeError):
    """A run that could not produce its figures (the message says where to look)."""


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: timings taken under load are noisy."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine_description(threads: int) -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_pruning": tp.__version__,
        "threads_per_run": threads,
    }


def units_string(layers: list[dict]) -> str:
    """Units kept per Conv/Linear layer, as sparsenet prints them (e.g. 5-12-40-10)."""
    return "-".join(str(row["units_kept"]) for row in layers)


def common_overrides(args: argparse.Namespace, seed: int, keep: float) -> list[str]:
    """The sparsenet overrides both tools' runs are configured from (the peer reads its model,
    data, optimizer and schedule from the config these compose to)."""
    overrides = [
        "budget.target=macs",
        f"budget.keep={keep}",
        f"seed={seed}",
        "train.progress=false",
        f"train.num_threads={args.threads}",
        f"train.epochs={args.epochs}",
        f"finetune.epochs={args.finetune_epochs}",
    ]
    if args.train_subset is not None:
        overrides.append(f"dataset.train_subset={args.train_subset}")
    if args.test_subset is not None:
        overrides.append(f"dataset.test_subset={args.test_subset}")
    return overrides + shlex.split(args.sparsenet_overrides)


# ---------------------------------------------------------------------------------------------
# sparsenet: the CLI in a subprocess


def run_sparsenet(args: argparse.Namespace, keep: float, seed: int) -> dict:
    """One sparsenet run (train under the budget, prune, fine-tune) and its figures, read from
    the run folder's metrics.json."""
    run_dir = args.runs_dir / f"sparsenet_keep{keep:g}_seed{seed}"
    metrics_file = run_dir / "metrics.json"
    reused = args.resume and metrics_file.exists()
    command = [
        sys.executable,
        "-m",
        "sparsenet",
        *common_overrides(args, seed, keep),
        f"resume={'true' if args.resume else 'false'}",
        f"hydra.run.dir={run_dir}",
    ]
    env = dict(os.environ, SPARSENET_DATA=str(args.data), OMP_NUM_THREADS=str(args.threads))
    log_file = args.runs_dir / f"{run_dir.name}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_file, "w") as log:
        log.write(shlex.join(command) + "\n")
        log.flush()
        finished = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    job_wall_s = time.perf_counter() - start
    if finished.returncode != 0 or not metrics_file.exists():
        raise BenchError(f"sparsenet exited with {finished.returncode}; see {log_file}")
    metrics = _read_json(metrics_file)
    if metrics.get("status") != "completed":
        raise BenchError(f"sparsenet run {run_dir} is {metrics.get('status')}; see {log_file}")
    stages = metrics["stages"]
    train, pruned, final = stages["train"], stages["prune"], stages["finetune"]
    return {
        "test_acc": final["test_acc"],
        "acc_before_cut": train["test_acc"],
        "acc_after_cut": pruned["test_acc"],
        "macs": final["macs"],
        "macs_dense": train["macs"],
        "params": final["params"],
        "params_dense": train["params"],
        "units": units_string(final["layers"]),
        "units_dense": "-".join(str(row["units_total"]) for row in final["layers"]),
        # train, prune and fine-tune stages, as the peer's wall_s
        "wall_s": sum(stages[s]["wall_s"] for s in ("train", "prune", "finetune")),
        # A run folder completed by an earlier invocation took no time now.
        "job_wall_s": None if reused else job_wall_s,
        "stage_wall_s": {s: stages[s]["wall_s"] for s in ("train", "prune", "finetune")},
        "budget": {
            "final_strength": train.get("budget", {}).get("final_strength"),
            "configured_strength": train.get("budget", {}).get("configured_strength"),
            "projected_cost": train.get("budget", {}).get("projected_cost"),
            "target_kept": pruned.get("target_kept"),
        },
        "run_dir": str(run_dir),
        "command": shlex.join(command),
    }


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------
# The peer: Torch-Pruning's GroupNormPruner on sparsenet's model, data and schedule


def composed_settings(overrides: list[str]) -> RunSettings:
    """The typed settings sparsenet would run with for these overrides."""
    with initialize_config_module(config_module="sparsenet.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return parse_config(cfg)


def final_classifier(model: nn.Module) -> nn.Module:
    """The last Linear layer: its outputs are the classes, which no pruner may remove."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise BenchError("the model has no Linear classifier to keep out of pruning")
    return linears[-1]


def fit(
    model: nn.Module,
    train_loader,
    test_loader,
    settings: RunSettings,
    optimizer_spec,
    epochs: int,
    pruner: tp.pruner.GroupNormPruner | None,
) -> list[float]:
    """Train `epochs` epochs as sparsenet's _fit does (its optimizer spec and parameter groups,
    its per-step schedule over the stage, zero_grad before backward), with the pruner's
    group-norm gradient term added between backward() and step() when `pruner` is given.
    Returns the test accuracy after each epoch (sparsenet evaluates after each one too, so
    both tools spend that time)."""
    device = torch.device("cpu")
    groups = parameter_groups(model, settings.train.decay_norm_and_bias)
    optimizer = optimizer_spec.build(groups, optimizer_spec.lr)
    scheduler = make_schedule(optimizer, settings.scheduler, epochs * len(train_loader))
    accuracies = []
    for _ in range(epochs):
        model.train()
        for x, y in train_loader:
            loss = F.cross_entropy(model(x), y, label_smoothing=settings.train.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if pruner is not None:
                pruner.regularize(model)
            optimizer.step()
            scheduler.step()
        if not torch.isfinite(loss):
            raise BenchError(f"the peer's training loss became {float(loss)}")
        accuracies.append(evaluate(model, test_loader, device)["test_acc"])
    return accuracies


def run_peer(args: argparse.Namespace, keep: float, seed: int) -> dict:
    """Torch-Pruning's sparse training + iterative pruning to the MAC budget + fine-tuning."""
    job_start = time.perf_counter()
    os.environ["SPARSENET_DATA"] = str(args.data)  # what dataset.root interpolates
    settings = composed_settings(common_overrides(args, seed, keep))
    flush_denormals(settings.train.flush_denormal)
    torch.set_num_threads(args.threads)
    # As sparsenet's build_context: seed, model, then data (no data builder draws from the
    # global RNG) and the train loader seeded with the run's seed: same weights, same batches.
    seed_everything(settings.seed)
    model = settings.model.build()
    data = settings.dataset.build()
    if data.train_augment is not None:
        raise BenchError("dataset.augment=true is not supported by the peer's loop")
    train_loader = make_loader(
        data.train, settings.train.batch_size, shuffle=True, seed=settings.seed
    )
    test_loader = make_loader(
        data.test, settings.train.eval_batch_size, shuffle=False, seed=settings.seed
    )
    input_shape = tuple(data.input_shape)
    dense_units = dense_layer_units(model)
    example = torch.zeros(1, *input_shape)
    macs_dense = count_macs(model, input_shape)
    params_dense = count_params(model)
    tp_macs_dense, _ = tp.utils.count_ops_and_params(model, example)
    pruner = tp.pruner.GroupNormPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        reg=args.tp_reg,
        global_pruning=True,
        pruning_ratio=args.tp_max_ratio,
        ignored_layers=[final_classifier(model)],
        iterative_steps=args.tp_steps,
    )

    start = time.perf_counter()
    train_accuracies = fit(
        model,
        train_loader,
        test_loader,
        settings,
        settings.optimizer,
        settings.train.epochs,
        pruner,
    )
    train_wall_s = time.perf_counter() - start

    start = time.perf_counter()
    budget_macs = keep * macs_dense
    while count_macs(model, input_shape) > budget_macs and pruner.current_step < args.tp_steps:
        pruner.step()
    steps_taken = pruner.current_step
    prune_wall_s = time.perf_counter() - start
    acc_after_cut = evaluate(model, test_loader, torch.device("cpu"))["test_acc"]
    macs_after_cut = count_macs(model, input_shape)

    start = time.perf_counter()
    finetune_accuracies = fit(
        model,
        train_loader,
        test_loader,
        settings,
        settings.finetune.optimizer,
        settings.finetune.epochs,
        None,
    )
    finetune_wall_s = time.perf_counter() - start
    job_wall_s = time.perf_counter() - job_start

    layers = layer_units(model, dense_units)
    tp_macs, _ = tp.utils.count_ops_and_params(model, example)
    final_acc = finetune_accuracies[-1] if finetune_accuracies else acc_after_cut
    return {
        "test_acc": final_acc,
        "acc_before_cut": train_accuracies[-1] if train_accuracies else None,
        "acc_after_cut": acc_after_cut,
        "macs": count_macs(model, input_shape),
        "macs_dense": macs_dense,
        "params": count_params(model),
        "params_dense": params_dense,
        "units": units_string(layers),
        "units_dense": "-".join(str(row["units_total"]) for row in layers),
        "wall_s": train_wall_s + prune_wall_s + finetune_wall_s,
        "job_wall_s": job_wall_s,
        "stage_wall_s": {
            "train": train_wall_s,
            "prune": prune_wall_s,
            "finetune": finetune_wall_s,
        },
        "budget_met": macs_after_cut <= budget_macs,
        "pruner": {
            "reg": args.tp_reg,
            "steps_taken": steps_taken,
            "iterative_steps": args.tp_steps,
            "max_ratio": args.tp_max_ratio,
            "tp_macs": tp_macs,
            "tp_macs_dense": tp_macs_dense,
        },
        "train_acc_per_epoch": train_accuracies,
        "finetune_acc_per_epoch": finetune_accuracies,
        "lr": settings.optimizer.lr,
        "finetune_lr": settings.finetune.lr,
    }


# ---------------------------------------------------------------------------------------------
# Table


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    std = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), std


def _pm(mean: float | None, std: float | None, digits: int = 2) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def summarize(runs: list[dict], keeps: list[float]) -> list[dict]:
    """One row per (tool, keep): means and sample standard deviations over the seeds."""
    rows = []
    for keep in keeps:
        for tool in TOOLS:
            chosen = sorted(
                (r for r in runs if r["tool"] == tool and r["keep"] == keep),
                key=lambda r: r["seed"],
            )
            if not chosen:
                continue
            acc = _mean_std([r["test_acc"] for r in chosen])
            cut = _mean_std([r["acc_after_cut"] for r in chosen])
            before = _mean_std([r["acc_before_cut"] for r in chosen])
            macs = statistics.fmean(r["macs"] for r in chosen)
            dense = chosen[0]["macs_dense"]
            jobs = [r["job_wall_s"] for r in chosen if r.get("job_wall_s") is not None]
            rows.append(
                {
                    "tool": tool,
                    "keep": keep,
                    "seeds": [r["seed"] for r in chosen],
                    "acc_mean": acc[0],
                    "acc_std": acc[1],
                    "acc_after_cut_mean": cut[0],
                    "acc_after_cut_std": cut[1],
                    "acc_before_cut_mean": before[0],
                    "acc_before_cut_std": before[1],
                    "macs_mean": macs,
                    "macs_pct_of_dense": 100 * macs / dense,
                    "params_mean": statistics.fmean(r["params"] for r in chosen),
                    "params_pct_of_dense": 100
                    * statistics.fmean(r["params"] for r in chosen)
                    / chosen[0]["params_dense"],
                    "units": [r["units"] for r in chosen],
                    "wall_s_median": statistics.median(r["wall_s"] for r in chosen),
                    "job_wall_s_median": statistics.median(jobs) if jobs else None,
                }
            )
    return rows


def target_lines(rows: list[dict]) -> list[str]:
    """The issue's targets against the rows (mean accuracy, median wall time)."""
    by_key = {(row["tool"], row["keep"]): row for row in rows}
    lines = []
    for keep, (goal, reference) in TARGETS.items():
        ours, peer = by_key.get(("sparsenet", keep)), by_key.get(("torch_pruning", keep))
        if ours is None:
            continue
        verdict = "met" if ours["acc_mean"] >= goal else "NOT met"
        peer_text = "" if peer is None else f", peer measured here {peer['acc_mean']:.2f}%"
        lines.append(
            f"- keep {keep:g}: sparsenet {ours['acc_mean']:.2f}% vs target >= {goal:.2f}% "
            f"({verdict}; issue's peer figure {reference:.2f}%{peer_text})"
        )
        if peer is not None:
            faster = ours["wall_s_median"] <= peer["wall_s_median"]
            lines.append(
                f"- keep {keep:g}: wall per run (stages) sparsenet {ours['wall_s_median']:.0f} s "
                f"vs peer {peer['wall_s_median']:.0f} s "
                f"({'no slower' if faster else 'SLOWER'})"
            )
    return lines


def markdown(results: dict) -> str:
    settings, machine = results["settings"], results["machine"]
    title = "# Budget control: sparsenet vs Torch-Pruning GroupNormPruner (LeNet-5 / MNIST)"
    if settings["shortened"]:
        title += " — shortened"
    subset = ""
    if settings["train_subset"] is not None or settings["test_subset"] is not None:
        subset = (
            f", train subset {settings['train_subset'] or 'all'}, "
            f"test subset {settings['test_subset'] or 'all'}"
        )
    lines = [
        title,
        "",
        f"{settings['epochs']} train + {settings['finetune_epochs']} fine-tune epochs{subset}; "
        f"seeds {settings['seeds']}; {settings['threads']} thread(s) per run; "
        f"peer reg {settings['tp_reg']:g}, {settings['tp_steps']} pruning steps up to ratio "
        f"{settings['tp_max_ratio']:g}; sparsenet overrides: "
        f"`{settings['sparsenet_overrides'] or '(none)'}`.",
        f"Machine: {machine['processor']}, {machine['cpu_count']} cores, torch "
        f"{machine['torch']}, torch_pruning {machine['torch_pruning']}; load average before "
        f"{machine.get('load_before')}, after {machine.get('load_after')}.",
        "",
        "Accuracies in % (mean ± sample std over seeds); after cut = right after pruning, "
        "before fine-tuning; MACs of Conv/Linear layers per sample (sparsenet's count for "
        "both); wall = median per run of train + prune + fine-tune stages; job = whole run.",
        "",
        "| tool | keep | test acc | after cut | before cut | MACs | MACs % dense | params "
        "| units (per seed) | wall (s) | job (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["summary"]:
        job = row["job_wall_s_median"]
        lines.append(
            f"| {row['tool']} | {row['keep']:g} | {_pm(row['acc_mean'], row['acc_std'])} "
            f"| {_pm(row['acc_after_cut_mean'], row['acc_after_cut_std'])} "
            f"| {_pm(row['acc_before_cut_mean'], row['acc_before_cut_std'])} "
            f"| {row['macs_mean']:,.0f} | {row['macs_pct_of_dense']:.2f} "
            f"| {row['params_mean']:,.0f} | {', '.join(row['units'])} "
            f"| {row['wall_s_median']:.1f} | {'-' if job is None else f'{job:.1f}'} |"
        )
    targets = target_lines(results["summary"])
    if targets:
        lines += ["", "Targets (issue; meaningful only for the full, unshortened benchmark):"]
        lines += targets
    return "\n".join(lines) + "\n"


def write_results(results: dict, out: Path) -> None:
    """json and md, each written to a temporary file and renamed over the old one."""
    atomic_write_json(out / f"{BENCHMARK}.json", results)
    atomic_write_bytes(out / f"{BENCHMARK}.md", markdown(results).encode())


# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keeps", type=float, nargs="+", default=[0.125, 0.04])
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds (from --first-seed)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=FULL_EPOCHS, help="train epochs")
    parser.add_argument("--finetune-epochs", type=int, default=FULL_FINETUNE_EPOCHS)
    parser.add_argument("--train-subset", type=int, default=None, help="first N train images")
    parser.add_argument("--test-subset", type=int, default=None, help="first N test images")
    parser.add_argument(
        "--sparsenet-overrides",
        default="",
        help='extra overrides, e.g. "regularizer.strength=3e-4"',
    )
    parser.add_argument("--tp-reg", type=float, default=5e-4, help="GroupNormPruner reg")
    parser.add_argument(
        "--tp-steps",
        type=int,
        default=200,
        help="GroupNormPruner iterative_steps: each step removes at most ~tp-max-ratio / steps "
        "of the channels, so the peer lands just under the budget",
    )
    parser.add_argument("--tp-max-ratio", type=float, default=0.99, help="ratio of the last step")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every run")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("SPARSENET_DATA", "data")))
    parser.add_argument("--out", type=Path, default=REPO / "scripts" / "results")
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=None,
        help="sparsenet run folders (<out>/bench_runs/budget)",
    )
    parser.add_argument("--resume", action="store_true", help="skip runs already in the json")
    args = parser.parse_args()
    args.data = args.data.resolve()
    args.out = args.out.resolve()
    args.runs_dir = (args.runs_dir or args.out / "bench_runs" / "budget").resolve()
    return args


def main() -> None:
    args = parse_args()
    register_resolvers()
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    settings = {
        "keeps": args.keeps,
        "seeds": seeds,
        "epochs": args.epochs,
        "finetune_epochs": args.finetune_epochs,
        "train_subset": args.train_subset,
        "test_subset": args.test_subset,
        "sparsenet_overrides": args.sparsenet_overrides,
        "tp_reg": args.tp_reg,
        "tp_steps": args.tp_steps,
        "tp_max_ratio": args.tp_max_ratio,
        "threads": args.threads,
        "shortened": (args.epochs, args.finetune_epochs) != (FULL_EPOCHS, FULL_FINETUNE_EPOCHS)
        or args.train_subset is not None
        or args.test_subset is not None,
    }
    result_file = args.out / f"{BENCHMARK}.json"
    runs: list[dict] = []
    if args.resume and result_file.exists():
        previous = _read_json(result_file)
        changed = [k for k in RESULT_SETTINGS if previous.get("settings", {}).get(k) != settings[k]]
        if changed:
            raise SystemExit(
                f"--resume: {result_file} was made with other settings ({', '.join(changed)}); "
                "use another --out or drop --resume"
            )
        runs = previous.get("runs", [])
    done = {(r["tool"], r["keep"], r["seed"]) for r in runs}
    machine = machine_description(args.threads)
    machine["load_before"] = load_average()
    results = {"benchmark": BENCHMARK, "settings": settings, "machine": machine, "runs": runs}
    runners = {"sparsenet": run_sparsenet, "torch_pruning": run_peer}
    # Tools alternate within each (seed, keep): load that comes and goes hits both alike.
    plan = [(tool, keep, seed) for seed in seeds for keep in args.keeps for tool in TOOLS]
    todo = [item for item in plan if item not in done]
    print(f"{len(plan)} runs, {len(plan) - len(todo)} already done; results in {args.out}")
    for index, (tool, keep, seed) in enumerate(todo, 1):
        load = load_average()
        record = runners[tool](args, keep, seed)
        record = {"tool": tool, "keep": keep, "seed": seed, "load_before": load, **record}
        runs.append(record)
        machine["load_after"] = load_average()
        results["summary"] = summarize(runs, args.keeps)
        write_results(results, args.out)
        print(
            f"[{index}/{len(todo)}] {tool:13s} keep={keep:g} seed={seed}: "
            f"acc {record['test_acc']:.2f}% (before cut {record['acc_before_cut']:.2f}%, "
            f"after cut {record['acc_after_cut']:.2f}%), MACs "
            f"{100 * record['macs'] / record['macs_dense']:.2f}% of dense, units "
            f"{record['units']}, wall {record['wall_s']:.1f} s",
            flush=True,
        )
    machine["load_after"] = load_average()
    results["summary"] = summarize(runs, args.keeps)
    write_results(results, args.out)
    print()
    print(markdown(results))


if __name__ == "__main__":
    main()
