"""Wall time of a strength x seed sweep with and without shared dense pretraining (issue 19).

    python scripts/bench_dense_sharing.py [--strengths 5] [--seeds 3] [--train-subset 2000]
        [--test-subset 2000] [--dense-epochs 2] [--train-epochs 2] [--finetune-epochs 1] [--out scripts/results]

The same sweep, `sparsenet -m experiment=ssl_lenet5_pretrained` over S strengths x N seeds on an
MNIST subset (short schedules: marked as such, this measures the sharing, not accuracy), run
twice one after the other in fresh output folders:
  shared    dense.cache_dir is one folder for the sweep (the default behaviour): each seed's
            dense network is trained by its first run and reused by the other S - 1;
  separate  dense.cache_dir is each run's own folder: every run trains its dense network.
Reported: each sweep's wall time, how many dense networks were trained (runs whose dense stage
was not reused), and whether both sweeps give every run the same final accuracy and units
(they must: a reused dense network is the one training it in place gives, tests/test_dense_cache.py).
Expected saving: (S - 1) x N dense stages of the S x N. Data from $SPARSENET_DATA.
Writes <out>/bench_dense_sharing.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def sweep_command(args: argparse.Namespace, out: Path, shared: bool) -> list[str]:
    strengths = ",".join(
        f"{3e-3 * 2 ** (i - args.strengths // 2):.3g}" for i in range(args.strengths)
    )
    cache = str(out / "dense") if shared else "${hydra:runtime.output_dir}/dense"
    return [
        "sparsenet",
        "-m",
        "experiment=ssl_lenet5_pretrained",
        f"regularizer.strength={strengths}",
        f"seed={','.join(str(s) for s in range(args.seeds))}",
        f"dataset.train_subset={args.train_subset}",
        f"dataset.test_subset={args.test_subset}",
        f"dense.epochs={args.dense_epochs}",
        f"train.epochs={args.train_epochs}",
        f"finetune.epochs={args.finetune_epochs}",
        "train.progress=false",
        "train.num_threads=1",  # one thread per run: steadier on a shared machine
        f"dense.cache_dir={cache}",
        f"hydra.sweep.dir={out / 'runs'}",
    ]


def run_sweep(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def outcomes(folder: Path) -> dict[str, dict]:
    """'strength=..,seed=..' -> dense reuse, final accuracy and parameters of that run."""
    found = {}
    for path in folder.rglob("metrics.json"):
        metrics = json.loads(path.read_text())
        stages, config = metrics["stages"], metrics["config"]
        key = f"strength={config['regularizer']['strength']},seed={config['seed']}"
        found[key] = {
            "status": metrics["status"],
            "dense_reused": bool(stages["dense"].get("reused")),
            "final_acc": stages["finetune"]["test_acc"],
            "params": stages["finetune"]["params"],
        }
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strengths", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train-subset", type=int, default=2000)
    parser.add_argument("--test-subset", type=int, default=2000)
    parser.add_argument("--dense-epochs", type=int, default=2)
    parser.add_argument("--train-epochs", type=int, default=2)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--out", default="scripts/results")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    results = {}
    with tempfile.TemporaryDirectory(prefix="dense-sharing-") as tmp:
        for mode in ("shared", "separate"):
            out = Path(tmp) / mode
            command = sweep_command(args, out, mode == "shared")
            wall = run_sweep(command)
            runs = outcomes(out / "runs")
            results[mode] = {
                "command": shlex.join(command).replace(str(out), f"<{mode}>"),
                "wall_s": round(wall, 1),
                "runs": len(runs),
                "completed": sum(r["status"] == "completed" for r in runs.values()),
                "dense_trained": sum(not r["dense_reused"] for r in runs.values()),
                "outcomes": runs,
                "load_after": round(os.getloadavg()[0], 2),
            }
            print(f"{mode}: {wall:.0f} s, {results[mode]['dense_trained']} dense trained")
    shared, separate = results["shared"], results["separate"]

    def result(outcome: dict) -> dict:
        return {k: v for k, v in outcome.items() if k != "dense_reused"}

    same = {k: result(r) for k, r in shared["outcomes"].items()} == {
        k: result(r) for k, r in separate["outcomes"].items()
    }
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "settings": vars(args),
        "load_before": round(load_before, 2),
        "same_outcomes": same,
        **results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_dense_sharing.json").write_text(json.dumps(report, indent=1) + "\n")
    saving = 1 - shared["wall_s"] / separate["wall_s"]
    lines = [
        "# Shared dense pretraining: sweep wall time",
        "",
        f"{report['machine']}; {args.strengths} strengths x {args.seeds} seeds, "
        f"MNIST subsets of {args.train_subset:,} training and {args.test_subset:,} test "
        f"images, dense {args.dense_epochs} + "
        f"train {args.train_epochs} + fine-tune {args.finetune_epochs} epochs (shortened "
        f"schedules: this measures the sharing, not accuracy); load average "
        f"{report['load_before']} before (2 = both cores busy with other work).",
        "",
        "    python scripts/bench_dense_sharing.py "
        + shlex.join(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()),
        "",
        "| sweep | runs completed | dense networks trained | wall (s) | load after |",
        "|---|---|---|---|---|",
    ]
    for mode in ("shared", "separate"):
        r = results[mode]
        lines.append(
            f"| {mode} | {r['completed']} / {r['runs']} | {r['dense_trained']} | "
            f"{r['wall_s']} | {r['load_after']} |"
        )
    lines += [
        "",
        f"Sharing saved {100 * saving:.0f}% of the sweep's wall time "
        f"({separate['wall_s'] - shared['wall_s']:.0f} s). Every run's final accuracy and "
        f"parameter count are {'the same' if same else 'NOT the same'} in both sweeps.",
        "",
        "Commands (`<shared>`, `<separate>`: the sweep's temporary folder):",
        "",
        f"- shared: `{shared['command']}`",
        f"- separate: `{separate['command']}`",
        "",
    ]
    (out / "bench_dense_sharing.md").write_text("\n".join(lines))
    print(f"wrote {out / 'bench_dense_sharing.md'}")
    return 0 if same and shared["completed"] == shared["runs"] else 1


if __name__ == "__main__":
    sys.exit(main())
