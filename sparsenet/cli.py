"""Command line: `sparsenet [hydra overrides]` runs one experiment (or a sweep with -m);
`sparsenet list` prints the available config choices.

Errors that are the user's to fix (a bad value, a typo'd key, missing data, an output folder
that cannot be written) print one `sparsenet: error: ...` line and exit with status 2; a run
whose loss diverged prints `sparsenet: run failed: ...` and exits with 1 (in a sweep the
other runs go on). SPARSENET_DEBUG=1 (or HYDRA_FULL_ERROR=1) shows the traceback instead.

Under torchrun every process runs this command and resolves the same run folder (it is named
from the overrides); rank 0 alone prints the results, and only it keeps Hydra's `.hydra/`
files and log (the others get hydra.output_subdir=null and stdout logging)."""

from __future__ import annotations

import difflib
import errno
import logging
import os
import sys
from importlib import resources
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import (
    ConfigCompositionException,
    MissingConfigException,
    OverrideParseException,
)
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from sparsenet.config.schema import composition_error, schema_keys
from sparsenet.errors import UserInputError
from sparsenet.launchers import launcher_error_message
from sparsenet.pipeline.distributed import launcher_rank
from sparsenet.pipeline.resume import register_resolvers

log = logging.getLogger("sparsenet")
CONFIG_GROUPS = (
    "dataset",
    "model",
    "regularizer",
    "optimizer",
    "scheduler",
    "prune",
    "budget",
    "dense",
    "finetune",
    "logger",
    "experiment",
)


def config_choices(group: str) -> list[str]:
    """Names of the YAML files of one config group, from the installed package."""
    folder = resources.files("sparsenet.conf").joinpath(group)
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def print_choices() -> None:
    for group in CONFIG_GROUPS:
        print(f"{group + ':':13s} {', '.join(config_choices(group))}")


def _debug() -> bool:
    return bool(os.environ.get("SPARSENET_DEBUG"))


def user_error_message(error: BaseException) -> str | None:
    """The line to print for an error that is the user's to fix (a bad value, a typo'd key or
    choice, data or an output folder that is not usable); None for anything else, a bug,
    whose traceback is then shown."""
    if isinstance(error, UserInputError):
        return str(error)
    refused = launcher_error_message(error)
    if refused is not None:
        return refused
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options:
        group, _, choice = str(error.missing_cfg_file).rpartition("/")
        return f"{group}={choice} is not a choice of {group}; allowed: {', '.join(error.options)}"
    if isinstance(error, OverrideParseException):
        line = f"cannot parse the override {error.override!r}: {_one_line(error.message)}"
        key, _, value = str(error.override or "").partition("=")
        if value and ("=" in value or "," in value) and not value.startswith(("'", '"')):
            # a run folder's path holds '=' and ',' (its name comes from overrides)
            line += f"; quote a value with '=' or ',' in it: '{key}=\"{value}\"'"
        return line
    if isinstance(error, ConfigCompositionException):
        cause = error.__cause__
        key = getattr(cause, "full_key", None)
        if isinstance(cause, ConfigKeyError | ConfigAttributeError) and key:
            typed = schema_keys(cause)
            if typed:  # a typed group (schema.py): its keys are all there is
                return f"{key} is not a config key{_did_you_mean(cause)}; allowed: {typed}"
            parent, _, leaf = str(key).rpartition(".")
            existing = getattr(cause, "parent_node", None)
            keys = ", ".join(map(str, existing.keys())) if isinstance(existing, DictConfig) else ""
            return (
                f"{key} is not a key of {parent or 'the config'} (its keys: {keys or 'none'})"
                f"{_did_you_mean(cause)}; an override merges into what is there, so add a new "
                f"key with +{key}=<value>"
            )
        if isinstance(cause, OmegaConfBaseException):
            return str(composition_error(cause))
        return _one_line(str(error))
    if isinstance(error, OmegaConfBaseException):
        return str(composition_error(error))
    return _file_error(error)


