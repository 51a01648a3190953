"""What a tracking logger costs a run: the default experiment (MNIST, LeNet-5, group lasso,
train -> prune -> fine-tune) with logger=csv, tensorboard, mlflow and [tensorboard,mlflow].

    SPARSENET_DATA=../shared/data python scripts/bench_loggers.py [--rounds 5] [--epochs 3]
        [--threads N]

Each run is the `sparsenet` command in a process of its own, shortened to --epochs training
epochs + 1 fine-tuning epoch (the default run has 10 + 3: every epoch does the same work, so
the per-epoch cost does not depend on their number), resume=false, in a scratch folder (the
MLflow store is there too: outputs/mlruns, SQLite, as by default). Rounds are interleaved:
every round runs each logger once, in a rotated order, and each logger's per-epoch time is
divided by csv's of the same round, so load that drifts over minutes (other jobs on the
machine) hits both sides of a ratio alike.

  per-epoch time = (train.wall_s + finetune.wall_s) / (train + finetune epochs)
                   from metrics.json: the training stages, including once-per-stage work
                   (the logger's unit-group trace for units_below_threshold)
  overhead       = median over rounds of (per-epoch time / csv's) - 1, with min and max
  whole run      = median over rounds of (process wall time - csv's), seconds: start-up
                   (importing the backend, opening the store) and the end (artifacts)

Target (issue 23): overhead < 2% per epoch. Writes <out>/bench_loggers.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SPARSENET_DATA") or REPO.parent / "shared" / "data")
TARGET = 0.02
LOGGERS = {
    "csv": "logger=csv",
    "tensorboard": "logger=tensorboard",
    "mlflow": "logger=mlflow",
    "tensorboard+mlflow": "logger=[tensorboard,mlflow]",
}
BASELINE = "csv"


def one_run(label: str, workdir: Path, epochs: int, threads: int) -> dict:
    """The default run with one logger; its per-epoch time and the process's wall time."""
    run_dir = workdir / "runs" / label
    command = [
        sys.executable,
        "-m",
        "sparsenet",
        LOGGERS[label],
        f"train.epochs={epochs}",
        "finetune.epochs=1",
        "train.progress=false",
        "resume=false",
        f"hydra.run.dir={run_dir}",
    ]
    if threads:
        command.append(f"train.num_threads={threads}")
    env = {**os.environ, "SPARSENET_DATA": str(DATA)}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{label} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    stages = metrics["stages"]
    train_s = stages["train"]["wall_s"] + stages["finetune"]["wall_s"]
    per_epoch = train_s / (epochs + 1)
    return {"per_epoch_s": per_epoch, "process_s": wall, "test_acc": metrics["summary"]["test_acc"]}


def summarize(runs: dict[str, list[dict]]) -> list[dict]:
    base = runs[BASELINE]
    rows = []
    for label, results in runs.items():
        ratios = [r["per_epoch_s"] / b["per_epoch_s"] for r, b in zip(results, base, strict=True)]
        extra = [r["process_s"] - b["process_s"] for r, b in zip(results, base, strict=True)]
        overhead = statistics.median(ratios) - 1
        rows.append(
            {
                "logger": label,
                "per_epoch_s": round(statistics.median(r["per_epoch_s"] for r in results), 3),
                "overhead_pct": round(100 * overhead, 2),
                "overhead_min_pct": round(100 * (min(ratios) - 1), 2),
                "overhead_max_pct": round(100 * (max(ratios) - 1), 2),
                "whole_run_extra_s": round(statistics.median(extra), 2),
                "process_s": round(statistics.median(r["process_s"] for r in results), 1),
                "test_acc": sorted({r["test_acc"] for r in results}),
                "within_target": overhead < TARGET,
            }
        )
    return rows


def write_report(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_loggers.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Tracking loggers: cost per epoch of the default run",
        "",
        f"Default experiment on the real MNIST copy, shortened to {result['epochs']} training "
        f"+ 1 fine-tuning epochs, {result['rounds']} interleaved rounds; CPU "
        f"({result['machine']}, {result['cores']} cores, {result['threads']} torch "
        f"thread(s) per run, torch {result['torch']}); "
        f"load average {result['load_average_1min_at_start']} at the start, "
        f"{result['load_average_1min_at_end']} at the end (other jobs shared the cores).",
        "",
        "Overhead: median over rounds of the per-epoch time over csv's in the same round, minus "
        "1 (min .. max over rounds); whole run: median extra seconds of the process.",
        "",
        "| logger | per epoch (s) | overhead | min .. max | < 2% | whole run extra (s) "
        "| process (s) |",
        "| --- | ---: | ---: | ---: | :---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['logger']} | {row['per_epoch_s']:.2f} | {row['overhead_pct']:+.2f}% "
            f"| {row['overhead_min_pct']:+.2f}% .. {row['overhead_max_pct']:+.2f}% "
            f"| {'yes' if row['within_target'] else '**no**'} | {row['whole_run_extra_s']:+.1f} "
            f"| {row['process_s']:.1f} |"
        )
    lines += ["", f"Command: `{result['command']}`", ""]
    (out / "bench_loggers.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (+1 fine-tune)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="train.num_threads of each run (0: the default run's, torch's default); 1 on "
        "cores other jobs share (OpenMP threads of a process that is descheduled stall)",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if not (DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        raise SystemExit(f"no MNIST copy in {DATA}: set SPARSENET_DATA")

    load_start = round(os.getloadavg()[0], 2)
    runs: dict[str, list[dict]] = {label: [] for label in LOGGERS}
    labels = list(LOGGERS)
    with tempfile.TemporaryDirectory(prefix="bench_loggers_") as scratch:
        for r in range(args.rounds):
            order = labels[r % len(labels) :] + labels[: r % len(labels)]
            for label in order:
                result = one_run(label, Path(scratch), args.epochs, args.threads)
                runs[label].append(result)
                print(f"round {r + 1}/{args.rounds} {label}: {result}", flush=True)
    result = {
        "epochs": args.epochs,
        "threads": args.threads or torch.get_num_threads(),
        "rounds": args.rounds,
        "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "load_average_1min_at_start": load_start,
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "target_overhead_pct": 100 * TARGET,
        "command": "SPARSENET_DATA=../shared/data python scripts/bench_loggers.py "
        f"--rounds {args.rounds} --epochs {args.epochs} --threads {args.threads}",
        "rows": summarize(runs),
        "runs": runs,
    }
    write_report(result, args.out)


if __name__ == "__main__":
    main()
