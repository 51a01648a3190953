"""Files that are not what sparsenet wrote, and writes that cannot finish (issue 18):

- a `model/` folder whose spec asks for other widths than its state dict holds, or for widths
  wider than the model's, is refused (one CheckpointError line: the file, the layer, both
  shapes) before anything of the asked size is built; so is a malformed spec;
- a run checkpoint that loads but lacks a key or holds a tensor of another shape is found by
  `check_run_checkpoint`, and `set_aside_checkpoint` moves it out of the run's way;
- a disk that fills up while a checkpoint is written is one OutputError line, the previous
  file intact and no temporary file left;
- atomically written files get the permissions a plain open() gives (0666 & ~umask).

The functions are looked up on their modules inside each test, so that each test fails on its
own on code without them."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import stat
import tempfile
import time
from pathlib import Path

import pytest
import torch

import sparsenet.checkpoint as ckpt
import sparsenet.runtime as runtime
from sparsenet.errors import CheckpointError, OutputError
from sparsenet.models import get_model
from sparsenet.pipeline import run_experiment

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENFORCE_FAIL = (
    "[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file "
    "data/0: file write failed"
)


def _one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message and message, message
    return message


# --- model/ folders ---------------------------------------------------------------------------


def _saved_lenet5(folder: Path) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = get_model("lenet5").eval()
    kwargs = {"name": "lenet5", "num_classes": 10, "input_shape": [1, 28, 28]}
    ckpt.save_pruned(model, folder, kwargs)
    return model, torch.randn(2, 1, 28, 28)


def _edit_spec(folder: Path, edit) -> Path:
    path = folder / ckpt.SPEC_FILE
    spec = json.loads(path.read_text())
    edit(spec)
    path.write_text(json.dumps(spec))
    return path


def test_a_small_spec_asking_for_huge_widths_is_refused_before_allocating(tmp_path):
    _saved_lenet5(tmp_path)

    def widen(spec):
        spec["layers"]["fc1"]["out_features"] = 1_000_000  # 3.2 GB of weights
        spec["layers"]["fc2"]["in_features"] = 1_000_000

    spec_path = _edit_spec(tmp_path, widen)
    assert spec_path.stat().st_size < 1500
    started = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        ckpt.load_pruned(tmp_path)
    assert time.perf_counter() - started < 2.0
    message = _one_line(info.value)
    assert message.startswith(f"{spec_path}: layer 'fc1' ")
    assert "(1000000, 800)" in message and "(500, 800)" in message


def test_a_spec_whose_widths_disagree_with_the_state_dict_is_refused(tmp_path):
    _saved_lenet5(tmp_path)
    spec_path = _edit_spec(tmp_path, lambda s: s["layers"]["conv2"].update(out_channels=40))
    with pytest.raises(CheckpointError) as info:
        ckpt.load_pruned(tmp_path)
    message = _one_line(info.value)
    assert str(tmp_path / ckpt.WEIGHTS_FILE) in message and str(spec_path) in message
    assert "conv2.weight" in message
    assert "(40, 20, 5, 5)" in message and "(50, 20, 5, 5)" in message


def test_huge_builder_arguments_never_build_the_dense_model(tmp_path):
    """The spec's builder kwargs ask for a 10^12-unit dense layer (3 PB); the layers and the
    state dict agree on 8 units: the model is built at the state dict's size only."""
    torch.manual_seed(0)
    model = get_model("mlp", hidden=[8, 8]).eval()
    ckpt.save_pruned(model, tmp_path, {"name": "mlp", "hidden": [8, 8]})
    _edit_spec(tmp_path, lambda s: s["model"].update(hidden=[10**12, 8]))
    started = time.perf_counter()
    loaded = ckpt.load_pruned(tmp_path)
    assert time.perf_counter() - started < 2.0
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert all(p.device.type == "cpu" and p.requires_grad for p in loaded.parameters())


def test_narrowing_a_live_model_refuses_a_wider_layer_before_allocating():
    """run._restore narrows the run's model to its checkpoint's spec the same way."""
    model = get_model("lenet5")
    layers = ckpt.shape_spec(model)
    layers["fc1"]["out_features"] = 10**9  # 3.2 TB
    with pytest.raises(CheckpointError) as info:
        ckpt.narrow_to_spec(model, layers, source="run/checkpoint.pt")
    message = _one_line(info.value)
    assert message.startswith("run/checkpoint.pt: layer 'fc1' asks for weight (1000000000, 800)")
    assert tuple(model.fc1.weight.shape) == (500, 800)  # nothing narrowed


