"""logger=tensorboard / mlflow: each writes what it promises, read back with the backend's own
reader (TensorBoard's EventAccumulator, MLflow's client); a resumed run keeps one tracking
record; a dead tracking server costs one warning; the logger is no part of a run's identity."""

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from sparsenet.errors import ConfigError
from sparsenet.pipeline import run as run_module
from sparsenet.pipeline import stages
from sparsenet.pipeline.distributed import Ranks
from sparsenet.pipeline.resume import config_hash, run_dirname
from sparsenet.pipeline.settings import parse_config

pytest.importorskip("tensorboard")
mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 256 training samples in batches of 64: 4 optimizer steps per epoch, 2 + 1 epochs = 12 steps.
STEPS_PER_EPOCH = 4
SHAPE = ("dataset.train_size=256", "train.epochs=2", "finetune.epochs=1")


def run(compose_cfg, quick_smoke, run_dir: Path, *overrides: str) -> dict:
    cfg = compose_cfg(*quick_smoke, *SHAPE, *overrides)
    return run_module.run_experiment(cfg, run_dir)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """One local MLflow store for the module (creating its tables takes seconds); each test
    has an experiment of its own."""
    return tmp_path_factory.mktemp("mlruns")


# A loaded machine can take a minute to create the store's tables: the tests wait for the
# logger's thread rather than read the store while it still writes.
PATIENT = "logger.mlflow.close_timeout_s=600"


def mlflow_overrides(store: Path, experiment: str) -> tuple[str, ...]:
    return (
        "logger.mlflow.every_n_steps=3",
        f"logger.mlflow.local_dir={store}",
        f"logger.mlflow.experiment={experiment}",
        PATIENT,
    )


def scalars(folder: Path) -> dict[str, list]:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    return {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}


def history(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "history.csv")


def only_run(client: MlflowClient, experiment: str):
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(found) == 1
    return found[0]


def test_tensorboard_writes_steps_epochs_units_and_hparams(compose_cfg, quick_smoke, tmp_path):
    # Every unit scores below this threshold: the share logged is 1 and pruning keeps
    # min_units = 1 unit per hidden layer, values known without the logger.
    run_dir = tmp_path / "run"
    metrics = run(
        compose_cfg,
        quick_smoke,
        run_dir,
        "logger=tensorboard",
        "logger.tensorboard.every_n_steps=5",
        "prune.threshold=1e9",
    )
    points = scalars(run_dir / "tensorboard")
    assert [p.step for p in points["step/loss"]] == [5, 10]  # 12 steps, every 5th
    assert len(points["step/lr"]) == 2
    assert [p.step for p in points["step/reg"]] == [5]  # fine-tuning is not regularized
    epochs = points["epoch/test_acc"]
    assert [p.step for p in epochs] == [4, 8, 12]  # global steps at each epoch's end
    assert [p.value for p in epochs] == pytest.approx(history(run_dir)["test_acc"].tolist())
    # Regularized: the train epochs; not the fine-tuning (finetune.regularize=false).
    assert [p.step for p in points["epoch/strength"]] == [4, 8]
    assert points["epoch/strength"][0].value == pytest.approx(1e-3)
    assert [p.value for p in points["epoch/units_below_threshold"]] == [1.0, 1.0, 1.0]
    layers = metrics["stages"]["prune"]["layers"]
    assert {layer["name"]: layer["units_kept"] for layer in layers} == {
        "conv1": 1,
        "conv2": 1,
        "fc1": 1,
        "fc2": 10,
    }
    for layer in layers:
        assert points[f"prune/units/{layer['name']}"][0].value == layer["units_kept"]
    final = points["final/test_acc"]
    assert [p.value for p in final] == pytest.approx([metrics["summary"]["test_acc"]])

    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")
    starts = [
        plugin_data_pb2.HParamsPluginData.FromString(c).session_start_info for c in content.values()
    ]
    hparams = next(s.hparams for s in starts if s.hparams)
    assert hparams["train.epochs"].number_value == 2
    assert hparams["regularizer.structure"].string_value == "out"
    assert hparams["status"].string_value == "completed"


