"""Sweeps through Hydra's launcher plugins, for real: joblib (parallel runs on this machine),
submitit's local executor (the cluster path on this machine) and the Slurm config up to sbatch."""

import json
import os
import stat
from pathlib import Path

from omegaconf import OmegaConf

SMALL_SWEEP = ("-m", "experiment=smoke", "seed=0,1", "finetune.epochs=0")


def assert_sweep_completed(sweep_dir: Path, launcher_target: str, parallel_jobs: str) -> None:
    metrics = sorted(sweep_dir.glob("*/metrics.json"))
    assert len(metrics) == 2
    for path in metrics:
        assert json.loads(path.read_text())["status"] == "completed"
        hydra_cfg = OmegaConf.load(path.parent / ".hydra" / "hydra.yaml").hydra
        assert hydra_cfg.launcher._target_.endswith(launcher_target)
        # the thread division hint every run gets (see conf/hydra/launcher/*.yaml)
        assert str(hydra_cfg.job.env_set.SPARSENET_PARALLEL_JOBS) == parallel_jobs
    summary = (sweep_dir / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("seeds,") and summary[1].startswith("2,")  # seeds folded


def test_joblib_launcher_runs_two_jobs_in_parallel(sparsenet_cli, tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = sparsenet_cli(
        *SMALL_SWEEP,
        "hydra/launcher=parallel",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stderr + proc.stdout
    assert_sweep_completed(sweep_dir, "JoblibLauncher", "2")


def test_submitit_local_launcher_runs_the_cluster_path(sparsenet_cli, tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = sparsenet_cli(
        *SMALL_SWEEP, "hydra/launcher=slurm_local", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_sweep_completed(sweep_dir, "LocalLauncher", "2")
    assert any((sweep_dir / ".submitit").iterdir())  # jobs went through submitit


def test_slurm_launcher_writes_the_sbatch_script(sparsenet_cli, tmp_path):
    """A stand-in `sbatch` keeps the job-array script and refuses it: no cluster needed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text('#!/bin/sh\ncp "$1" "$SBATCH_CAPTURE"\necho "no cluster here" >&2\nexit 1\n')
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    script = tmp_path / "captured.sbatch"
    proc = sparsenet_cli(
        *SMALL_SWEEP,
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.account=sparse-lab",
        "hydra.launcher.timeout_min=90",
        "hydra.launcher.array_parallelism=1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
        env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SBATCH_CAPTURE": str(script)},
    )
    assert proc.returncode != 0  # sbatch refused: the sweep stops with the error
    lines = set(script.read_text().splitlines())
    for directive in (
        "--partition=gpu",
        "--account=sparse-lab",
        "--time=90",
        "--gpus-per-task=1",
        "--cpus-per-task=8",
        "--mem=32GB",
        "--array=0-1%1",
    ):
        assert f"#SBATCH {directive}" in lines, directive
    # the sweep folder still gets its (empty) summary from the exit hook
    assert (tmp_path / "sweep" / "summary.md").is_file()