def _truncate(path: Path) -> None:
    path.write_text(path.read_text()[:60])


BAD_SPECS = {
    "truncated JSON": _truncate,
    "not UTF-8": lambda p: p.write_bytes(b"\xff\xfe\x00garbage"),
    "a list, not an object": lambda p: p.write_text("[1, 2]"),
    "layers is a list": lambda p: _edit_spec(p.parent, lambda s: s.update(layers=[1])),
    "no model name": lambda p: _edit_spec(p.parent, lambda s: s.update(model={})),
    "unknown model": lambda p: _edit_spec(p.parent, lambda s: s["model"].update(name="nope")),
    "bad builder argument": lambda p: _edit_spec(
        p.parent, lambda s: s["model"].update(num_classes="ten")
    ),
    "width is a string": lambda p: _edit_spec(
        p.parent, lambda s: s["layers"]["fc1"].update(out_features="500")
    ),
    "width is negative": lambda p: _edit_spec(
        p.parent, lambda s: s["layers"]["fc1"].update(out_features=-5)
    ),
    "width is a bool": lambda p: _edit_spec(
        p.parent, lambda s: s["layers"]["conv1"].update(in_channels=True)
    ),
    "bias is not a bool": lambda p: _edit_spec(
        p.parent, lambda s: s["layers"]["fc1"].update(bias="yes")
    ),
    "groups do not divide": lambda p: _edit_spec(
        p.parent, lambda s: s["layers"]["conv2"].update(groups=3)
    ),
    "unknown layer type": lambda p: _edit_spec(
        p.parent, lambda s: s["layers"]["conv1"].update(type="Conv3d")
    ),
    "layer not in the model": lambda p: _edit_spec(
        p.parent, lambda s: s["layers"].update(fc9=s["layers"]["fc1"])
    ),
    "format is a string": lambda p: _edit_spec(p.parent, lambda s: s.update(format="2")),
}


@pytest.mark.parametrize("damage", BAD_SPECS, ids=list(BAD_SPECS))
def test_a_malformed_spec_is_one_clear_error(tmp_path, damage):
    _saved_lenet5(tmp_path)
    spec_path = tmp_path / ckpt.SPEC_FILE
    BAD_SPECS[damage](spec_path)
    with pytest.raises(CheckpointError) as info:
        ckpt.load_pruned(tmp_path)
    assert _one_line(info.value).startswith(f"{spec_path}: ")


# --- run checkpoints ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_checkpoints(compose_cfg, tmp_path_factory) -> list[bytes]:
    """Every checkpoint a short smoke run writes (mid-stage ones with optimizer states and
    the stage ends), as the bytes written."""
    recorded: list[bytes] = []
    real_save = torch.save

    def recording_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "config_hash" in obj:
            buffer = io.BytesIO()
            real_save(obj, buffer)
            recorded.append(buffer.getvalue())
        return real_save(obj, f, *args, **kwargs)

    cfg = compose_cfg(
        "experiment=smoke", "train.epochs=1", "finetune.epochs=1", "train.num_threads=1"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "save", recording_save)
        assert run_experiment(cfg, tmp_path_factory.mktemp("run"))["status"] == "completed"
    assert len(recorded) >= 4
    return recorded


def _load(data: bytes, tmp_path: Path, name: str = "checkpoint.pt") -> tuple[dict, Path]:
    path = tmp_path / name
    path.write_bytes(data)
    return runtime.safe_torch_load(path), path


def test_the_checkpoints_of_a_run_pass_the_check(run_checkpoints, tmp_path):
    for data in run_checkpoints:
        state, path = _load(data, tmp_path)
        ckpt.check_run_checkpoint(state, path)
        ckpt.check_run_checkpoint(state, path, model=get_model("lenet5"))
    assert any(_load(d, tmp_path)[0]["stage_epoch"] > 0 for d in run_checkpoints)


@pytest.mark.parametrize("key", ["rng", "model_state", "history", "stage_index", "optimizer"])
def test_a_run_checkpoint_missing_a_key_is_refused(run_checkpoints, tmp_path, key):
    mid_stage = [d for d in run_checkpoints if _load(d, tmp_path)[0]["stage_epoch"] > 0]
    state, path = _load(mid_stage[0], tmp_path)
    del state[key]
    with pytest.raises(CheckpointError) as info:
        ckpt.check_run_checkpoint(state, path)
    message = _one_line(info.value)
    assert message.startswith(f"{path}: ") and f"'{key}'" in message


