"""Pruned checkpoints: shape spec + state_dict + config + metrics; loading rebuilds the narrow
model (FoldedConv2d included) without unpickling code and gives identical outputs; ONNX export
of a pruned model matches PyTorch (when the `onnx` extra is installed)."""

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from sparsenet.checkpoint import (
    SPEC_FILE,
    WEIGHTS_FILE,
    export_onnx,
    load_pruned,
    load_run_info,
    onnx_max_abs_diff,
    save_pruned,
)
from sparsenet.errors import CheckpointError
from sparsenet.models import get_model, list_models
from sparsenet.pipeline import run_experiment
from sparsenet.pipeline.resume import config_hash
from sparsenet.pruning import FoldedConv2d, PruneSettings, prune_units

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _input_shape(name: str) -> tuple[int, int, int]:
    return (3, 32, 32) if name.startswith(("vgg", "resnet")) else (1, 28, 28)


def _pruned(name: str):
    """A registry model with half of its units removed (live ones: their means are folded, so
    padded convs become FoldedConv2d), and the builder kwargs to rebuild it."""
    torch.manual_seed(0)
    shape = _input_shape(name)
    kwargs = {"name": name, "num_classes": 10, "input_shape": list(shape)}
    model = get_model(name, num_classes=10, input_shape=shape).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.uniform_(-0.2, 0.5)
    x = torch.randn(4, *shape)
    prune_units(
        model, x[:1], PruneSettings(criterion="ratio", ratio=0.5, target="units"), calibration=x
    )
    return model, kwargs, x


def _module_types(model: nn.Module) -> dict[str, str]:
    return {n: type(m).__name__ for n, m in model.named_modules() if n}


@pytest.mark.parametrize("name", list_models())
def test_save_load_round_trip_gives_identical_outputs(name, tmp_path):
    model, kwargs, x = _pruned(name)
    config = {"model": kwargs, "prune": {"criterion": "ratio"}}
    metrics = {"stages": {"prune": {"test_acc": 12.5}}}

    save_pruned(model, tmp_path / "model", kwargs, config=config, metrics=metrics)
    loaded = load_pruned(tmp_path / "model")

    assert _module_types(loaded) == _module_types(model)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    info = load_run_info(tmp_path / "model")
    assert info == {"model": kwargs, "config": config, "metrics": metrics}
    spec = json.loads((tmp_path / "model" / SPEC_FILE).read_text())
    folded = {n for n, m in model.named_modules() if isinstance(m, FoldedConv2d)}
    assert {n for n, e in spec["layers"].items() if e["type"] == "FoldedConv2d"} == folded
    assert bool(folded) == name.startswith(("vgg", "resnet"))


def test_the_state_file_holds_tensors_only(tmp_path):
    model, kwargs, _ = _pruned("resnet20")
    save_pruned(model, tmp_path, kwargs)
    state = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert any(k.endswith("fold_kernel") for k in state)
    assert load_run_info(tmp_path)["config"] is None


class _Payload:
    """Unpickling this calls Path.touch(marker), as a crafted checkpoint would call os.system:
    a weights-only load must refuse it before calling anything."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_saved_model_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    model, kwargs, _ = _pruned("lenet5")
    save_pruned(model, tmp_path / "model", kwargs)
    weights = tmp_path / "model" / WEIGHTS_FILE
    state = torch.load(weights, weights_only=True)
    torch.save({**state, "fc2.extra": _Payload(marker)}, weights)
    with pytest.raises(CheckpointError) as info:
        load_pruned(tmp_path / "model")
    assert str(info.value).startswith(f"refusing to load {weights}: ")
    assert not marker.exists()
    torch.load(weights, weights_only=False)  # the control: a plain load runs the payload
    assert marker.exists()


def test_a_run_checkpoint_that_would_run_code_is_refused_on_resume(
    tmp_path, sparsenet_cli, compose_cfg
):
    marker = tmp_path / "code-ran"
    cfg = compose_cfg("experiment=smoke")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    checkpoint = run_dir / "checkpoint.pt"
    state = {"config_hash": config_hash(cfg), "stage_index": 0, "stage_epoch": 1}
    torch.save({**state, "history": [_Payload(marker)]}, checkpoint)
    with pytest.raises(CheckpointError, match=f"^refusing to load {checkpoint}: ") as info:
        run_experiment(cfg, run_dir)
    assert not marker.exists()
    record = json.loads((run_dir / "metrics.json").read_text())  # for a sweep's summary
    assert record == {"status": "error", "error": str(info.value)}

    # The same command resumes through the CLI: one line naming the file, status 2.
    proc = sparsenet_cli("experiment=smoke", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"sparsenet: error: refusing to load {checkpoint}: ")
    assert proc.stderr.count("\n") == 1
    assert not marker.exists() and checkpoint.exists()  # left for the user to inspect


def test_specs_written_before_folded_convs_still_load(tmp_path):
    model, kwargs, x = _pruned("lenet5")  # no padding: no FoldedConv2d, a format-1 spec
    save_pruned(model, tmp_path, kwargs)
    spec_path = tmp_path / SPEC_FILE
    spec = json.loads(spec_path.read_text())
    del spec["format"]
    spec_path.write_text(json.dumps(spec))
    with torch.no_grad():
        assert torch.equal(load_pruned(tmp_path)(x), model(x))

    spec["format"] = 99
    spec_path.write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match="spec format 99 is newer"):
        load_pruned(tmp_path)


@pytest.mark.parametrize("name", ["resnet20", "lenet5"])
def test_onnx_export_of_a_pruned_model_matches_pytorch(name, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model, kwargs, _ = _pruned(name)
    shape = tuple(kwargs["input_shape"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_onnx(model, tmp_path / "model.onnx", shape)
    x = torch.randn(3, *shape)  # another batch size than the export example's
    with torch.no_grad():
        scale = float(model(x).abs().max())
    assert onnx_max_abs_diff(path, model, x) <= 1e-4 * max(1.0, scale)
