"""Benchmark: does removing half (three quarters) of the MACs make the network faster on the CPU?

Prunes LeNet-5 (1x28x28), VGG-16-BN and ResNet-56 (3x32x32), random init, with the `ratio`
criterion to about 1/2 and 1/4 of their MACs (`prune.criterion=ratio prune.target=macs
prune.ratio=0.5 | 0.75`) in both scopes: `global` (smallest relative norms anywhere first; on random weights this
thins the layers with few inputs per unit most) and `layer` (the same share of every layer, a
uniform width multiplier). It measures CPU latency of the dense and the pruned networks:
median wall time of one forward pass, eval and inference mode, after warm-up, with all
models' passes interleaved in each round (so background load hits all of them alike). Each
pruned network is measured twice: with the exact border fold (`prune.fold=exact`, the
default: zero-padded consumer convs become FoldedConv2d, one extra element-wise add each) and
with `prune.fold=bias`, so the fold's own cost is visible.

    python scripts/bench_pruning.py [--repeats 30] [--batch-sizes 64 1] [--ratios 0.5 0.75]
                                    [--scopes global layer] [--threads N] [--out scripts/results]

Writes <out>/bench_pruning.json and <out>/bench_pruning.md. Random weights are enough here:
latency depends on the shapes, not on the values. The machine's load average is recorded
before and after; timings taken while other processes use the CPU are noisy.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
from pathlib import Path

import torch
from torch import nn

from sparsenet.deploy import for_inference
from sparsenet.measure import count_macs, count_params, interleaved_latency_ms
from sparsenet.models import get_model
from sparsenet.pruning import FoldedConv2d, PruneSettings, prune_units

INPUT_SHAPES = {"lenet5": (1, 28, 28), "vgg16": (3, 32, 32), "resnet56": (3, 32, 32)}
MODELS = tuple(INPUT_SHAPES)
SCOPES = ("global", "layer")
RATIOS = (0.5, 0.75)


def _prune(
    model: nn.Module,
    scope: str,
    ratio: float,
    fold: str,
    calibration: torch.Tensor,
    round_to: int = 1,
) -> nn.Module:
    pruned = copy.deepcopy(model)
    settings = PruneSettings(
        criterion="ratio", target="macs", ratio=ratio, scope=scope, fold=fold, round_to=round_to
    )
    prune_units(pruned, calibration[:1], settings, calibration=calibration)
    return pruned.eval()


@torch.inference_mode()
def _widths(model: nn.Module) -> list[int]:
    return [m.weight.shape[0] for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def bench(
    name: str,
    batch_sizes: list[int],
    repeats: int,
    warmup: int,
    ratios: tuple[float, ...] = RATIOS,
    scopes: tuple[str, ...] = SCOPES,
    round_to: int = 1,
) -> dict:
    """Dense vs pruned latency of one model; result["cuts"]["<scope> <ratio>"] per cut."""
    torch.manual_seed(0)
    shape = INPUT_SHAPES[name]
    dense = get_model(name, num_classes=10, input_shape=shape).eval()
    calibration = torch.randn(64, *shape)
    models = {"dense": dense}
    cuts = [f"{scope} {ratio}" for ratio in ratios for scope in scopes]
    for cut in cuts:
        scope, ratio = cut.split()
        for fold in ("exact", "bias"):
            models[f"{cut}/{fold}"] = _prune(
                dense, scope, float(ratio), fold, calibration, round_to
            )
    # deployed: BatchNorm folded into the convolutions (sparsenet.deploy), dense and pruned alike
    models["dense/deployed"] = for_inference(dense)
    for cut in cuts:
        models[f"{cut}/deployed"] = for_inference(models[f"{cut}/exact"])
    macs = {k: count_macs(m, shape) for k, m in models.items()}
    result = {"model": name, "dense_macs": macs["dense"], "dense_params": count_params(dense)}
    result["dense_widths"] = _widths(dense)
    result["cuts"] = {}
    for cut in cuts:
        pruned = models[f"{cut}/exact"]
        result["cuts"][cut] = {
            "macs": macs[f"{cut}/exact"],
            "params": count_params(pruned),
            "mac_ratio": macs[f"{cut}/exact"] / macs["dense"],
            "mac_reduction": macs["dense"] / macs[f"{cut}/exact"],
            "folded_convs": sum(isinstance(m, FoldedConv2d) for m in pruned.modules()),
            "widths": _widths(pruned),
            "latency": {},
        }
    for batch in batch_sizes:
        lat = interleaved_latency_ms(models, shape, batch, repeats=repeats, warmup=warmup)
        dense_ms = lat["dense"]["median_ms"]
        for cut in cuts:
            exact, bias = lat[f"{cut}/exact"], lat[f"{cut}/bias"]
            deployed = lat[f"{cut}/deployed"]
            result["cuts"][cut]["latency"][str(batch)] = {
                "dense": lat["dense"],
                "pruned": exact,
                "pruned_bias_fold": bias,
                "speedup": dense_ms / exact["median_ms"],
                "speedup_bias_fold": dense_ms / bias["median_ms"],
                "dense_deployed": lat["dense/deployed"],
                "pruned_deployed": deployed,
                "speedup_deployed": lat["dense/deployed"]["median_ms"] / deployed["median_ms"],
            }
    return result


def _markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Pruning benchmark: MACs vs measured CPU latency",
        "",
        f"`{meta['command']}` on {meta['machine']}, torch {meta['torch']}, "
        f"{meta['threads']} thread(s); {meta['repeats']} interleaved repeats after "
        f"{meta['warmup']} warm-up passes; load average {meta['load_before']} before, "
        f"{meta['load_after']} after.",
        "",
        "Random init; LeNet-5 at 1x28x28, the others at 3x32x32; pruned with `prune.criterion="
        "ratio prune.target=macs prune.ratio=<ratio>` and `prune.scope=<scope>` (cut = scope "
        "and ratio). Latency: median ms per forward "
        "pass [quartiles]. Speed-up = dense median / pruned median; `bias fold` is the same "
        "pruned network without FoldedConv2d's border add (`prune.fold=bias`); `deployed` "
        "compares the inference copies of both (`sparsenet.deploy.for_inference`: BatchNorm "
        "folded into the convolution before it), with `prune.round_to` = "
        f"{meta.get('round_to', 1)}.",
        "",
        "| model | cut | batch | MACs dense | MACs pruned | MAC ratio | dense ms | pruned ms "
        "| speed-up | speed-up / MAC reduction | pruned ms (bias fold) | speed-up (bias fold) "
        "| deployed speed-up | deployed / MAC reduction |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]

    def cell(v: dict) -> str:
        return f"{v['median_ms']:.2f} [{v['q1_ms']:.2f}, {v['q3_ms']:.2f}]"

    for row in rows:
        for scope, figures in row["cuts"].items():
            for batch, lat in figures["latency"].items():
                lines.append(
                    f"| {row['model']} | {scope} | {batch} | {row['dense_macs'] / 1e6:.1f} M "
                    f"| {figures['macs'] / 1e6:.1f} M | {figures['mac_ratio']:.3f} "
                    f"| {cell(lat['dense'])} | {cell(lat['pruned'])} | {lat['speedup']:.2f}x "
                    f"| {lat['speedup'] / figures['mac_reduction']:.2f} "
                    f"| {cell(lat['pruned_bias_fold'])} | {lat['speedup_bias_fold']:.2f}x "
                    f"| {lat['speedup_deployed']:.2f}x "
                    f"| {lat['speedup_deployed'] / figures['mac_reduction']:.2f} |"
                )
    lines += ["", "Parameters and conv widths:", ""]
    for row in rows:
        lines.append(
            f"- {row['model']} dense: {row['dense_params']:,} params, {row['dense_widths']}"
        )
        for scope, figures in row["cuts"].items():
            lines.append(
                f"- {row['model']} {scope}: {figures['params']:,} params, "
                f"{figures['folded_convs']} FoldedConv2d, {figures['widths']}"
            )
    if meta["noisy"]:
        lines += [
            "",
            f"Note: the load average ({meta['load_before']} / {meta['load_after']}) exceeded "
            f"the {meta['cores']} cores during the run: other processes shared the CPU, so "
            "the absolute times and, to a lesser degree, the ratios are noisy.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 1])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS))
    parser.add_argument("--scopes", nargs="+", default=list(SCOPES), choices=SCOPES)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads (0: torch's default). 1 is robust to other processes "
        "on the machine: with more threads than free cores, OpenMP barriers stall.",
    )
    parser.add_argument(
        "--round-to", type=int, default=1, help="prune.round_to: widths kept multiples of it"
    )
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    load_before = [round(v, 2) for v in os.getloadavg()]
    rows = [
        bench(
            n,
            args.batch_sizes,
            args.repeats,
            args.warmup,
            tuple(args.ratios),
            tuple(args.scopes),
            args.round_to,
        )
        for n in args.models
    ]
    load_after = [round(v, 2) for v in os.getloadavg()]
    cores = os.cpu_count() or 1
    meta = {
        "command": " ".join(["python scripts/bench_pruning.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}".strip(),
        "cores": cores,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "round_to": args.round_to,
        "load_before": load_before,
        "load_after": load_after,
        "noisy": max(load_before[0], load_after[0]) > cores,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_pruning.json").write_text(
        json.dumps({"meta": meta, "results": rows}, indent=2) + "\n"
    )
    markdown = _markdown(rows, meta)
    (args.out / "bench_pruning.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
