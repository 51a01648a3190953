"""Bad input fails before any work, with one line naming the key, the value and what is
allowed; random valid input runs or fails cleanly, never with a traceback.

Most rows go through the in-process equivalent of the command line: Hydra composes the
overrides and `run_experiment` runs on them (the code the CLI's task function calls), and the
error becomes its printed line through `sparsenet.cli.user_error_message`, the function the
CLI prints with. A handful of rows go through the real CLI in a subprocess and check that it
prints exactly that line, exits with 2 and shows no traceback.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sparsenet.cli import config_choices, user_error_message
from sparsenet.errors import UserInputError
from sparsenet.pipeline import run_experiment
from sparsenet.pipeline.settings import parse_config

GROUP_LASSO_STRUCTURES = "allowed: out, in, shape, layer, coupled"
LENET5_LAYERS = "layers: conv1, conv2, fc1, fc2"

# (overrides, the line the user must see: key, value and what is allowed)
BAD_INPUTS = [
    # train
    ("train.epochs=-1", "train.epochs=-1 is out of range; allowed: an integer >= 0"),
    ("train.epochs=abc", "train.epochs='abc' must be an integer >= 0"),
    ("train.epochs=1.5", "train.epochs=1.5 must be an integer >= 0"),
    ("train.batch_size=0", "train.batch_size=0 is out of range; allowed: an integer >= 1"),
    (
        "train.eval_batch_size=-5",
        "train.eval_batch_size=-5 is out of range; allowed: an integer >= 1",
    ),
    (
        "train.num_threads=0",
        "train.num_threads=0 is out of range; allowed: null or an integer >= 1",
    ),
    ("train.amp=maybe", "train.amp='maybe' must be true or false"),
    ("train.device=gpu", "train.device='gpu' is not a device; allowed: auto, cpu, cuda, cuda:N"),
    ("train.epoch=3", "train.epoch is not a config key (did you mean train.epochs?)"),
    (
        "+train.warmup=3",
        "train.warmup is not a config key; allowed: amp, batch_size, channels_last, compile,",
    ),
    # optimizer and schedule
    ("optimizer.lr=0", "optimizer.lr=0 is out of range; allowed: a finite number > 0"),
    ("optimizer.lr=-0.1", "optimizer.lr=-0.1 is out of range; allowed: a finite number > 0"),
    ("optimizer.lr=nan", "optimizer.lr=nan must be a finite number > 0"),
    ("optimizer.lr=fast", "optimizer.lr='fast' must be a finite number > 0"),
    ("optimizer.weight_decay=-1", "optimizer.weight_decay=-1 is out of range; allowed: a finite"),
    ("+optimizer.foo=1", "optimizer.foo is not an option of torch.optim.SGD"),
    (
        "optimizer=adam +optimizer.betas=[2.0,0.999]",
        "optimizer (torch.optim.Adam): Invalid beta parameter at index 0: 2.0",
    ),
    (
        "scheduler.name=linear",
        "scheduler.name='linear' is not allowed; allowed: constant, cosine, multistep",
    ),
    ("scheduler=multistep scheduler.gamma=0", "scheduler.gamma=0 is out of range; allowed: a"),
    (
        "scheduler=multistep scheduler.milestones=[0.5,3]",
        "scheduler.milestones=[0.5, 3] must be a list of fractions of the stage, in [0, 1]",
    ),
    # regularizers: their own checks, with the full key of nested parts
    (
        "regularizer.strength=-1",
        "regularizer.strength=-1 is out of range; allowed: a finite number >= 0",
    ),
    ("regularizer.strength=inf", "regularizer.strength=inf must be a finite number >= 0"),
    (
        "regularizer.structure=rows",
        f"regularizer.structure='rows' is not a group structure; {GROUP_LASSO_STRUCTURES}",
    ),
    (
        "regularizer=partial regularizer.beta=0.5",
        "regularizer.beta=0.5 is out of range; allowed: a finite number > 1",
    ),
    (
        "regularizer=sparse_group_lasso regularizer.alpha=1.5",
        "regularizer.alpha=1.5 is out of range; allowed: a finite number >= 0 and <= 1",
    ),
    (
        "regularizer=partial regularizer.inner.structure=rows",
        f"regularizer.inner.structure='rows' is not a group structure; {GROUP_LASSO_STRUCTURES}",
    ),
    (
        "regularizer=sgl_variance regularizer.parts.sgl.alpha=2",
        "regularizer.parts.sgl.alpha=2 is out of range; allowed: a finite number >= 0 and <= 1",
    ),
    (
        "regularizer=sgl_variance regularizer.parts.variance.s0=3",
        "regularizer.parts.variance.s0=3 must be < s1=2.0 (spike << slab)",
    ),
    (
        "regularizer=ssl +regularizer.group_types.kernel=1",
        "regularizer.group_types='kernel' is not allowed; allowed: filter, channel, shape, depth, neuron",
    ),
    (
        "+regularizer.sqrt=false",
        "regularizer.sqrt is not an option of sparsenet.regularizers.group_lasso.GroupLasso",
    ),
    (
        "regularizer=lasso",
        "regularizer=lasso is not a choice of regularizer; allowed: combined, group_lasso,",
    ),
    # regularizer against the model
    (
        "+regularizer.layers.fc9=1",
        f"regularizer.layers: pattern 'fc9' matches no Conv2d/Linear layer; {LENET5_LAYERS}",
    ),
    (
        "regularizer=sgl_variance +regularizer.parts.sgl.layers.conv9=0.5",
        f"regularizer.parts.sgl.layers: pattern 'conv9' matches no Conv2d/Linear layer; {LENET5_LAYERS}",
    ),
    (
        "model=mlp regularizer.structure=shape",
        "regularizer (GroupLasso, structure=shape) has no group in any layer of this model; its layers: fc1 (Linear)",
    ),
    # prune and finetune
    ("prune.threshold=-1", "prune.threshold=-1.0 is out of range; allowed: a finite number >= 0"),
    (
        "prune=ratio prune.ratio=1",
        "prune.ratio=1.0 is out of range; allowed: a finite number >= 0 and < 1",
    ),
    (
        "prune.criterion=magic",
        "prune.criterion='magic' is not allowed; allowed: threshold, relative, ratio",
    ),
    ("finetune.epochs=-2", "finetune.epochs=-2 is out of range; allowed: an integer >= 0"),
    ("finetune.lr=0", "finetune.lr=0.0 is out of range; allowed: null or a finite number > 0"),
    ("finetune.lr=inf", "finetune.lr=inf must be null or a finite number > 0"),
    ("finetune=sgd finetune.optimizer.momentum=-0.9", "finetune.optimizer.momentum=-0.9 is out"),
    # data, model, report, run keys
    (
        "dataset.train_subset=0",
        "dataset.train_subset=0 is out of range; allowed: an integer 1..64 (the split's size) or null for all samples",
    ),
    (
        "dataset.train_subset=100000",
        "dataset.train_subset=100000 is out of range; allowed: an integer 1..64",
    ),
    ("+dataset.image_size=64", "dataset.image_size is not an option of dataset 'fake'; allowed:"),
    ("dataset.num_workers=-1", "dataset.num_workers=-1 is out of range; allowed: an integer >= 0"),
    ("model.name=alexnet", "model.name='alexnet' is not allowed; allowed: "),
    ("model=mlp model.hidden=[100,0]", "model.hidden=[100, 0] must be a list of integers >= 1"),
    (
        "report.small_weight=-1",
        "report.small_weight=-1.0 is out of range; allowed: a finite number >= 0",
    ),
    (
        "report.latency_batch_size=0",
        "report.latency_batch_size=0 is out of range; allowed: an integer >= 1",
    ),
    ("seed=-1", "seed=-1 is out of range; allowed: an integer >= 0"),
    ("seed=true", "seed=true must be an integer >= 0"),
    ("name=../../x", "name='../../x' is not a folder name; allowed: a non-empty folder name"),
    ("name=", "name='' is not a folder name; allowed: a non-empty folder name"),
    (
        "stages=[train,prune,train]",
        "stages=['train', 'prune', 'train'] names train twice; allowed: each stage at most once",
    ),
    (
        "train.batch_size=99999999999999999999999",
        "train.batch_size=99999999999999999999999 is out of range; allowed: an integer >= 1",
    ),
    (
        "regularizer._target_=os.system",
        "regularizer._target_='os.system' is not a sparsenet.regularizers.base.Regularizer",
    ),
    (
        "optimizer._target_=builtins.print",
        "optimizer._target_='builtins.print' is not a torch.optim.optimizer.Optimizer",
    ),
    (
        "stages=[train,squash]",
        "stages=['train', 'squash'] names 'squash', not a stage; allowed: dense, train, prune, finetune",
    ),
]
# Run through the real CLI too: one per kind of error path (Hydra composition, a missing
# choice, a component's wrapped error, plain validation, the model fit, the loaded data).
CLI_ROWS = (
    "train.epoch=3",
    "regularizer=lasso",
    "regularizer=sgl_variance regularizer.parts.sgl.alpha=2",
    "optimizer.lr=-0.1",
    "model=mlp regularizer.structure=shape",
    "dataset.train_subset=100000",
)


def _error_line(compose_cfg, quick_smoke, overrides: str, run_dir: Path) -> str:
    """What the CLI would print after `sparsenet: error: ` for these overrides."""
    try:
        run_experiment(compose_cfg(*quick_smoke, *overrides.split()), run_dir)
    except Exception as error:  # noqa: BLE001 - every kind is checked below
        message = user_error_message(error)
        assert message is not None, f"{overrides}: not a user error: {error!r}"
        return message
    raise AssertionError(f"{overrides}: ran without an error")


def _assert_no_work_started(run_dir: Path, line: str, hydra: bool = False) -> None:
    """Nothing in the run folder but Hydra's own records and the error itself (in a
    metrics.json of status "error", for the sweep summary); composition errors stop before
    the folder exists."""
    if not run_dir.exists():
        return
    written = {p.name for p in run_dir.iterdir()} - ({".hydra", "cli.log"} if hydra else set())
    written -= {".lock"}  # the run folder's lock (sparsenet/pipeline/resume.py), no result
    assert written <= {"metrics.json"}, f"work started before the error: {sorted(written)}"
    if written:
        record = json.loads((run_dir / "metrics.json").read_text())
        assert record == {"status": "error", "error": line}


def test_the_table_is_large_and_distinct():
    keys = [row[0] for row in BAD_INPUTS]
    assert len(keys) >= 20 and len(set(keys)) == len(keys)
    assert set(CLI_ROWS) <= set(keys)


@pytest.mark.parametrize(("overrides", "expected"), BAD_INPUTS, ids=[r[0] for r in BAD_INPUTS])
def test_bad_input_fails_before_any_work_with_one_clear_line(
    overrides, expected, tmp_path, compose_cfg, quick_smoke
):
    line = _error_line(compose_cfg, quick_smoke, overrides, tmp_path / "run")
    assert expected in line
    assert "\n" not in line and "Traceback" not in line
    _assert_no_work_started(tmp_path / "run", line)


@pytest.mark.parametrize("overrides", CLI_ROWS)
def test_the_command_line_prints_the_same_line_and_exits_2(
    overrides, sparsenet_cli, tmp_path, compose_cfg, quick_smoke
):
    run_dir = tmp_path / "run"
    proc = sparsenet_cli(*quick_smoke, *overrides.split(), f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr
    expected = dict(BAD_INPUTS)[overrides]
    assert proc.stderr.count("\n") == 1 and expected in proc.stderr
    assert (
        proc.stderr.strip()
        == f"sparsenet: error: {_error_line(compose_cfg, quick_smoke, overrides, tmp_path / 'x')}"
    )
    _assert_no_work_started(
        run_dir, _error_line(compose_cfg, quick_smoke, overrides, tmp_path / "y"), hydra=True
    )


def test_debug_switch_shows_the_traceback(sparsenet_cli, tmp_path, quick_smoke):
    proc = sparsenet_cli(
        *quick_smoke, "optimizer.lr=-0.1", cwd=tmp_path, env={"SPARSENET_DEBUG": "1"}
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError: optimizer.lr=-0.1" in proc.stderr


# --- random valid input: it runs (or diverges, a result), never refused --------------------

VALID = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["mlp", "lenet5", "lenet300_100"]),
        "regularizer": st.sampled_from(config_choices("regularizer")),
        "optimizer": st.sampled_from(config_choices("optimizer")),
        "scheduler": st.sampled_from(config_choices("scheduler")),
        "prune": st.sampled_from(config_choices("prune")),
        "train.epochs": st.integers(0, 1),
        "finetune.epochs": st.integers(0, 1),
        "train.batch_size": st.sampled_from([16, 64, 100]),
        "seed": st.integers(0, 3),
        "prune.threshold": st.sampled_from([0, 1e-3, 0.5]),
    }
)


@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(choice=VALID, strength=st.sampled_from([0, 1e-4, 1e-2]))
def test_random_valid_overrides_run_or_fail_cleanly(choice, strength, compose_cfg, quick_smoke):
    overrides = [*quick_smoke, *(f"{k}={v}" for k, v in choice.items())]
    if choice["regularizer"] not in ("combined", "sgl_variance", "none"):
        overrides.append(f"regularizer.strength={strength}")  # a combination's is a multiplier
    with tempfile.TemporaryDirectory() as folder:
        try:
            metrics = run_experiment(compose_cfg(*overrides), Path(folder))
        except UserInputError as error:  # every choice here is valid: none may be refused
            raise AssertionError(f"a valid config was refused: {overrides}: {error}") from None
        event(f"ran: {metrics['status']}")
        assert metrics["status"] in ("completed", "failed")
        if metrics["status"] == "completed":
            assert list(metrics["stages"]) == ["train", "prune", "finetune"]
        else:
            assert metrics["failure"]["reason"]


@pytest.mark.parametrize(
    "override",
    [
        *(
            f"{group}={name}"
            for group in ("dataset", "model", "experiment")
            for name in config_choices(group)
        ),
        *(
            f"{group}={name}"
            for group in ("regularizer", "optimizer", "scheduler", "prune")
            for name in config_choices(group)
        ),
        "finetune=sgd",
    ],
)
def test_every_shipped_config_choice_validates(override, compose_cfg, tmp_path):
    """What the package ships passes the checks (a new key in a YAML file must be known to
    sparsenet/pipeline/validate.py). A bundle that starts from another run's network is
    pointed at a state_dict file of that model (its default folder exists after that run)."""
    more = []
    if override == "experiment=cifar10_resnet20_compress":
        from sparsenet.models import get_model

        torch.save(get_model("resnet20").state_dict(), tmp_path / "dense.pt")
        more = [f"model.weights={tmp_path}/dense.pt"]
    parse_config(compose_cfg(override, *more))
