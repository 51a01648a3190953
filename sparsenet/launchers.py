"""Clear refusals for sweeps whose launcher cannot start: `hydra/launcher=slurm` without SLURM,
or a job array that `sbatch` refuses.

Without the SLURM client tools, Hydra's submitit launcher ends in a long traceback (submitit
looks for `srun` before it builds anything); a job array that `sbatch` refuses (an unknown
partition or account, a time limit above the partition's) ends in another. Either way nothing
was submitted, so the sweep folder's earlier runs are untouched. `launcher_error_message` turns
both into one line (the CLI prints it and exits with status 2). Both are recognised by where
and how submitit raised, not by its wording:

- no SLURM: the error was raised inside submitit's Slurm executor while `srun` or `sbatch` is
  missing from PATH;
- refused: submitit's `FailedJobError` from running the submission command carries the
  `CalledProcessError` of `sbatch` as its cause. A job that failed on the cluster raises
  `FailedJobError` without it and keeps its traceback.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

LOCAL_ALTERNATIVE = "hydra/launcher=slurm_local"  # the same submitit path on this machine
SLURM_TOOLS = ("sbatch", "srun")  # what submitit calls before and for a submission
SUBMITIT_SLURM_MODULE = "submitit.slurm.slurm"


def missing_slurm_tools() -> list[str]:
    return [tool for tool in SLURM_TOOLS if shutil.which(tool) is None]


def _raised_in(error: BaseException, module: str) -> bool:
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__") == module:
            return True
        tb = tb.tb_next
    return False


def _last_line(text: str | bytes | None) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"


def launcher_error_message(error: BaseException) -> str | None:
    """The line for a Slurm sweep that could not start (module docstring); None otherwise."""
    missing = missing_slurm_tools()
    if missing and _raised_in(error, SUBMITIT_SLURM_MODULE):
        verb = "is" if len(missing) == 1 else "are"
        return (
            f"hydra/launcher=slurm needs SLURM on this machine, but {' and '.join(missing)} "
            f"{verb} not on PATH; submit from a cluster's login node, or try the same sweep "
            f"locally with {LOCAL_ALTERNATIVE}"
        )
    cause = error.__cause__
    if not isinstance(cause, subprocess.CalledProcessError) or not cause.cmd:
        return None
    if Path(str(cause.cmd[0])).name != "sbatch":
        return None
    return (
        f"hydra/launcher=slurm: sbatch refused the job array (exit status {cause.returncode}): "
        f"{_last_line(cause.stderr)}; check hydra.launcher.partition, account, qos and "
        f"timeout_min; no run was submitted"
    )
