"""Command line: `sparsenet [hydra overrides]` runs one experiment (or a sweep with -m);
`sparsenet list` prints the available config choices."""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sparsenet.errors import UserInputError
from sparsenet.pipeline.resume import register_resolvers

CONFIG_GROUPS = ("dataset", "model", "regularizer", "optimizer", "scheduler", "prune", "experiment")


def config_choices(group: str) -> list[str]:
    """Names of the YAML files of one config group, from the installed package."""
    folder = resources.files("sparsenet.conf").joinpath(group)
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def print_choices() -> None:
    for group in CONFIG_GROUPS:
        print(f"{group + ':':13s} {', '.join(config_choices(group))}")


@hydra.main(version_base="1.3", config_path="pkg://sparsenet.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> dict:
    from sparsenet.pipeline import run_experiment
    from sparsenet.reporting import format_stage_table

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = run_experiment(cfg, run_dir)
    except UserInputError as error:
        if os.environ.get("SPARSENET_DEBUG"):
            raise
        print(f"sparsenet: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(format_stage_table(metrics))
    s = metrics["summary"]
    print(
        f"test acc {s['test_acc']:.2f}%  params kept {s['params_kept_pct']:.2f}% "
        f"({s['compression']:.2f}x)  MACs kept {s['macs_kept_pct']:.2f}%  "
        f"speed-up {s['speedup']:.2f}x  -> {run_dir / 'metrics.json'}"
    )
    return metrics["summary"]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "list":
        print_choices()
        return
    register_resolvers()
    _hydra_main()


if __name__ == "__main__":
    main()
