"""Starting strengths that put different regularizers on one footing: strength = c / R(W).

    python scripts/calibrate_strength.py OVERRIDES... [--penalty 0.5] [--regularizers a,b,...]

Composes the run `sparsenet OVERRIDES regularizer=<name>` would make for each regularizer,
builds its model with its initial weights (`model.weights`: a trained network), and prints the
strength at which the regularizer's term equals `--penalty` on those weights:

    strength(name) = penalty / R_name(W),   R without its strength (`Regularizer.penalty`)

The regularizers' values differ by orders of magnitude (a sum of group norms, a ratio of
norms, a variance), so one strength for all compares nothing; this one makes each term start
at the same share of the loss (0.5: about the cross-entropy of a trained CIFAR-10 network with
label smoothing). Used for the CIFAR-10 table (docs/results.md), where budget control
(budget.target) then moves each strength from there. Prints one override per regularizer, and
the sweep command.
"""

from __future__ import annotations

import argparse

import torch
from hydra import compose, initialize_config_module

from sparsenet.pipeline.resume import register_resolvers
from sparsenet.pipeline.settings import parse_config

DEFAULT = "group_lasso,sparse_group_lasso,ssl,l1_l2,sgl_variance"


def penalty_of(overrides: list[str]) -> tuple[float, float]:
    """(configured strength, R(W) without it) of the run `overrides` describe."""
    with initialize_config_module(config_module="sparsenet.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    settings = parse_config(cfg)
    model = settings.model.build().eval()
    regularizer = settings.regularizer
    example = torch.zeros(1, *settings.dataset.input_shape)
    regularizer.bind(model, example)
    with torch.no_grad():
        value = float(regularizer.penalty(model))
    return float(regularizer.strength), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="sparsenet overrides (experiment=..., ...)")
    parser.add_argument("--penalty", type=float, default=0.5, help="strength x R(W) to reach")
    parser.add_argument("--regularizers", default=DEFAULT, help="comma-separated config names")
    args = parser.parse_args()
    register_resolvers()
    chosen = {}
    for name in args.regularizers.split(","):
        configured, value = penalty_of([*args.overrides, f"regularizer={name}"])
        strength = args.penalty / value if value > 0 else float("nan")
        chosen[name] = strength
        print(
            f"{name:20s} R(W) = {value:.6g}  configured strength {configured:.3g} "
            f"(term {configured * value:.4g})  ->  regularizer.strength={strength:.3g}"
        )
    print(f"\none run each (strength x R(W) = {args.penalty:g} at the start):")
    for name, strength in chosen.items():
        print(
            f"  sparsenet {' '.join(args.overrides)} regularizer={name} "
            f"regularizer.strength={strength:.3g}"
        )


if __name__ == "__main__":
    main()
