"""Sweeps through Hydra's launcher plugins, for real: joblib (parallel runs on this machine),
submitit's local executor (the cluster path on this machine) and the Slurm config up to sbatch."""

import json
import os
import shutil
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


def _slurm_stand_ins(bin_dir: Path, sbatch_body: str) -> None:
    """Every SLURM tool submitit looks for (`srun`, `sbatch`) as a stand-in script in bin_dir."""
    bin_dir.mkdir(exist_ok=True)
    for tool, body in (("srun", "exit 0\n"), ("sbatch", sbatch_body)):
        path = bin_dir / tool
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _path_without_slurm(bin_dir: Path | None = None) -> str:
    """PATH without any folder that holds a real SLURM tool (bin_dir first, when given), so
    the tests behave the same on a machine with SLURM installed (CI's, after slurm_up.sh)."""
    keep = [d for d in os.environ["PATH"].split(os.pathsep) if not (Path(d) / "srun").exists()]
    keep = [d for d in keep if not (Path(d) / "sbatch").exists()]
    return os.pathsep.join(([str(bin_dir)] if bin_dir else []) + keep)


def test_slurm_launcher_writes_the_sbatch_script(sparsenet_cli, tmp_path):
    """Stand-ins keep the job-array script and refuse it (an unknown partition): no cluster
    needed. The refusal is one line with exit status 2; earlier runs of the sweep stay."""
    sweep = tmp_path / "sweep"
    # an earlier sweep of the same study, run locally, that the refused one must not disturb
    earlier = sparsenet_cli(*SMALL_SWEEP, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert earlier.returncode == 0, earlier.stderr[-3000:]
    before = {p: p.read_bytes() for p in sweep.glob("*/metrics.json")}
    assert len(before) == 2

    bin_dir = tmp_path / "bin"
    # cp by its full path: PATH may lose /usr/bin, where a machine may have SLURM's tools
    _slurm_stand_ins(
        bin_dir,
        f'{shutil.which("cp")} "$1" "$SBATCH_CAPTURE"\n'
        'echo "sbatch: error: invalid partition specified: gpu" >&2\nexit 1\n',
    )
    script = tmp_path / "captured.sbatch"
    proc = sparsenet_cli(
        "-m",
        "experiment=smoke",
        "seed=2,3",
        "finetune.epochs=0",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.account=sparse-lab",
        "hydra.launcher.timeout_min=90",
        "hydra.launcher.array_parallelism=1",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        env={"PATH": _path_without_slurm(bin_dir), "SBATCH_CAPTURE": str(script)},
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("sparsenet: error:")]
    assert errors == [
        "sparsenet: error: hydra/launcher=slurm: sbatch refused the job array (exit status 1): "
        "sbatch: error: invalid partition specified: gpu; check hydra.launcher.partition, "
        "account, qos and timeout_min; no run was submitted"
    ]
    assert script.is_file(), proc.stderr[-3000:]
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
    # the earlier runs are untouched and the rebuilt summary still holds them
    assert {p: p.read_bytes() for p in sweep.glob("*/metrics.json")} == before
    summary = (sweep / "summary.csv").read_text().splitlines()
    assert summary[1].startswith("2,")  # two seeds folded: the earlier runs


def test_slurm_launcher_without_slurm_says_so_in_one_line(sparsenet_cli, tmp_path):
    sweep = tmp_path / "sweep"
    proc = sparsenet_cli(
        *SMALL_SWEEP,
        "hydra/launcher=slurm",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        env={"PATH": _path_without_slurm()},
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert (
        "sparsenet: error: hydra/launcher=slurm needs SLURM on this machine, but sbatch and srun "
        "are not on PATH; submit from a cluster's login node, or try the same sweep locally with "
        "hydra/launcher=slurm_local"
    ) in proc.stderr.splitlines()
    assert not list(sweep.glob("*/metrics.json"))  # nothing ran
