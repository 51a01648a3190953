"""Measured CPU latency of the networks that runs saved, side by side, at several batch sizes.

    python scripts/run_latency.py RUN_FOLDER [RUN_FOLDER ...] [--batch-sizes 1 64]
                                  [--repeats 30] [--warmup 5] [--threads N]

Each RUN_FOLDER is a run folder with a saved network (`model/`, `checkpoint.save_pruned`), or
such a `model/` folder itself. Every network is loaded and prepared for inference as it would
be deployed (`sparsenet.deploy.for_inference`: BatchNorm folded into the convolution that
alone feeds it), then all of them are timed in one process, interleaved per round
(`sparsenet.measure.interleaved_latency_ms`: the shared machine's load hits all alike), at each
batch size. Give the dense network's folder too, so the speed-ups compare like with like.

Writes `latency.json` into each run folder: per batch size the median and quartiles (ms per
forward pass), with the machine, torch version, thread count, load average and the other
folders measured in the same session. `scripts/paper_results.py` keeps it with the run's record
and shows the medians on docs/results.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import torch

import sparsenet.pruning  # noqa: F401  (before sparsenet.checkpoint: it closes an import cycle)
from sparsenet.checkpoint import load_pruned, read_spec
from sparsenet.deploy import for_inference
from sparsenet.measure import interleaved_latency_ms
from sparsenet.runtime import atomic_write_json

LATENCY_FILE = "latency.json"


def model_folder(path: Path) -> Path:
    """The `model/` folder of a run folder (or the folder itself when it is one)."""
    for candidate in (path / "model", path):
        if (candidate / "model_spec.json").is_file():
            return candidate
    raise SystemExit(f"{path}: no saved network (model/model_spec.json); run with a model saved")


def input_shape(folder: Path) -> tuple[int, ...]:
    spec = read_spec(folder / "model_spec.json")
    return tuple(spec["model"]["input_shape"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    # a `model/` folder given directly: its run folder gets the figures (paper_results reads
    # <run>/latency.json)
    runs = [p.parent if p.name == "model" else p for p in (a.resolve() for a in args.runs)]
    folders = {run: model_folder(run) for run in runs}
    shapes = {input_shape(folder) for folder in folders.values()}
    if len(shapes) != 1:
        raise SystemExit(f"the networks take different inputs ({sorted(shapes)}): time them apart")
    shape = shapes.pop()
    models = {str(run): for_inference(load_pruned(folders[run])) for run in runs}
    load_before = os.getloadavg()[0]
    by_batch = {
        batch: interleaved_latency_ms(
            models, shape, batch, repeats=args.repeats, warmup=args.warmup
        )
        for batch in args.batch_sizes
    }
    session = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "deployed": "sparsenet.deploy.for_inference (BatchNorm folded)",
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "measured_with": [str(run) for run in runs],
        "command": " ".join(["python", *sys.argv]),
    }
    for run in runs:
        figures = {
            str(batch): {k: round(v, 4) for k, v in by_batch[batch][str(run)].items()}
            for batch in args.batch_sizes
        }
        atomic_write_json(run / LATENCY_FILE, {"batch_sizes": figures, **session})
        medians = ", ".join(
            f"b{b}: {figures[str(b)]['median_ms']:.2f} ms" for b in args.batch_sizes
        )
        print(f"{run}: {medians}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
