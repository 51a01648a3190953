"""How much of a cut's damage is stale BatchNorm statistics? Test accuracy right after a ratio
cut, before and after `prune.recalibrate_batches` (sparsenet/pruning/recalibrate.py).

    SPARSENET_DATA=../shared/data python scripts/cut_recalibration.py \\
        'model.weights="/work/runs/cifar10_resnet20_dense"' [--ratio 0.5] [--batches 40 ...]

The overrides compose a run like the CLI's (default `experiment=cifar10_resnet20_compress`:
the trained dense ResNet-20 named by `model.weights`); its network is cut with
`prune.criterion=ratio prune.target=macs prune.ratio=<ratio>` in both scopes, with no
regularization before, then each cut copy is evaluated on the whole test split as it is and
after re-estimating its BatchNorm statistics on N training batches (the prune stage's own
recalibration: augmented, shuffled with the run's seed). Prints a table; nothing is trained.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

import sparsenet.pruning  # noqa: F401  (before the pipeline: it closes an import cycle)
from sparsenet.config.schema import register_schemas
from sparsenet.measure import count_macs
from sparsenet.pipeline.engine import evaluate
from sparsenet.pipeline.resume import register_resolvers
from sparsenet.pipeline.run import build_context
from sparsenet.pipeline.settings import parse_config
from sparsenet.pipeline.stages import calibration_batch, recalibration_batches
from sparsenet.pruning import PruneSettings, prune_units
from sparsenet.pruning.recalibrate import recalibrate_batchnorm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--experiment", default="cifar10_resnet20_compress")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--batches", type=int, nargs="+", default=[40])
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    register_schemas()
    register_resolvers()
    with initialize_config_module("sparsenet.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={args.experiment}", *args.overrides])
    with tempfile.TemporaryDirectory() as folder:
        ctx = build_context(parse_config(cfg), Path(folder))
    shape = tuple(ctx.data.input_shape)
    dense = ctx.model
    dense_macs = count_macs(dense, shape)
    print(f"dense: {evaluate(dense, ctx.test_loader, ctx.device)['test_acc']:.2f}%")
    print(
        "| scope | MACs kept | after the cut | "
        + " | ".join(f"recalibrated on {n} batches" for n in args.batches)
        + " |"
    )
    print("|---|---|---|" + "---|" * len(args.batches))
    calibration = calibration_batch(ctx, ctx.settings.prune.calibration_samples)
    for scope in ("global", "layer"):
        cut = copy.deepcopy(dense)
        settings = PruneSettings(criterion="ratio", target="macs", ratio=args.ratio, scope=scope)
        prune_units(cut, calibration[:1], settings, calibration=calibration)
        cells = [f"{evaluate(cut, ctx.test_loader, ctx.device)['test_acc']:.2f}%"]
        for count in args.batches:
            ctx.model = copy.deepcopy(cut)
            recalibrate_batchnorm(ctx.model, recalibration_batches(ctx, count))
            cells.append(f"{evaluate(ctx.model, ctx.test_loader, ctx.device)['test_acc']:.2f}%")
        kept = count_macs(cut, shape) / dense_macs
        print(f"| {scope} | {kept:.1%} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