def test_a_run_checkpoint_with_a_wrong_shape_or_missing_tensor_is_refused(
    run_checkpoints, tmp_path
):
    state, path = _load(run_checkpoints[-1], tmp_path)
    state["model_state"]["fc1.weight"] = torch.zeros(7, 800)
    del state["model_state"]["conv2.bias"]
    with pytest.raises(CheckpointError) as info:
        ckpt.check_run_checkpoint(state, path)
    message = _one_line(info.value)
    assert message.startswith(f"{path}: ")
    assert "fc1.weight" in message and "(7, 800)" in message
    assert f"({state['model_spec']['fc1']['out_features']}, 800)" in message
    assert "conv2.bias" in message


def test_a_run_checkpoint_that_does_not_fit_the_model_is_refused(run_checkpoints, tmp_path):
    state, path = _load(run_checkpoints[0], tmp_path)
    with pytest.raises(CheckpointError, match="conv1"):
        ckpt.check_run_checkpoint(state, path, model=get_model("mlp"))
    for bad in ([1, 2], {"config_hash": 3}):
        with pytest.raises(CheckpointError):
            ckpt.check_run_checkpoint(bad, path)


def test_an_unusable_checkpoint_is_set_aside_with_a_warning(tmp_path, caplog):
    path = tmp_path / "checkpoint.pt"
    for content in (b"first", b"second"):  # a second one replaces the first .bad
        path.write_bytes(content)
        with caplog.at_level(logging.WARNING):
            moved = ckpt.set_aside_checkpoint(path, "lacks 'rng'")
        assert moved == tmp_path / "checkpoint.pt.bad" and moved.read_bytes() == content
        assert not path.exists()
    assert str(path) in caplog.text and str(moved) in caplog.text and "lacks 'rng'" in caplog.text


# --- a full disk -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (RuntimeError(ENFORCE_FAIL), "PytorchStreamWriter failed writing file data/0"),
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), os.strerror(errno.ENOSPC)),
    ],
    ids=["torch-writer", "ENOSPC"],
)
def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(
    tmp_path, monkeypatch, error, reason
):
    path = tmp_path / "checkpoint.pt"
    runtime.atomic_torch_save({"epoch": torch.tensor(1)}, path)
    before = path.read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise error

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OutputError) as info:
        runtime.atomic_torch_save({"epoch": torch.tensor(2)}, path)
    message = _one_line(info.value)
    assert message.startswith(f"cannot write {path}: {reason}")
    assert "enforce fail" not in message
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_really_full_device_names_the_reason(tmp_path, monkeypatch):
    """torch's writer swallows the OSError of a full device and fails later on its own
    (`unexpected pos`): the reason still reaches the message."""
    real_mkstemp = tempfile.mkstemp

    def mkstemp_on_a_full_device(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"previous")
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_on_a_full_device)
    with pytest.raises(OutputError) as info:
        runtime.atomic_torch_save({"w": torch.zeros(100_000)}, path)
    assert _one_line(info.value).startswith(
        f"cannot write {path}: {os.strerror(errno.ENOSPC)}; its previous version"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert path.read_bytes() == b"previous"


def test_other_errors_of_the_writer_are_not_disguised(tmp_path, monkeypatch):
    def broken_save(obj, f, *args, **kwargs):
        raise RuntimeError("a bug, not a disk")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="a bug, not a disk"):
        runtime.atomic_torch_save({}, tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []


# --- permissions -------------------------------------------------------------------------------


@pytest.fixture
def umask():
    """umask(mask) sets the process umask for the test; the previous one is put back."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


@pytest.mark.parametrize(
    ("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)], ids=["022", "077", "002"]
)
def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path, umask, mask, mode):
    umask(mask)
    with open(tmp_path / "plain", "w"):
        pass
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == mode  # the reference
    runtime.atomic_write_json(tmp_path / "metrics.json", {"a": 1})
    runtime.atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "checkpoint.pt")
    replaced = tmp_path / "replaced.bin"
    replaced.write_bytes(b"old")
    replaced.chmod(0o600)
    runtime.atomic_write_bytes(replaced, b"new")
    for name in ("metrics.json", "checkpoint.pt", "replaced.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