def _file_error(error: BaseException) -> str | None:
    """A file that could not be written or read, anywhere in the error's chain of causes
    (Hydra creating the run folder or its log file, say): `<file>: <reason>`. A full disk
    names no file when Hydra writes its records: the line says so."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.filename:
            return f"{error.filename}: {error.strerror or error}"
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return "no space left on device while writing the run's files; free space and run the same command again (finished runs are kept)"
        error = error.__cause__ or error.__context__
    return None


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return "; ".join(line for line in lines if not line.startswith("See https://"))


def _did_you_mean(cause: OmegaConfBaseException) -> str:
    parent = getattr(cause, "parent_node", None)
    key = str(getattr(cause, "key", "") or "")
    if not isinstance(parent, DictConfig) or not key:
        return ""
    close = difflib.get_close_matches(key, [str(k) for k in parent.keys()], n=1)
    prefix = str(cause.full_key).rpartition(".")[0]
    return f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""


def _fail(message: str, status: int) -> NoReturn:
    print(f"sparsenet: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status) from None


@hydra.main(version_base="1.3", config_path="pkg://sparsenet.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> dict | None:
    from sparsenet.pipeline import run_experiment
    from sparsenet.pipeline.resume import describe_failure
    from sparsenet.pipeline.settings import unused_stage_overrides
    from sparsenet.reporting import format_stage_table

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    stages = cfg.get("stages") or []
    for override in unused_stage_overrides(stages, HydraConfig.get().overrides.task):
        log.warning("%s changes nothing: its stage is not in stages=%s", override, list(stages))
    try:
        metrics = run_experiment(cfg, run_dir)
    except Exception as error:
        message = user_error_message(error)
        if message is None or _debug():
            raise
        if not sweeping:
            _fail(message, 2)
        # In a sweep the job fails and the others still run; Hydra raises the first failure
        # when they are done and main() prints it again, to exit with status 2.
        print(f"sparsenet: error: {run_dir.name}: {message}", file=sys.stderr, flush=True)
        raise
    quiet = launcher_rank() != 0  # another process of a data-parallel run: rank 0 reports
    if metrics["status"] == "failed":
        # Divergence is a result, not a crash: a sweep goes on; a single run exits with 1.
        if not quiet:
            print(
                f"sparsenet: run failed: {describe_failure(metrics)}", file=sys.stderr, flush=True
            )
        if not sweeping:
            raise SystemExit(1)
        return None
    if quiet:
        return metrics["summary"]
    print(format_stage_table(metrics))
    s = metrics["summary"]
    print(
        f"test acc {s['test_acc']:.2f}%  params kept {s['params_kept_pct']:.2f}% "
        f"({s['compression']:.2f}x)  MACs kept {s['macs_kept_pct']:.2f}%  "
        f"speed-up {s['speedup']:.2f}x  -> {run_dir / 'metrics.json'}"
    )
    return metrics["summary"]


# Given to the processes of rank > 0 (torchrun): rank 0 writes Hydra's files for the run.
SECONDARY_RANK_OVERRIDES = {
    "hydra.output_subdir": "hydra.output_subdir=null",
    "hydra/job_logging": "hydra/job_logging=stdout",
}


def _secondary_rank_overrides(argv: list[str]) -> list[str]:
    given = {arg.split("=", 1)[0].lstrip("+~") for arg in argv}
    return [o for key, o in SECONDARY_RANK_OVERRIDES.items() if key not in given]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "list":
        print_choices()
        return
    if launcher_rank() != 0:
        sys.argv.extend(_secondary_rank_overrides(sys.argv[1:]))
    register_resolvers()
    debug = _debug() or os.environ.get("HYDRA_FULL_ERROR") == "1"
    # Hydra then re-raises what goes wrong (a typo'd key, a missing choice) instead of printing
    # its own multi-line report, and the error is printed here as one line.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _hydra_main()
    except Exception as error:
        message = user_error_message(error)
        if message is None or debug:
            raise
        _fail(message, 2)


if __name__ == "__main__":
    main()
