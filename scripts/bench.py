"""sparsenet against a bare PyTorch loop, in one process (ratios measured side by side).

    python scripts/bench.py [--parts train,data,pruned,sweep,memory] [--quick] [--out scripts/results]

Parts (each writes its rows to <out>/bench.json and <out>/bench.md; parts not run keep their
previous rows):
  train   samples/s of sparsenet's training step (engine.train_epoch: schedule, metrics,
          regularizer) vs a bare loop (forward, cross-entropy, backward, step), LeNet-5 on
          MNIST-shaped and ResNet-20 on CIFAR-shaped in-memory tensors, without and with each
          regularizer config. Blocks alternate bare / sparsenet; ratio = median of block ratios.
  data    share of an epoch spent waiting for the next batch: MNIST in memory (LeNet-5) and
          the CIFAR-10 JPEG ImageFolder copy with 2 DataLoader workers (ResNet-20).
  pruned  CPU latency dense vs pruned (batch 1 and 64) for LeNet-5, VGG-16 and ResNet-56 pruned
          to about 1/2 and 1/4 of their MACs (smallest-norm units, prune.criterion=ratio).
  sweep   8 short LeNet-300-100 runs: sequential vs hydra/launcher=parallel (2 jobs).
  memory  peak RSS of a default MNIST run (shortened) and a CIFAR-10 VGG-16 run (shortened).
Targets (issue 7): train >= 0.95x (no regularizer) / 0.85x (any); data waiting < 5% (MNIST),
< 20% (CIFAR JPEG); pruned speed-up >= 0.7x the MAC reduction at batch 64; sweep >= 1.5x.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from torch.utils.data import TensorDataset

from sparsenet.cli import config_choices
from sparsenet.data import build_datasets
from sparsenet.data.loaders import make_loader
from sparsenet.models import get_model
from sparsenet.pipeline.engine import train_epoch

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SPARSENET_DATA") or REPO.parent / "shared" / "data")


def _regularizers() -> dict[str, object]:
    with initialize_config_module(config_module="sparsenet.conf", version_base="1.3"):
        return {
            name: compose(config_name="config", overrides=[f"regularizer={name}"]).regularizer
            for name in config_choices("regularizer")
        }


def _bare_epoch(model, batches, optimizer) -> None:
    model.train()
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def bench_train(quick: bool) -> list[dict]:
    """Throughput of engine.train_epoch vs the bare loop, alternating blocks of equal work."""
    cpu = torch.device("cpu")
    cases = [("lenet5", (1, 28, 28), 128), ("resnet20", (3, 32, 32), 128)]
    blocks, steps = (3, 5) if quick else (11, 40)
    reg_cfgs = _regularizers()
    rows = []
    for model_name, shape, batch in cases:
        n = steps * batch
        data = TensorDataset(torch.randn(n, *shape), torch.randint(0, 10, (n,)))
        loader = make_loader(data, batch, shuffle=True, seed=0)
        batches = [(x, y) for x, y in loader]
        for reg_name, reg_cfg in reg_cfgs.items():
            if model_name == "resnet20" and reg_name not in ("none", "group_lasso"):
                continue  # the regularizer sweep runs on LeNet-5; ResNet-20 checks the loop
            torch.manual_seed(0)
            model = get_model(model_name, num_classes=10, input_shape=shape)
            regularizer = instantiate(reg_cfg)
            regularizer.bind(model, torch.zeros(1, *shape))
            opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
            ratios, bare_times, ours_times = [], [], []
            _bare_epoch(model, batches[:2], opt)  # warm-up
            for block in range(blocks):
                order = ("bare", "ours") if block % 2 == 0 else ("ours", "bare")
                took = {}
                for kind in order:
                    start = time.perf_counter()
                    if kind == "bare":
                        _bare_epoch(model, batches, opt)
                    else:
                        train_epoch(model, loader, opt, sched, regularizer, cpu, progress=False)
                    took[kind] = time.perf_counter() - start
                ratios.append(took["bare"] / took["ours"])
                bare_times.append(took["bare"])
                ours_times.append(took["ours"])
            rows.append(
                {
                    "model": model_name,
                    "regularizer": reg_name,
                    "bare_samples_per_s": round(n / statistics.median(bare_times)),
                    "sparsenet_samples_per_s": round(n / statistics.median(ours_times)),
                    "ratio": round(statistics.median(ratios), 3),
                    "target": 0.95 if reg_name == "none" else 0.85,
                }
            )
            print(rows[-1], flush=True)
    return rows


def _waiting_share(loader, model, max_batches: int) -> dict:
    """Seconds spent in next(loader) vs in the training step, over one pass (or max_batches)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    wait = compute = 0.0
    it = iter(loader)
    for i in range(max_batches):
        start = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            break
        mid = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        end = time.perf_counter()
        if i > 0:  # the first batch includes worker start-up
            wait += mid - start
            compute += end - mid
    return {
        "wait_s": round(wait, 3),
        "compute_s": round(compute, 3),
        "wait_share": round(wait / (wait + compute), 4),
    }