def test_mlflow_writes_params_metrics_and_artifacts(compose_cfg, quick_smoke, tmp_path, store):
    run_dir = tmp_path / "run"
    overrides = ("logger.mlflow.every_n_steps=3", f"logger.mlflow.local_dir={store}", PATIENT)
    metrics = run(compose_cfg, quick_smoke, run_dir, "logger=mlflow", *overrides)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = MlflowClient(uri)
    tracked = only_run(client, "smoke")  # the experiment is the study's name
    run_id = tracked.info.run_id
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == "run"
    assert json.loads((run_dir / "mlflow_run.json").read_text()) == {
        f"sqlite:///{store / 'mlflow.db'}": run_id
    }
    params = tracked.data.params
    assert params["train.epochs"] == "2" and params["regularizer.strength"] == "0.001"
    assert "dataset.root" not in params and not any(k.startswith("logger.") for k in params)
    steps = client.get_metric_history(run_id, "step/loss")
    assert sorted(m.step for m in steps) == [3, 6, 9, 12]
    test_acc = sorted(client.get_metric_history(run_id, "epoch/test_acc"), key=lambda m: m.step)
    assert [m.step for m in test_acc] == [4, 8, 12]
    assert [m.value for m in test_acc] == pytest.approx(history(run_dir)["test_acc"].tolist())
    assert tracked.data.metrics["final/test_acc"] == pytest.approx(metrics["summary"]["test_acc"])
    kept = {layer["name"]: layer["units_kept"] for layer in metrics["stages"]["finetune"]["layers"]}
    for layer, units in kept.items():
        assert tracked.data.metrics[f"finetune/units/{layer}"] == units

    listed = {a.path for a in client.list_artifacts(run_id)}
    assert {"metrics.json", "history.csv", "summary.txt", "model"} <= listed
    assert {a.path for a in client.list_artifacts(run_id, "model")} >= {
        "model/model_spec.json",
        "model/model_state.pt",
    }
    copy = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="metrics.json", dst_path=str(tmp_path), tracking_uri=uri
        )
    )
    assert json.loads(copy.read_text()) == json.loads((run_dir / "metrics.json").read_text())


def test_config_keys_mlflow_refuses_are_renamed(store):
    from sparsenet.loggers.mlflow import mlflow_key

    # A layer pattern of regularizer.layers becomes part of a parameter's name.
    names = {k: mlflow_key(k) for k in ("regularizer.layers.<output>", "regularizer.layers.fc*")}
    assert names == {
        "regularizer.layers.<output>": "regularizer.layers._output_",
        "regularizer.layers.fc*": "regularizer.layers.fc_",
    }
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("names")).info.run_id
    for name in names.values():
        client.log_param(run_id, name, "null")  # MLflow refuses the original names
    assert set(client.get_run(run_id).data.params) == set(names.values())


@pytest.mark.slow
def test_a_resumed_run_keeps_one_tracking_record(
    compose_cfg, quick_smoke, tmp_path, store, monkeypatch
):
    """Killed after its second epoch's steps were logged but before that epoch's checkpoint:
    the continued run adds to the same MLflow run and TensorBoard folder, one point per step."""
    run_dir = tmp_path / "run"
    overrides = (
        "logger=[tensorboard,mlflow]",
        "logger.tensorboard.every_n_steps=3",
        *mlflow_overrides(store, "resumed"),
    )
    real_epoch = stages.train_epoch
    calls = []

    def killed_in_second_epoch(*args, **kwargs):
        figures = real_epoch(*args, **kwargs)  # its steps are logged
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return figures

    monkeypatch.setattr(stages, "train_epoch", killed_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run(compose_cfg, quick_smoke, run_dir, *overrides)
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    assert only_run(client, "resumed").info.status == "KILLED"
    monkeypatch.undo()

    metrics = run(compose_cfg, quick_smoke, run_dir, *overrides)
    tracked = only_run(client, "resumed")
    assert tracked.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(tracked.info.run_id, "step/loss")]
    assert sorted(steps) == [3, 6, 9, 12]
    epochs = [m.step for m in client.get_metric_history(tracked.info.run_id, "epoch/test_acc")]
    assert sorted(epochs) == [4, 8, 12]

    points = scalars(run_dir / "tensorboard")
    assert [p.step for p in points["step/loss"]] == [3, 6, 9, 12]
    assert [p.step for p in points["epoch/test_acc"]] == [4, 8, 12]
    assert [p.value for p in points["epoch/test_acc"]] == pytest.approx(
        history(run_dir)["test_acc"].tolist()
    )
    assert metrics["status"] == "completed"


