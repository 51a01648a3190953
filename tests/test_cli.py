"""The command line end to end on synthetic data: what a user types, what lands on disk."""

import json

import pytest
import torch

from sparsenet.checkpoint import load_pruned

STAGE_KEYS = {"test_acc", "params", "nonzero_params", "macs", "layers", "wall_s", "latency_ms"}


def test_single_run_writes_metrics_and_a_loadable_pruned_model(sparsenet_cli, tmp_path):
    run_dir = tmp_path / "run"
    # A proximal group lasso strong enough to zero part of fc1 on the learnable synthetic data
    # (2 epochs, 64 steps), weak enough that the network still learns.
    proc = sparsenet_cli(
        "experiment=smoke",
        "regularizer.proximal=true",
        "regularizer.strength=0.015",
        "train.epochs=2",
        "dataset.train_size=2048",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test acc" in proc.stdout  # the closing summary line

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert list(metrics["stages"]) == ["train", "prune", "finetune"]
    for stage in metrics["stages"].values():
        assert STAGE_KEYS <= stage.keys()
        assert 0 <= stage["test_acc"] <= 100 and stage["nonzero_params"] <= stage["params"]
        for layer in stage["layers"]:
            assert 1 <= layer["units_kept"] <= layer["units_total"]
    train, prune = metrics["stages"]["train"], metrics["stages"]["prune"]
    # Dense LeNet-5 on 1x28x28: 431,080 params; conv1 20 -> conv2 50 -> fc1 500 -> fc2 10.
    assert train["params"] == 431_080
    assert [layer["units_total"] for layer in train["layers"]] == [20, 50, 500, 10]
    assert prune["params"] < train["params"] and prune["macs"] < train["macs"]
    kept = [layer["units_kept"] for layer in prune["layers"]]
    assert kept[-1] == 10 and sum(kept) < 580
    assert metrics["stages"]["finetune"]["test_acc"] >= 90  # 10 well-separated prototypes

    model = load_pruned(run_dir / "model")
    assert [
        m.weight.shape[0]
        for m in model.modules()
        if hasattr(m, "weight") and isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ] == kept
    assert sum(p.numel() for p in model.parameters()) == metrics["stages"]["finetune"]["params"]
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert (run_dir / "history.csv").read_text().startswith("stage,epoch")

    # The run's own log file records what happened: epochs, what the prune stage removed per
    # layer (fc1 lost 500 - kept[2] units), and, on the same command again, the resume decision.
    log = (run_dir / "cli.log").read_text()
    assert "[train] epoch 2/2" in log and "[finetune] epoch 1/1" in log
    assert f"prune: fc1 loses {500 - kept[2]} units" in log
    again = sparsenet_cli(*proc.args[3:], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already completed with this config" in (run_dir / "cli.log").read_text()


@pytest.mark.slow
def test_multirun_sweeps_the_strength(sparsenet_cli, tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = sparsenet_cli(
        "-m",
        "experiment=smoke",
        "regularizer.strength=0,1e-3",
        "finetune.epochs=0",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    strengths = sorted(
        json.loads(p.read_text())["config"]["regularizer"]["strength"]
        for p in sweep_dir.glob("*/metrics.json")
    )
    assert strengths == [0.0, 1e-3]


def test_missing_data_fails_with_a_clear_message(sparsenet_cli, tmp_path):
    proc = sparsenet_cli("train.epochs=1", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert str(tmp_path / "no-data-here") in proc.stderr and "SPARSENET_DATA" in proc.stderr
    assert "dataset.download=true" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_value_is_named_without_a_traceback(sparsenet_cli, tmp_path):
    proc = sparsenet_cli("experiment=smoke", "train.device=gpu", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "sparsenet: error: train.device='gpu' is not a device; allowed: auto, cpu, cuda, cuda:N"
    )


def test_list_prints_the_config_choices(sparsenet_cli, tmp_path):
    proc = sparsenet_cli("list", cwd=tmp_path)
    assert proc.returncode == 0
    assert "lenet5" in proc.stdout and "group_lasso" in proc.stdout and "mnist" in proc.stdout


@pytest.mark.slow
def test_gpu_settings_compose_and_run_on_cpu(sparsenet_cli, tmp_path):
    """train.amp (bfloat16 autocast on CPU), channels_last and torch.compile, all at once."""
    run_dir = tmp_path / "run"
    proc = sparsenet_cli(
        "experiment=smoke",
        "train.amp=true",
        "train.channels_last=true",
        "train.compile=true",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["config"]["train"]["amp"] is True and metrics["status"] == "completed"