def bench_data(quick: bool) -> list[dict]:
    rows = []
    if (DATA / "MNIST" / "raw").is_dir():
        splits = build_datasets("mnist", root=str(DATA), download=False)
        loader = make_loader(splits.train, 128, shuffle=True, seed=0)
        model = get_model("lenet5", num_classes=10, input_shape=(1, 28, 28))
        rows.append(
            {
                "data": "MNIST in memory",
                "model": "lenet5",
                "workers": 0,
                "target": 0.05,
                **_waiting_share(loader, model, 100 if quick else len(loader)),
            }
        )
    cifar = DATA / "cifar10-jpeg"
    if cifar.is_dir():
        splits = build_datasets("cifar10", root=str(cifar), format="imagefolder", download=False)
        loader = make_loader(splits.train, 128, shuffle=True, seed=0, num_workers=2)
        model = get_model("resnet20", num_classes=10, input_shape=(3, 32, 32))
        rows.append(
            {
                "data": "CIFAR-10 JPEG ImageFolder",
                "model": "resnet20",
                "workers": 2,
                "target": 0.20,
                **_waiting_share(loader, model, 20 if quick else 80),
            }
        )
    for row in rows:
        print(row, flush=True)
    return rows


# Runs the command as its own child and prints that child's peak RSS (kB): RUSAGE_CHILDREN of
# this benchmark's process would be the maximum over every child it has waited for so far.
_PEAK_RSS = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[1:])\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _run_cli(args: list[str], cwd: Path, env: dict | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (MB) of one `python -m sparsenet` process (the sweep
    launcher's worker processes included when they are its children)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, sys.executable, "-m", "sparsenet", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"sparsenet {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    peak_kb = int(proc.stderr.strip().splitlines()[-1])
    return wall, peak_kb // 1024


def bench_memory(quick: bool, workdir: Path) -> list[dict]:
    rows = []
    if (DATA / "MNIST" / "raw").is_dir():
        wall, rss = _run_cli(
            [
                f"dataset.root={DATA}",
                "train.epochs=1",
                "finetune.epochs=1",
                "train.progress=false",
                f"hydra.run.dir={workdir / 'mem_mnist'}",
                "resume=false",
            ],
            workdir,
        )
        rows.append(
            {
                "run": "default MNIST LeNet-5 (1+1 epochs)",
                "peak_rss_mb": rss,
                "wall_s": round(wall, 1),
            }
        )
    cifar = DATA / "cifar10-jpeg"
    if cifar.is_dir():
        subset = 2000 if quick else 10000
        wall, rss = _run_cli(
            [
                "dataset=cifar10",
                f"dataset.root={cifar}",
                "dataset.format=imagefolder",
                f"dataset.train_subset={subset}",
                "dataset.test_subset=2000",
                "model=vgg16",
                "train.epochs=1",
                "finetune.epochs=0",
                "train.progress=false",
                f"hydra.run.dir={workdir / 'mem_vgg'}",
                "resume=false",
            ],
            workdir,
        )
        rows.append(
            {
                "run": f"CIFAR-10 VGG-16 ({subset} train samples, 1 epoch)",
                "peak_rss_mb": rss,
                "wall_s": round(wall, 1),
            }
        )
    for row in rows:
        print(row, flush=True)
    return rows


def bench_sweep(quick: bool, workdir: Path) -> list[dict]:
    """8 short LeNet-300-100 runs on the synthetic dataset, sequential vs 2 parallel jobs."""
    common = [
        "-m",
        "experiment=smoke",
        "model=lenet300_100",
        "dataset.train_size=16384" if not quick else "dataset.train_size=4096",
        "train.epochs=3" if not quick else "train.epochs=1",
        "finetune.epochs=1",
        "seed=0,1,2,3,4,5,6,7",
        "resume=false",
    ]
    rows = []
    for launcher, extra in (
        ("sequential (basic)", []),
        ("parallel (joblib, 2 jobs)", ["hydra/launcher=parallel"]),
    ):
        name = "bench_sweep_" + ("par" if extra else "seq")
        wall, _ = _run_cli(
            [*common, *extra, f"name={name}", f"hydra.sweep.dir={workdir / name}"], workdir
        )
        rows.append({"launcher": launcher, "runs": 8, "wall_s": round(wall, 1)})
    rows[1]["speedup"] = round(rows[0]["wall_s"] / rows[1]["wall_s"], 2)
    rows[1]["target"] = 1.5
    for row in rows:
        print(row, flush=True)
    return rows


def bench_pruned(quick: bool) -> list[dict]:
    """Dense vs pruned CPU latency, global smallest-norm cuts to ~1/2 and ~1/4 of the MACs
    (the measurement itself is scripts/bench_pruning.py's, with its interleaved repeats)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_pruning import MODELS, bench

    rows = []
    for name in MODELS:
        result = bench(name, [64, 1], 6 if quick else 30, 2 if quick else 5, scopes=("global",))
        for cut, figures in result["cuts"].items():
            for batch, lat in figures["latency"].items():
                rows.append(
                    {
                        "model": name,
                        "MACs kept": round(figures["mac_ratio"], 3),
                        "batch": int(batch),
                        "dense ms": round(lat["dense"]["median_ms"], 2),
                        "pruned ms": round(lat["pruned"]["median_ms"], 2),
                        "MAC reduction": round(figures["mac_reduction"], 2),
                        "speed-up": round(lat["speedup"], 2),
                        "speed-up / MAC reduction": round(
                            lat["speedup"] / figures["mac_reduction"], 2
                        ),
                        "target (batch 64)": 0.7 if batch == "64" and name != "lenet5" else "",
                        "cut": cut,
                    }
                )
                print(rows[-1], flush=True)
    return rows


def _markdown(results: dict) -> str:
    lines = [f"# sparsenet benchmarks\n\n{results['machine']}\n"]
    for part, rows in results["parts"].items():
        if not rows:
            continue
        keys = list(dict.fromkeys(k for row in rows for k in row))
        lines += [f"## {part}\n", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(str(row.get(k, "")) for k in keys) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="train,data,pruned,sweep,memory")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke check)")
    parser.add_argument("--out", type=Path, default=REPO / "scripts" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = args.out / "bench_runs"
    workdir.mkdir(exist_ok=True)
    result_file = args.out / "bench.json"
    results = json.loads(result_file.read_text()) if result_file.exists() else {"parts": {}}
    results["machine"] = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    runners = {
        "train": lambda: bench_train(args.quick),
        "data": lambda: bench_data(args.quick),
        "pruned": lambda: bench_pruned(args.quick),
        "sweep": lambda: bench_sweep(args.quick, workdir),
        "memory": lambda: bench_memory(args.quick, workdir),
    }
    for part in args.parts.split(","):
        if part not in runners:
            parser.error(f"--parts: '{part}' is not a part; allowed: {', '.join(runners)}")
        results["parts"][part] = runners[part]()
        result_file.write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "bench.md").write_text(_markdown(results))
    print(_markdown(results))


if __name__ == "__main__":
    main()