def test_an_unreachable_tracking_server_is_one_warning(
    compose_cfg, quick_smoke, tmp_path, monkeypatch, caplog
):
    # One quick retry: urllib3 warns about it, which must not reach the run's log.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    caplog.set_level(logging.WARNING)
    metrics = run(
        compose_cfg,
        quick_smoke,
        tmp_path / "run",
        "logger=mlflow",
        "logger.mlflow.tracking_uri=http://127.0.0.1:9",  # the discard port: nothing listens
        "logger.mlflow.every_n_steps=1",
    )
    assert metrics["status"] == "completed"
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "logger mlflow disabled" in warnings[0].getMessage()


def test_a_backend_failing_mid_run_is_one_warning(
    compose_cfg, quick_smoke, tmp_path, monkeypatch, caplog
):
    """A full disk under TensorBoard's writer at the second epoch's end: the logger is
    dropped with one warning, the run completes, what was written stays readable."""
    import errno

    from sparsenet.loggers.tensorboard import TensorBoardLogger

    real_flush, flushes = TensorBoardLogger.flush, []

    def flush_until_the_disk_is_full(self):
        flushes.append(1)
        if len(flushes) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_flush(self)

    monkeypatch.setattr(TensorBoardLogger, "flush", flush_until_the_disk_is_full)
    caplog.set_level(logging.WARNING)
    run_dir = tmp_path / "run"
    metrics = run(compose_cfg, quick_smoke, run_dir, "logger=tensorboard")
    assert metrics["status"] == "completed" and (run_dir / "model").is_dir()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "No space left on device" in warnings[0], warnings
    assert len(flushes) == 2  # nothing more was asked of the dropped backend
    # The first epoch's point was flushed; the second's reached TensorBoard's own writer
    # before the failed flush (it may be on disk); the last was never handed over.
    steps = [p.step for p in scalars(run_dir / "tensorboard")["epoch/test_acc"]]
    assert steps in ([4], [4, 8])


@pytest.mark.slow
def test_another_logger_is_the_same_run_and_a_completed_run_is_logged_from_its_files(
    compose_cfg, quick_smoke, tmp_path, store
):
    csv_cfg = compose_cfg(*quick_smoke, "logger=csv")
    traced = compose_cfg(*quick_smoke, "logger=[tensorboard,mlflow]")
    assert config_hash(parse_config(csv_cfg).config) == config_hash(parse_config(traced).config)
    assert run_dirname(["seed=1", "logger=[tensorboard,mlflow]", "logger.mlflow.local_dir=x"]) == (
        "seed=1"
    )

    run_dir = tmp_path / "run"
    traced = ("logger=[tensorboard,mlflow]", *mlflow_overrides(store, "replayed"))
    first = run(compose_cfg, quick_smoke, run_dir)  # csv only
    assert not (run_dir / "tensorboard").exists()
    again = run(compose_cfg, quick_smoke, run_dir, *traced)
    assert again == first  # skipped: nothing trained again
    points = scalars(run_dir / "tensorboard")
    assert [p.step for p in points["epoch/test_acc"]] == [4, 8, 12]
    assert [p.value for p in points["epoch/test_acc"]] == pytest.approx(
        history(run_dir)["test_acc"].tolist()
    )
    assert "step/loss" not in points  # no file keeps per-step values
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    tracked = only_run(client, "replayed")
    assert tracked.data.metrics["final/test_acc"] == pytest.approx(first["summary"]["test_acc"])

    # Once recorded, a third run of the command adds nothing.
    events = sorted((run_dir / "tensorboard").iterdir())
    run(compose_cfg, quick_smoke, run_dir, *traced)
    assert sorted((run_dir / "tensorboard").iterdir()) == events
    assert only_run(client, "replayed").info.run_id == tracked.info.run_id

    # resume=false runs it again: a new MLflow run supersedes the old one (soft-deleted).
    run(compose_cfg, quick_smoke, run_dir, *traced, "resume=false")
    assert only_run(client, "replayed").info.run_id != tracked.info.run_id
    assert client.get_run(tracked.info.run_id).info.lifecycle_stage == "deleted"


