"""The same command twice finds its own run folder and does not run again."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from sparsenet.pipeline.resume import config_hash, run_dirname

QUICK = ("experiment=smoke", "train.epochs=1", "finetune.epochs=0", "train.progress=false")


def test_run_dirname_is_sorted_safe_and_bounded():
    assert run_dirname([]) == "defaults"
    assert run_dirname(["seed=1", "model=vgg16", "dataset.root=/x/y", "train.progress=false"]) == (
        "model=vgg16,seed=1"
    )
    assert run_dirname(["regularizer.layers={a/b:null}"]) == "regularizer.layers={a_b:null}"
    long = run_dirname([f"k{i}=v" for i in range(60)])
    assert len(long) == 120 and long != run_dirname([f"k{i}=w" for i in range(60)])


def test_config_hash_ignores_where_data_lives_but_not_what_is_computed():
    base = {"dataset": {"root": "/a", "name": "mnist"}, "seed": 0, "train": {"progress": True}}
    moved = {"dataset": {"root": "/b", "name": "mnist"}, "seed": 0, "train": {"progress": False}}
    reseeded = {"dataset": {"root": "/a", "name": "mnist"}, "seed": 1, "train": {"progress": True}}
    assert config_hash(base) == config_hash(moved)
    assert config_hash(base) != config_hash(reseeded)


def test_runs_made_before_cost_weights_keep_their_hash():
    """`cost: null` (the behaviour before cost-aware weights) anywhere in the regularizer node,
    parts and inner ones included, hashes as the config without the key; a cost does not."""
    before = {"seed": 0, "regularizer": {"strength": 1.0, "parts": {"sgl": {"alpha": 0.1}}}}
    null = {
        "seed": 0,
        "regularizer": {
            "strength": 1.0,
            "cost": None,
            "parts": {"sgl": {"alpha": 0.1, "cost": None}},
        },
    }
    weighted = {
        "seed": 0,
        "regularizer": {"strength": 1.0, "parts": {"sgl": {"alpha": 0.1, "cost": "macs"}}},
    }
    assert config_hash(null) == config_hash(before)
    assert config_hash(weighted) != config_hash(before)


def test_second_identical_command_skips_the_completed_run(sparsenet_cli, tmp_path):
    first = sparsenet_cli(*QUICK, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    metrics_file = next((tmp_path / "outputs" / "runs" / "smoke").glob("*/metrics.json"))
    before = metrics_file.stat().st_mtime_ns

    again = sparsenet_cli(*QUICK, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already completed" in again.stdout
    assert metrics_file.stat().st_mtime_ns == before

    rerun = sparsenet_cli(*QUICK, "resume=false", cwd=tmp_path)
    assert rerun.returncode == 0 and "already completed" not in rerun.stdout
    assert metrics_file.stat().st_mtime_ns > before


def test_a_folder_holding_another_config_is_not_overwritten(sparsenet_cli, tmp_path):
    run_dir = tmp_path / "run"
    assert sparsenet_cli(*QUICK, f"hydra.run.dir={run_dir}", cwd=tmp_path).returncode == 0
    kept = (run_dir / "metrics.json").read_text()
    clash = sparsenet_cli(*QUICK, "seed=5", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert clash.returncode == 2
    assert "holds a run of another config" in clash.stderr and "Traceback" not in clash.stderr
    assert (run_dir / "metrics.json").read_text() == kept
    assert json.loads(kept)["config"]["seed"] == 0


@pytest.mark.slow
def test_killed_run_resumes_to_the_metrics_of_an_uninterrupted_one(sparsenet_cli, tmp_path):
    """SIGKILL after the first checkpointed epoch, run the same command again: every figure
    except timings equals the uninterrupted run's (same seed, CPU)."""
    import signal
    import time

    args = (
        "experiment=smoke",
        "dataset.train_size=3072",
        "train.epochs=3",
        "finetune.epochs=2",
        "regularizer.proximal=true",
        "regularizer.strength=0.015",
        "train.progress=false",
        "train.num_threads=1",
    )
    straight = sparsenet_cli(*args, f"hydra.run.dir={tmp_path / 'straight'}", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-2000:]

    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sparsenet", *args, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (run_dir / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "metrics.json").exists()
    import torch

    before_kill = torch.load(run_dir / "checkpoint.pt", weights_only=True)["stage_wall_s"]
    assert before_kill > 0  # the train stage's time up to its first checkpoint

    resumed = sparsenet_cli(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout
    assert not (run_dir / "checkpoint.pt").exists()

    def figures(folder):
        metrics = json.loads((folder / "metrics.json").read_text())
        keep = ("test_acc", "test_loss", "params", "macs", "nonzero_params", "layers")
        return {s: {k: v.get(k) for k in keep} for s, v in metrics["stages"].items()}

    assert figures(run_dir) == figures(tmp_path / "straight")
    # the resumed stage's time counts the killed process's part too
    resumed_train = json.loads((run_dir / "metrics.json").read_text())["stages"]["train"]
    assert resumed_train["wall_s"] > before_kill
    history = (run_dir / "history.csv").read_text()
    assert history == (tmp_path / "straight" / "history.csv").read_text()


@pytest.mark.slow
def test_interrupted_sweep_reruns_only_what_did_not_finish(tmp_path):
    import csv
    import signal
    import time

    sweep = tmp_path / "sweep"
    args = ("-m", *QUICK, "dataset.train_size=2048", "seed=0,1,2", f"hydra.sweep.dir={sweep}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sparsenet", *args],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 180
    while time.time() < deadline:  # until the first run's metrics say completed
        done = [p for p in sweep.glob("*/metrics.json") if '"completed"' in p.read_text()]
        if done:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {
        p: p.stat().st_mtime_ns
        for p in sweep.glob("*/metrics.json")
        if json.loads(p.read_text())["status"] == "completed"
    }
    assert 1 <= len(finished) < 3

    again = subprocess.run(
        [sys.executable, "-m", "sparsenet", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("already completed") == len(finished)
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and int(float(rows[0]["seeds"])) == 3


TIMINGS = {"wall_s", "latency_ms", "speedup", "total_wall_s"}


def _without_timings(tree):
    if isinstance(tree, dict):
        return {k: _without_timings(v) for k, v in tree.items() if k not in TIMINGS}
    if isinstance(tree, list):
        return [_without_timings(v) for v in tree]
    return tree


def test_the_same_config_and_seed_twice_give_identical_results(tmp_path, compose_cfg):
    """On the CPU a run is a function of its config and seed: every figure but the timings,
    the history and the final weights are equal; another seed changes them."""
    import torch

    from sparsenet.pipeline import run_experiment

    overrides = [
        "experiment=smoke",
        "train.epochs=2",
        "train.progress=false",
        "report.latency_batch_size=8",
    ]
    cfg = compose_cfg(*overrides)
    reseeded = compose_cfg(*overrides, "seed=1")
    runs = {name: tmp_path / name for name in ("a", "b", "seed1")}
    metrics = {
        name: run_experiment(reseeded if name == "seed1" else cfg, folder)
        for name, folder in runs.items()
    }
    assert metrics["a"]["status"] == "completed"
    assert _without_timings(metrics["a"]) == _without_timings(metrics["b"])
    history = {name: (folder / "history.csv").read_text() for name, folder in runs.items()}
    assert history["a"] == history["b"] != history["seed1"]
    weights = [torch.load(f / "model" / "model_state.pt", weights_only=True) for f in runs.values()]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


MNIST_RUN = (
    "dataset=mnist",
    "dataset.download=false",
    "train.epochs=1",
    "train.batch_size=4",
    "train.progress=false",
    "finetune.epochs=0",
    "prune.calibration_samples=4",
    "report.latency_repeats=1",
    "report.latency_batch_size=2",
)


@pytest.mark.slow
def test_a_run_is_not_reused_on_other_data(sparsenet_cli, tmp_path, mnist_root):
    """dataset.root is not part of a run's folder name, but the data is part of its identity:
    other files at the same command refuse to reuse the results, and the run's .hydra record
    still names the data its results came from."""
    run_dir = tmp_path / "run"
    first = sparsenet_cli(
        *MNIST_RUN, f"dataset.root={mnist_root}", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr[-2000:]
    recorded = (run_dir / ".hydra" / "config.yaml").read_text()
    assert str(mnist_root) in recorded

    other = tmp_path / "other"
    shutil.copytree(mnist_root / "MNIST", other / "MNIST")
    images = other / "MNIST" / "raw" / "train-images-idx3-ubyte"
    data = bytearray(images.read_bytes())
    data[-1] ^= 0xFF  # one pixel of the last training image
    images.write_bytes(bytes(data))
    again = sparsenet_cli(
        *MNIST_RUN, f"dataset.root={other}", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert again.returncode == 2
    assert f"sparsenet: error: {run_dir} holds a run on other data" in again.stderr
    assert (run_dir / ".hydra" / "config.yaml").read_text() == recorded  # not rewritten

    same = sparsenet_cli(
        *MNIST_RUN, f"dataset.root={mnist_root}", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert same.returncode == 0 and "already completed" in same.stdout


def test_a_busy_run_folder_makes_the_second_process_wait(tmp_path):
    """A second process on the same run folder (an orphaned launcher worker, say) waits for the
    lock instead of racing on the checkpoint; the lock dies with its holder."""
    import fcntl
    import threading

    from sparsenet.pipeline.resume import LOCK_FILE, run_folder_lock

    run_dir = tmp_path / "run"
    order = []
    with run_folder_lock(run_dir):
        holder = (run_dir / LOCK_FILE).read_text()
        assert holder.startswith(f"process {os.getpid()} on ")

        def second():
            with run_folder_lock(run_dir):
                order.append("second")

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive() and not order  # still waiting
        order.append("first done")
    thread.join(10)
    assert order == ["first done", "second"]
    with open(run_dir / LOCK_FILE) as handle:  # released: anyone may take it now
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_checkpoint_the_run_cannot_use_is_set_aside_and_the_run_starts_over(
    tmp_path, compose_cfg
):
    """A checkpoint of this config that lacks a key would crash every re-run: it is moved to
    checkpoint.pt.bad (kept to inspect) and the run starts over and completes."""
    import torch

    from sparsenet.pipeline import run_experiment
    from sparsenet.pipeline.resume import config_hash

    overrides = ("experiment=smoke", "train.progress=false", "dataset.train_size=64")
    cfg = compose_cfg(*overrides)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    from sparsenet.pipeline.settings import parse_config

    chash = config_hash(parse_config(cfg).config)
    torch.save({"config_hash": chash, "stage_index": 0}, run_dir / "checkpoint.pt")
    metrics = run_experiment(cfg, run_dir)
    assert metrics["status"] == "completed"
    assert (run_dir / "checkpoint.pt.bad").is_file() and not (run_dir / "checkpoint.pt").exists()


class _Stop(Exception):
    """Stands for a kill right after the first mid-stage checkpoint is on disk."""


def _damage_scheduler(state):
    del state["scheduler"]["lr_lambdas"]


def _damage_momentum(state):
    for buffers in state["optimizer"]["state"].values():
        buffers["momentum_buffer"] = torch.zeros(3)


def _damage_stage_index(state):
    state["stage_index"] = 99


@pytest.mark.parametrize(
    "damage", [_damage_scheduler, _damage_momentum, _damage_stage_index], ids=lambda f: f.__name__
)
def test_a_checkpoint_that_fails_when_put_back_is_set_aside(
    tmp_path, compose_cfg, monkeypatch, damage
):
    """Damage that the key and shape checks cannot see (a schedule state of another kind,
    momentum of other shapes, a stage the run lacks) fails while the run is put back: the
    checkpoint is set aside and the run starts over to the figures of an undisturbed one."""
    from sparsenet.pipeline import run_experiment, stages

    cfg = compose_cfg(
        "experiment=smoke",
        "train.progress=false",
        "dataset.train_size=64",
        "train.epochs=2",
        "finetune.epochs=0",
        "report.latency_batch_size=2",
        "report.latency_repeats=1",
    )
    straight = run_experiment(cfg, tmp_path / "straight")
    real_save = stages.save_checkpoint

    def save_then_stop(run_dir, state):
        real_save(run_dir, state)
        if state["stage_epoch"] > 0:
            raise _Stop

    monkeypatch.setattr(stages, "save_checkpoint", save_then_stop)
    run_dir = tmp_path / "damaged"
    with pytest.raises(_Stop):
        run_experiment(cfg, run_dir)
    monkeypatch.setattr(stages, "save_checkpoint", real_save)
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    damage(state)
    torch.save(state, run_dir / "checkpoint.pt")

    metrics = run_experiment(cfg, run_dir)
    assert metrics["status"] == "completed"
    assert (run_dir / "checkpoint.pt.bad").is_file() and not (run_dir / "checkpoint.pt").exists()
    assert _without_timings(metrics) == _without_timings(straight)
