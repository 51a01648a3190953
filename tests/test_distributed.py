"""Data-parallel runs (sparsenet/pipeline/distributed.py): the loaders' sharding by hand, then
two CPU processes (gloo) launched by torchrun and by submitit, each against one process with
the same global batch and seed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cli_env
from torch.utils.data import Subset, TensorDataset

from sparsenet.checkpoint import load_pruned
from sparsenet.data.loaders import make_loader, shard_bounds
from sparsenet.errors import ConfigError
from sparsenet.pipeline import distributed
from sparsenet.pipeline.resume import config_hash, run_dirname

# ---------------------------------------------------------------------------------------------
# sharding


def test_shard_bounds_split_a_batch_into_contiguous_parts():
    assert [shard_bounds(8, r, 2) for r in range(2)] == [(0, 4), (4, 8)]
    assert [shard_bounds(7, r, 2) for r in range(2)] == [(0, 4), (4, 7)]
    assert [shard_bounds(4, r, 3) for r in range(3)] == [(0, 2), (2, 3), (3, 4)]
    assert [shard_bounds(1, r, 2) for r in range(2)] == [(0, 1), (1, 1)]  # rank 1: nothing


def _indices(n: int) -> TensorDataset:
    return TensorDataset(torch.arange(n).float().unsqueeze(1), torch.arange(n))


def _batches(loader) -> list[list[int]]:
    return [batch[1].tolist() for batch in loader]


@pytest.mark.parametrize("in_memory", [True, False])
def test_in_order_parts_are_the_hand_computed_indices(in_memory):
    data = _indices(10) if in_memory else Subset(_indices(10), range(10))
    parts = [
        _batches(make_loader(data, 4, shuffle=False, seed=0, rank=r, world_size=2)) for r in (0, 1)
    ]
    # global batches [0..3] [4..7] [8, 9]: rank 0 the first half of each, rank 1 the second
    assert parts[0] == [[0, 1], [4, 5], [8]]
    assert parts[1] == [[2, 3], [6, 7], [9]]


@pytest.mark.parametrize("in_memory", [True, False])
def test_shuffled_parts_together_are_the_single_process_batches(in_memory):
    """World 2, batch 4 of 11 samples: for each of three epochs, rank 0 + rank 1 of every
    global batch is that batch of one process; a resumed loader (set_epoch) repeats it."""
    data = _indices(11) if in_memory else Subset(_indices(11), range(11))
    single = make_loader(data, 4, shuffle=True, seed=5)
    ranks = [make_loader(data, 4, shuffle=True, seed=5, rank=r, world_size=2) for r in (0, 1)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 3  # the same number of steps
    assert ranks[0].global_batch_sizes() == [4, 4, 3]
    epochs = []
    for _ in range(3):
        whole = _batches(single)
        zero, one = _batches(ranks[0]), _batches(ranks[1])
        assert [a + b for a, b in zip(zero, one, strict=True)] == whole
        assert [len(b) for b in zero] == [2, 2, 2] and [len(b) for b in one] == [2, 2, 1]
        assert not set(sum(zero, [])) & set(sum(one, []))  # disjoint parts
        epochs.append(zero)
    assert epochs[0] != epochs[1]
    resumed = make_loader(data, 4, shuffle=True, seed=5, rank=0, world_size=2)
    resumed.set_epoch(2)
    assert _batches(resumed) == epochs[2]


def test_augmentation_is_drawn_for_the_global_batch_then_cut():
    """Each sample gets the random shift it gets in one process (in-memory augment)."""

    def shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return x + torch.randint(0, 100, (len(x), 1), generator=generator).float()

    data = _indices(8)
    single = [b[0] for b in make_loader(data, 4, shuffle=True, seed=1, augment=shift)]
    parts = [
        [
            b[0]
            for b in make_loader(data, 4, shuffle=True, seed=1, augment=shift, rank=r, world_size=2)
        ]
        for r in (0, 1)
    ]
    for whole, zero, one in zip(single, *parts, strict=True):
        assert torch.equal(torch.cat([zero, one]), whole)


def test_a_batch_size_that_does_not_split_is_refused_in_one_line():
    ranks = distributed.Ranks(rank=0, local_rank=0, world_size=3)
    with pytest.raises(
        ConfigError, match=r"train.batch_size=64 is the global batch .* a multiple of 3"
    ):
        distributed.check_settings(ranks, 64, False, "cpu")
    with pytest.raises(ConfigError, match="train.sync_batchnorm=true needs CUDA"):
        distributed.check_settings(ranks, 63, True, "cpu")
    distributed.check_settings(distributed.Ranks(), 64, True, "cpu")  # one process: no matter


def test_launchers_are_read_from_the_environment(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.detect("auto") == distributed.Ranks()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.detect("auto") == distributed.Ranks(1, 1, 2, "torchrun")
    assert distributed.launcher_rank() == 1
    with pytest.raises(ConfigError, match="train.distributed='off' but this is process 1 of 2"):
        distributed.detect("off")
    with pytest.raises(ConfigError, match="train.distributed='sometimes' is not allowed"):
        distributed.detect("sometimes")


def test_distributed_key_neither_names_the_folder_nor_changes_the_hash():
    assert run_dirname(["seed=1", "train.distributed=off"]) == "seed=1"
    base = {"seed": 0, "train": {"batch_size": 64}}
    assert config_hash(base) == config_hash(
        {**base, "train": {"batch_size": 64, "distributed": "off"}}
    )
    # sync_batchnorm changes results under DDP: hashed when on, not at its default (old runs)
    assert config_hash(base) == config_hash(
        {**base, "train": {"batch_size": 64, "sync_batchnorm": False}}
    )
    assert config_hash(base) != config_hash(
        {**base, "train": {"batch_size": 64, "sync_batchnorm": True}}
    )


# ---------------------------------------------------------------------------------------------
# two processes against one

# Penalty (SSL's group lasso) and after-step zeroing, a ratio cut that removes units, 255
# samples in global batches of 64 (the last, 63, splits 32 + 31), a model without BatchNorm.
RUN = (
    "experiment=smoke",
    "model=lenet300_100",
    "regularizer=ssl",
    "regularizer.strength=0.03",
    "prune=ratio",
    "dataset.train_size=255",
    "train.epochs=3",
    "finetune.epochs=1",
    "train.num_threads=1",
    "report.latency_repeats=1",
    "report.latency_batch_size=8",
)
SINGLE_FILES = {
    ".hydra/config.yaml",
    ".hydra/hydra.yaml",
    ".hydra/overrides.yaml",
    ".hydra/results/config.yaml",  # the record of the results (resume.keep_hydra_record)
    ".hydra/results/hydra.yaml",
    ".hydra/results/overrides.yaml",
    ".lock",  # the run folder's lock (resume.run_folder_lock)
    "cli.log",
    "history.csv",
    "metrics.json",
    "model/config.json",
    "model/metrics.json",
    "model/model_spec.json",
    "model/model_state.pt",
}


def _torchrun(*args: str) -> list[str]:
    """`torchrun --standalone --nproc_per_node=2 -m sparsenet ARGS`, with this interpreter."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return [*launcher, "-m", "sparsenet", *args]