def test_logging_does_not_change_what_a_run_computes(compose_cfg, quick_smoke, tmp_path):
    plain = run(compose_cfg, quick_smoke, tmp_path / "a")
    traced = run(
        compose_cfg,
        quick_smoke,
        tmp_path / "b",
        "logger=tensorboard",
        "logger.tensorboard.every_n_steps=1",
    )
    for stage, figures in plain["stages"].items():
        for key in ("test_acc", "params", "nonzero_params", "layers"):
            assert traced["stages"][stage][key] == figures[key], (stage, key)
    assert (
        history(tmp_path / "a")
        .drop(columns="lr")
        .equals(history(tmp_path / "b").drop(columns="lr"))
    )


def test_only_rank_0_logs(compose_cfg, quick_smoke, tmp_path):
    from sparsenet.loggers import open_loggers

    settings = parse_config(compose_cfg(*quick_smoke, "logger=tensorboard"))
    ctx = SimpleNamespace(settings=settings, ranks=Ranks(1, 1, 2), run_dir=tmp_path)
    with open_loggers(ctx, resumed=False) as loggers:
        assert not loggers and loggers.steps(ctx, None) is None
    assert not (tmp_path / "tensorboard").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ("logger=tensorboard", "logger.tensorboard.every_n_steps=0"),
            "logger.tensorboard.every_n_steps=0 is out of range; allowed: an integer >= 1",
        ),
        (
            ("+logger.mlflow.tracking_uri=http://x",),
            "logger.mlflow has no local_dir: its keys apply once the logger is chosen; "
            "allowed: logger=mlflow (or logger=[...,mlflow]) before logger.mlflow.* overrides",
        ),
    ],
)
def test_bad_logger_settings_are_one_line(compose_cfg, quick_smoke, overrides, message):
    with pytest.raises(ConfigError) as refused:
        parse_config(compose_cfg(*quick_smoke, *overrides))
    assert str(refused.value) == message


def test_a_logger_without_its_package_names_the_extra(compose_cfg, quick_smoke, monkeypatch):
    import sparsenet.loggers as loggers

    real = loggers.importlib.util.find_spec
    monkeypatch.setattr(
        loggers.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mlflow" else real(name, *a),
    )
    with pytest.raises(ConfigError) as refused:
        parse_config(compose_cfg(*quick_smoke, "logger=[tensorboard,mlflow]"))
    assert str(refused.value) == (
        "logger='mlflow' needs the mlflow package, which is not installed; allowed: "
        'pip install "sparsenet[mlflow]" (from a checkout: pip install -e ".[mlflow]"), '
        "or another logger"
    )


def test_a_sweeps_summary_files_go_to_one_mlflow_run(tmp_path, store):
    from sparsenet.config.schema import MlflowLoggerConfig
    from sparsenet.loggers.sweep import RUN_NAME, log_sweep_summary

    sweep = tmp_path / "sweep"
    (sweep / "seed=0").mkdir(parents=True)
    for name in ("summary.csv", "summary.md", "summary.tex", "failed.csv"):
        (sweep / name).write_text(name)
    (sweep / "multirun.yaml").write_text("not a summary")
    options = MlflowLoggerConfig(
        tracking_uri=None,
        local_dir=str(store),
        experiment="swept",
        every_n_steps=1,
        close_timeout_s=1.0,
    )
    first = log_sweep_summary(sweep, options)
    (sweep / "summary.md").write_text("updated")
    assert log_sweep_summary(sweep, options) == first  # the same sweep: the same MLflow run
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    tracked = only_run(client, "swept")
    assert tracked.info.run_name == RUN_NAME
    assert {a.path for a in client.list_artifacts(first)} == {
        "summary.csv",
        "summary.md",
        "summary.tex",
        "failed.csv",
    }
    copy = mlflow.artifacts.download_artifacts(
        run_id=first,
        artifact_path="summary.md",
        dst_path=str(tmp_path / "copy"),
        tracking_uri=f"sqlite:///{store / 'mlflow.db'}",
    )
    assert Path(copy).read_text() == "updated"
