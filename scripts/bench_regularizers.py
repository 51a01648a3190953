"""Cost of every regularizer in a LeNet-5 training step on CPU (batch 128, MNIST-shaped data).

A step is forward + cross-entropy (+ R(model)) + backward + SGD step (+ the regularizer's
after-step hook), as in `sparsenet.pipeline.engine.train_epoch`. Every config of
conf/regularizer/ (default values) and a few variants are timed in one process, each with its
own copy of the model and optimizer, over interleaved rounds (every variant once per round).
Each block of steps of a variant is timed next to a block without regularizer (alternating
which comes first); overhead = median over rounds of (block with R / block without) - 1, so
load from other processes that drifts over seconds cancels out. Target: overhead <= 15%.
`step (ms)` is the median block mean of the variant (of the baseline for `none`).

    python scripts/bench_regularizers.py [--rounds 15] [--steps 5] [--threads N] [--only NAME ...]

Writes <out>/bench_regularizers.json and .md (bench_regularizers_t<N>.* with --threads N)
and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from sparsenet.cli import config_choices
from sparsenet.models import get_model

TARGET = 0.15
# (label, overrides on top of `regularizer=<name>`): variants the defaults do not cover.
VARIANTS = [
    ("group_lasso structure=in", ["regularizer=group_lasso", "regularizer.structure=in"]),
    ("group_lasso structure=shape", ["regularizer=group_lasso", "regularizer.structure=shape"]),
    ("group_lasso structure=layer", ["regularizer=group_lasso", "regularizer.structure=layer"]),
    ("group_lasso structure=coupled", ["regularizer=group_lasso", "regularizer.structure=coupled"]),
    (
        "group_lasso coupled proximal",
        ["regularizer=group_lasso", "regularizer.structure=coupled", "regularizer.proximal=true"],
    ),
    ("group_lasso proximal", ["regularizer=group_lasso", "regularizer.proximal=true"]),
    (
        "sparse_group_lasso form=scardapane",
        ["regularizer=sparse_group_lasso", "regularizer.form=scardapane"],
    ),
    (
        "sparse_group_lasso proximal",
        ["regularizer=sparse_group_lasso", "regularizer.proximal=true"],
    ),
    ("ssl proximal", ["regularizer=ssl", "regularizer.proximal=true"]),
    (
        "ssl +shape +depth",
        ["regularizer=ssl", "regularizer.group_types.shape=1", "regularizer.group_types.depth=1"],
    ),
    ("partial exempt=random", ["regularizer=partial", "regularizer.exempt=random"]),
    ("partial proximal", ["regularizer=partial", "regularizer.inner.proximal=true"]),
    ("l1 proximal", ["regularizer=l1", "regularizer.proximal=true"]),
    ("l1_l2 mode=per_filter", ["regularizer=l1_l2", "regularizer.mode=per_filter"]),
    ("l1_l2 mode=layer", ["regularizer=l1_l2", "regularizer.mode=layer"]),
    ("variance estimator=gaussian", ["regularizer=variance", "regularizer.estimator=gaussian"]),
    ("variance max_weights=null", ["regularizer=variance", "regularizer.max_weights=null"]),
    (
        "variance gaussian max_weights=null",
        ["regularizer=variance", "regularizer.estimator=gaussian", "regularizer.max_weights=null"],
    ),
    (
        "sgl_variance max_weights=null",
        ["regularizer=sgl_variance", "regularizer.parts.variance.max_weights=null"],
    ),
]


def build_variants() -> list[tuple[str, list[str]]]:
    names = [n for n in config_choices("regularizer") if n != "none"]
    return [("none", ["regularizer=none"])] + [(n, [f"regularizer={n}"]) for n in names] + VARIANTS


def make_regularizer(overrides: list[str]):
    with initialize_config_module(config_module="sparsenet.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return instantiate(cfg.regularizer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--only", nargs="*", default=None, help="labels containing any of these")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = get_model("lenet5")
    x = torch.randn(128, 1, 28, 28)
    y = torch.randint(0, 10, (128,))
    runs = []
    variants = build_variants()
    if args.only:
        variants = variants[:1] + [v for v in variants[1:] if any(o in v[0] for o in args.only)]
    for label, overrides in variants:
        model = copy.deepcopy(base)
        regularizer = make_regularizer(overrides)
        regularizer.bind(model, x[:1])
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        runs.append(
            {
                "label": label,
                "overrides": overrides,
                "model": model,
                "reg": regularizer,
                "opt": optimizer,
                "times": [],
                "ratios": [],
            }
        )

    def step(run) -> None:
        model, reg, opt = run["model"], run["reg"], run["opt"]
        loss = F.cross_entropy(model(x), y)
        if reg.active:
            loss = loss + reg(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if reg.active:
            reg.after_step(model, opt.param_groups[0]["lr"])

    for run in runs:
        for _ in range(args.warmup):
            step(run)

    def block(run) -> float:
        start = time.perf_counter()
        for _ in range(args.steps):
            step(run)
        return (time.perf_counter() - start) / args.steps

    # Paired design: each block of a variant is timed right next to a block of the baseline
    # (alternating which goes first), and the overhead is the median of the pairs' ratios,
    # so load from other processes that drifts over seconds cancels out.
    baseline_run = runs[0]
    for r in range(args.rounds):
        for run in runs[1:]:
            if r % 2:
                t_run, t_base = block(run), block(baseline_run)
            else:
                t_base, t_run = block(baseline_run), block(run)
            run["times"].append(t_run)
            run["ratios"].append(t_run / t_base)
            baseline_run["times"].append(t_base)

    rows = []
    for run in runs:
        median = statistics.median(run["times"])
        ratio = statistics.median(run["ratios"]) if run["ratios"] else 1.0
        rows.append(
            {
                "regularizer": run["label"],
                "overrides": run["overrides"],
                "step_ms": round(1000 * median, 2),
                "overhead_pct": round(100 * (ratio - 1), 1),
                "within_target": ratio - 1 <= TARGET,
                "describe": run["reg"].describe(),
            }
        )
    # Other processes on the same cores make steps several times slower in bursts (OpenMP
    # threads wait for each other); the paired ratios cancel slow drifts, not such bursts.
    base_times = baseline_run["times"]
    spread = statistics.median(base_times) / min(base_times)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    noisy = spread > 1.3
    result = {
        "model": "lenet5",
        "baseline_step_ms": {
            "min": round(1000 * min(base_times), 2),
            "median": round(1000 * statistics.median(base_times), 2),
        },
        "load_average_1min_at_end": load,
        "noisy": noisy,
        "batch_size": 128,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "rounds": args.rounds,
        "steps_per_block": args.steps,
        "target_overhead_pct": 100 * TARGET,
        "rows": rows,
    }
    lines = [
        f"LeNet-5, batch 128, CPU ({torch.get_num_threads()} threads, torch {torch.__version__}); "
        f"overhead = median of {args.rounds} paired ratios, blocks of {args.steps} steps.",
        "",
        *(
            [
                f"**Unreliable**: the baseline step's median is {spread:.1f}x its minimum "
                "(other processes were using the cores); rerun on an idle machine.",
                "",
            ]
            if noisy
            else []
        ),
        "| regularizer | step (ms) | overhead | <= 15% |",
        "| --- | ---: | ---: | :---: |",
    ]
    for row in rows:
        mark = "yes" if row["within_target"] else "**no**"
        lines.append(
            f"| {row['regularizer']} | {row['step_ms']:.2f} | "
            f"{row['overhead_pct']:+.1f}% | {mark} |"
        )
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "bench_regularizers" + (f"_t{args.threads}" if args.threads else "")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text("# Regularizer cost per training step\n\n" + table)
    print(table)


if __name__ == "__main__":
    main()