def _env(cwd: Path) -> dict:
    return cli_env(cwd, {"OMP_NUM_THREADS": "1"})


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _figures(folder: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    return {
        stage: {
            "test_acc": figures["test_acc"],
            "params": figures["params"],
            "units": [layer["units_kept"] for layer in figures["layers"]],
        }
        for stage, figures in metrics["stages"].items()
    }


def assert_same_result(folder: Path, reference: Path) -> None:
    assert _figures(folder) == _figures(reference)
    weights = load_pruned(folder / "model").state_dict()
    expected = load_pruned(reference / "model").state_dict()
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.allclose(weights[name], tensor, rtol=0, atol=1e-4), name


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, sparsenet_cli) -> Path:
    """The reference: one process, the same overrides."""
    cwd = tmp_path_factory.mktemp("single")
    proc = sparsenet_cli(*RUN, f"hydra.run.dir={cwd / 'run'}", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((cwd / "run" / "metrics.json").read_text())["world_size"] == 1
    return cwd / "run"


def test_torchrun_two_processes_match_one_and_write_one_set_of_outputs(single_run, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        _torchrun(*RUN, f"hydra.run.dir={run_dir}"),
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["world_size"] == 2
    assert _figures(single_run)["finetune"]["units"] != [300, 100, 10]  # units were removed
    assert_same_result(run_dir, single_run)
    # One set of outputs: the files of a single-process run, nothing per rank; rank 0 prints.
    assert _files(run_dir) == _files(single_run) == SINGLE_FILES
    assert proc.stdout.count("test acc ") == 1


@pytest.mark.slow
def test_a_killed_torchrun_resumes_to_the_single_process_result(single_run, tmp_path):
    """SIGKILL to both workers and torchrun after rank 0's first checkpoint, the same command
    again: every process loads that checkpoint and the run ends as one process's does."""
    run_dir = tmp_path / "run"
    command = _torchrun(*RUN, f"hydra.run.dir={run_dir}")
    proc = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (run_dir / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.01)
    # The workers run in sessions of their own: kill them by id, then torchrun.
    for pid in _children(proc.pid):
        os.kill(pid, signal.SIGKILL)
    proc.kill()
    proc.wait()
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "metrics.json").exists()

    resumed = subprocess.run(
        command, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=180
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("resuming") == 1  # rank 0 says so, both resume
    assert not (run_dir / "checkpoint.pt").exists()
    assert_same_result(run_dir, single_run)
    history = (run_dir / "history.csv").read_text().splitlines()
    assert len(history) == len((single_run / "history.csv").read_text().splitlines())


@pytest.mark.slow
def test_submitit_tasks_run_ddp_through_the_slurm_launcher_path(
    single_run, sparsenet_cli, tmp_path
):
    """hydra/launcher=slurm_local with tasks_per_node=2: the tasks find each other through
    submitit's JobEnvironment, as the tasks of a Slurm job do."""
    sweep = tmp_path / "sweep"
    proc = sparsenet_cli(
        "-m",
        "hydra/launcher=slurm_local",
        "hydra.launcher.tasks_per_node=2",
        *RUN,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = [p.parent for p in sweep.glob("*/metrics.json")]
    assert json.loads((run_dir / "metrics.json").read_text())["world_size"] == 2
    assert_same_result(run_dir, single_run)
