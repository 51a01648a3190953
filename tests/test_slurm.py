"""Sweeps through a real SLURM controller (sbatch job arrays), as on a user's cluster.

Skipped when no SLURM node answers; CI starts a single-node cluster with
scripts/ci/slurm_up.sh (as root) before the tests."""

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _slurm_idle() -> bool:
    if shutil.which("sinfo") is None:
        return False
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return proc.returncode == 0 and "idle" in proc.stdout


pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        not _slurm_idle(), reason="no idle SLURM node (start one with scripts/ci/slurm_up.sh)"
    ),
]

SLURM = (
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_task=null",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.timeout_min=10",
)


def _sweep_command(sweep: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sparsenet",
        "-m",
        "experiment=smoke",
        "train.progress=false",
        "regularizer.strength=1e-3,1e-2",
        "seed=0,1",
        *SLURM,
        *extra,
        f"hydra.sweep.dir={sweep}",
    ]


def test_sweep_through_sbatch_writes_its_summary(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        _sweep_command(sweep, "train.epochs=1", "finetune.epochs=0"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")]
    assert sorted((r["config"]["regularizer"]["strength"], r["config"]["seed"]) for r in runs) == [
        (1e-3, 0),
        (1e-3, 1),
        (1e-2, 0),
        (1e-2, 1),
    ]
    assert all(r["status"] == "completed" for r in runs)
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(float(r["regularizer.strength"]) for r in rows) == [1e-3, 1e-2]
    assert all(int(float(r["seeds"])) == 2 for r in rows)
    assert (sweep / ".submitit").is_dir()  # the runs really went through sbatch


def test_requeued_job_resumes_from_its_checkpoint(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(
        _sweep_command(sweep, "train.epochs=6", "finetune.epochs=0", "dataset.train_size=4096"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not list(sweep.glob("*/checkpoint.pt")) and time.time() < deadline:
        time.sleep(0.2)
    jobs = subprocess.run(
        ["squeue", "-h", "-t", "RUNNING", "-o", "%i"], capture_output=True, text=True
    ).stdout.split()
    assert jobs, "no running job to requeue"
    subprocess.run(["scontrol", "requeue", *jobs], check=True)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]

    runs = [json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")]
    assert len(runs) == 4 and all(r["status"] == "completed" for r in runs)
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.out"))
    assert "resuming" in logs  # a requeued task continued from its checkpoint
