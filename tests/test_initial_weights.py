"""`model.weights`: a run starts from a state_dict file or from another run's saved network."""

from __future__ import annotations

import os

import pytest
import torch

from sparsenet.errors import CheckpointError, ConfigError
from sparsenet.models import get_model
from sparsenet.pipeline import run_experiment


def _saved_state(run_dir):
    return torch.load(run_dir / "model" / "model_state.pt", weights_only=True)


def test_a_state_dict_file_is_the_starting_point(tmp_path, compose_cfg, quick_smoke):
    torch.manual_seed(123)
    start = get_model("lenet5").state_dict()  # weights no run's seed would draw
    torch.save(start, tmp_path / "start.pt")
    cfg = compose_cfg(
        *quick_smoke, "stages=[train]", "train.epochs=0", f"model.weights={tmp_path}/start.pt"
    )
    metrics = run_experiment(cfg, tmp_path / "run")
    assert metrics["status"] == "completed"
    saved = _saved_state(tmp_path / "run")
    for key, tensor in start.items():  # no training: the network is the file's
        torch.testing.assert_close(saved[key], tensor, rtol=0, atol=0)


def test_another_runs_network_is_the_starting_point(tmp_path, compose_cfg, quick_smoke):
    first = run_experiment(compose_cfg(*quick_smoke, "train.epochs=1"), tmp_path / "first")
    assert first["status"] == "completed"
    # the first run's final network is pruned (narrower): the second starts from it as it is
    cfg = compose_cfg(
        *quick_smoke, "stages=[train]", "train.epochs=0", f"model.weights={tmp_path / 'first'}"
    )
    second = run_experiment(cfg, tmp_path / "second")
    final = first["stages"]["finetune"]
    assert second["stages"]["train"]["params"] == final["params"]
    assert second["stages"]["train"]["test_acc"] == final["test_acc"]


def test_a_shape_mismatch_names_the_layer_and_both_shapes(tmp_path, compose_cfg, quick_smoke):
    state = get_model("lenet5").state_dict()
    state["conv1.weight"] = torch.zeros(3, 1, 5, 5)
    torch.save(state, tmp_path / "bad.pt")
    cfg = compose_cfg(*quick_smoke, f"model.weights={tmp_path}/bad.pt")
    with pytest.raises(ConfigError) as refused:
        run_experiment(cfg, tmp_path / "run")
    assert "conv1.weight: the file has [3, 1, 5, 5], the model [20, 1, 5, 5]" in str(refused.value)
    assert not (tmp_path / "run" / "history.csv").exists()


def test_a_pickle_that_would_run_code_is_refused(tmp_path, compose_cfg, quick_smoke):
    # a global (here a harmless one) that weights_only unpickling does not allow
    torch.save({"conv1.weight": os.getcwd}, tmp_path / "crafted.pt")
    cfg = compose_cfg(*quick_smoke, f"model.weights={tmp_path}/crafted.pt")
    with pytest.raises(CheckpointError, match="is not a loadable state_dict"):
        run_experiment(cfg, tmp_path / "run")


def test_a_missing_path_is_refused_before_any_work(tmp_path, compose_cfg, quick_smoke):
    cfg = compose_cfg(*quick_smoke, f"model.weights={tmp_path}/nowhere.pt")
    with pytest.raises(ConfigError) as refused:
        run_experiment(cfg, tmp_path / "run")
    assert str(refused.value).startswith(f"model.weights='{tmp_path}/nowhere.pt' does not exist")


def test_a_run_folder_typed_unquoted_gets_the_quoted_form_to_copy(
    sparsenet_cli, tmp_path, quick_smoke
):
    folder = "outputs/runs/default/experiment=smoke,seed=1"
    proc = sparsenet_cli(*quick_smoke, f"model.weights={folder}", cwd=tmp_path)
    assert proc.returncode == 2
    assert f"""quote a value with '=' or ',' in it: 'model.weights="{folder}"'""" in proc.stderr
