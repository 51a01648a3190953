"""hydra/sweeper=front_search (hydra_plugins/sparsenet_front_search): the search space, how a
trial's result is read, and real searches through the CLI whose study is read back with
Optuna's API and held against the runs' own metrics.json files."""

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import QUICK_SMOKE, cli_env, run_sparsenet
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.sparsenet_front_search._results import outcome
from hydra_plugins.sparsenet_front_search._search import Search, check_settings
from hydra_plugins.sparsenet_front_search._space import SearchSpace, flatten_params
from hydra_plugins.sparsenet_front_search.config import DEFAULT_PARAMS, FrontSearchConf
from sparsenet.errors import ConfigError

STRENGTH = "regularizer.strength"
THRESHOLD = "prune.threshold"
# The default search dimension (the strength) plus the pruning threshold, which moves the
# MACs kept even after the one-batch training of a smoke run.
SEARCH = (
    "-m",
    "hydra/sweeper=front_search",
    *QUICK_SMOKE,
    "train.num_threads=1",
    "hydra.callbacks.sweep_summary.plot=false",
    f"{THRESHOLD}=tag(log,interval(0.01,10))",
)
DIMENSIONS = {
    STRENGTH: FloatDistribution(1e-5, 1e-2, log=True),
    THRESHOLD: FloatDistribution(0.01, 10, log=True),
}


# --- the search space and a trial's result, in-process -------------------------------------


def test_hydra_sweep_syntax_becomes_optuna_distributions():
    space = SearchSpace.parse(
        flatten_params({**DEFAULT_PARAMS, "train": {"epochs": "tag(int, interval(1, 8))"}}),
        ["experiment=smoke", "prune.min_units=range(1,4)", "regularizer=group_lasso,ssl", "+x=1"],
    )
    assert space.dimensions == {
        STRENGTH: FloatDistribution(1e-5, 1e-2, log=True),
        "train.epochs": IntDistribution(1, 8),
        "prune.min_units": IntDistribution(1, 3),  # Hydra's range stops before 4
        "regularizer": CategoricalDistribution(["group_lasso", "ssl"]),
    }
    assert space.fixed == ["experiment=smoke", "+x=1"]
    # a fixed value on the command line replaces the default dimension
    assert SearchSpace.parse(DEFAULT_PARAMS, [f"{STRENGTH}=3e-4"]).dimensions == {}


def test_drawn_floats_are_written_with_three_significant_digits():
    space = SearchSpace.parse({}, [f"{STRENGTH}=tag(log,interval(1.00049e-5,1e-2))"])
    assert space.overrides({STRENGTH: 0.000184961}) == [f"{STRENGTH}=0.000185"]
    # rounding 1.0005e-5 to 1e-05 would leave the interval: written in full
    assert space.overrides({STRENGTH: 1.0005e-5}) == [f"{STRENGTH}=1.0005e-05"]
    assert SearchSpace.parse({}, ["a=interval(0,1)"], None).overrides({"a": 1 / 3}) == [
        f"a={1 / 3!r}"
    ]


def test_bad_settings_are_refused_naming_the_key():
    settings = {**FrontSearchConf().__dict__, "n_jobs": None}
    check_settings(settings)
    for key, value, message in (
        ("cost", "flops", "hydra.sweeper.cost='flops' is not a cost; allowed: macs, params"),
        (
            "sampler",
            "cma",
            "hydra.sweeper.sampler='cma' is not a sampler; allowed: tpe, nsgaii, random",
        ),
        ("n_jobs", 0, "hydra.sweeper.n_jobs=0 is out of range; allowed: an integer >= 1"),
    ):
        with pytest.raises(ConfigError) as refused:
            check_settings({**settings, key: value})
        assert str(refused.value) == message


def _metrics(folder: Path, record: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(record))
    return folder


def test_a_trial_result_comes_from_the_job_or_its_metrics(tmp_path):
    summary = {"test_acc": 97.5, "macs_kept_pct": 40.0, "params_kept_pct": 12.5}
    completed = _metrics(tmp_path / "ok", {"status": "completed", "summary": summary})
    assert outcome(None, completed, "macs").values == (97.5, 40.0)
    assert outcome(None, completed, "params").values == (97.5, 12.5)
    # the job's returned summary is used even when the folder is out of reach
    job = JobReturn(status=JobStatus.COMPLETED, _return_value=summary)
    assert outcome(job, tmp_path / "elsewhere", "macs").values == (97.5, 40.0)

    diverged = _metrics(
        tmp_path / "nan",
        {"status": "failed", "failure": {"stage": "train", "epoch": 2, "reason": "loss is nan"}},
    )
    returned_none = JobReturn(status=JobStatus.COMPLETED, _return_value=None)
    result = outcome(returned_none, diverged, "macs")
    assert (
        result.values is None
        and result.reason == "run failed: diverged in train epoch 2: loss is nan"
    )
    raised = JobReturn(
        status=JobStatus.FAILED, _return_value=ValueError("x=-1 is out of range\n..")
    )
    assert outcome(raised, completed, "macs").reason == "ValueError: x=-1 is out of range"
    assert "no metrics.json" in outcome(None, tmp_path / "missing", "macs").reason
    nan = _metrics(
        tmp_path / "inf", {"status": "completed", "summary": {**summary, "test_acc": math.inf}}
    )
    assert outcome(None, nan, "macs").values is None


class _BrokenLauncher:
    def launch(self, job_overrides, initial_job_idx):
        raise RuntimeError("worker killed")


def test_a_launcher_that_breaks_after_runs_finished_leaves_each_trial_to_its_folder(tmp_path):
    summary = {"test_acc": 97.5, "macs_kept_pct": 40.0}
    done = _metrics(tmp_path / "done", {"status": "completed", "summary": summary})
    lost = tmp_path / "lost"
    search = Search.__new__(Search)  # only what _launch uses
    search.launcher, search.returns = _BrokenLauncher(), []
    search.config = OmegaConf.create({"hydra": {"hydra_logging": {"root": None}, "verbose": False}})
    jobs = search._launch([("a=1",), ("a=2",)], [done, lost], 0)
    assert jobs == [None, None]
    assert outcome(jobs[0], done, "macs").values == (97.5, 40.0)
    assert "no metrics.json" in outcome(jobs[1], lost, "macs").reason
    with pytest.raises(RuntimeError, match="worker killed"):  # no run started: the error stands
        search._launch([("a=2",)], [lost], 2)


# --- real searches --------------------------------------------------------------------------


def _study(sweep: Path) -> optuna.Study:
    return optuna.load_study(study_name="smoke", storage=f"sqlite:///{sweep / 'optuna.db'}")


def _summary(sweep: Path, trial) -> dict:
    return json.loads((sweep / trial.user_attrs["run"] / "metrics.json").read_text())["summary"]


def _check_trials_against_runs(sweep: Path, study: optuna.Study) -> None:
    """Every completed trial's values are its run's summary, and the run got the trial's
    parameters (three significant digits) in its overrides."""
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        summary = _summary(sweep, trial)
        assert trial.values == [summary["test_acc"], summary["macs_kept_pct"]]
        run_overrides = OmegaConf.load(sweep / trial.user_attrs["run"] / ".hydra/overrides.yaml")
        for key, value in trial.params.items():
            assert f"{key}={float(f'{value:.3g}')!r}" in run_overrides


def _check_front_file(sweep: Path, study: optuna.Study) -> pd.DataFrame:
    """front_search.csv holds exactly the runs no other completed run dominates."""
    points = {
        t.user_attrs["run"]: tuple(t.values)
        for t in study.get_trials(states=(TrialState.COMPLETE,))
    }
    expected = {
        run
        for run, (acc, cost) in points.items()
        if not any(a >= acc and c <= cost and (a > acc or c < cost) for a, c in points.values())
    }
    front = pd.read_csv(sweep / "front_search.csv")
    assert set(front["run"]) == expected and len(front) == len(expected)
    assert list(front["macs_kept_pct"]) == sorted(front["macs_kept_pct"])
    return front


@pytest.mark.slow
def test_search_stores_its_study_writes_the_front_and_a_rerun_continues_it(sparsenet_cli, tmp_path):
    sweep = tmp_path / "sweep"
    command = (*SEARCH, f"hydra.sweep.dir={sweep}")
    first = sparsenet_cli(*command, "hydra.sweeper.n_trials=2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    study = _study(sweep)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert set(study.trials[0].params) == {STRENGTH, THRESHOLD}
    _check_trials_against_runs(sweep, study)
    _check_front_file(sweep, study)
    assert "Front search: study 'smoke', 2 trials (2 completed, 0 failed)" in first.stdout
    assert (sweep / "summary.csv").is_file()  # the sweep summary still runs after the search
    runs = {t.number: sweep / t.user_attrs["run"] / "metrics.json" for t in study.trials}
    before = {n: (p.read_bytes(), p.stat().st_mtime_ns) for n, p in runs.items()}
    earlier = [(t.params, t.values) for t in study.trials]

    # A search killed while a run trained leaves its trial RUNNING.
    study.enqueue_trial({STRENGTH: 1e-3, THRESHOLD: 0.05})
    killed = study.ask(DIMENSIONS)
    # Two trials that draw trial 0's values (they come first, in one batch of 2).
    study.enqueue_trial(study.trials[0].params)
    study.enqueue_trial(study.trials[0].params)

    again = sparsenet_cli(
        *command,
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.n_jobs=2",
        "~hydra.callbacks.sweep_summary",
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    trials = _study(sweep).trials
    assert [(t.params, t.values) for t in trials[:2]] == earlier
    # no earlier run was trained again (the repeats of trial 0 found its run completed)
    assert {n: (p.read_bytes(), p.stat().st_mtime_ns) for n, p in runs.items()} == before
    repeats = trials[killed.number + 1 : killed.number + 3]
    for repeat in repeats:
        assert repeat.state == TrialState.COMPLETE and repeat.values == trials[0].values
        assert repeat.user_attrs["run"] == trials[0].user_attrs["run"]
    assert "Launching 1 jobs locally" in again.stderr + again.stdout  # the repeats' batch
    assert trials[killed.number].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    # 6 trials count: 2 earlier, 2 repeats, the retry and one new; the interrupted one does not
    assert len(trials) == 7 and sum(t.state == TrialState.COMPLETE for t in trials) == 6
    _check_trials_against_runs(sweep, _study(sweep))
    _check_front_file(sweep, _study(sweep))
    report = (sweep / "front_search.md").read_text()
    assert f"- trial {killed.number} (" in report
    assert f"interrupted; asked again as trial {retry.number}" in report


@pytest.mark.slow
def test_failed_runs_are_failed_trials_and_the_search_goes_on(sparsenet_cli, tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    study = optuna.create_study(
        study_name="smoke",
        storage=f"sqlite:///{sweep / 'optuna.db'}",
        directions=["maximize", "minimize"],
    )
    study.enqueue_trial({STRENGTH: 1e-3, THRESHOLD: -1.0})  # refused before the run starts
    study.enqueue_trial({STRENGTH: 1e12, THRESHOLD: 0.1})  # the loss becomes NaN
    proc = sparsenet_cli(
        "-m",
        "hydra/sweeper=front_search",
        *QUICK_SMOKE,
        "train.num_threads=1",
        "hydra.callbacks.sweep_summary.plot=false",
        f"{STRENGTH}=tag(log,interval(1e-4,1e12))",
        f"{THRESHOLD}=interval(-1,1)",
        "hydra.sweeper.n_trials=3",
        "~hydra.callbacks.sweep_summary",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    refused, diverged, third = _study(sweep).trials
    assert refused.state == TrialState.FAIL
    assert "prune.threshold=-1.0 is out of range" in refused.user_attrs["failure"]
    assert (
        json.loads((sweep / refused.user_attrs["run"] / "metrics.json").read_text())["status"]
        == "error"
    )
    assert diverged.state == TrialState.FAIL
    assert diverged.user_attrs["failure"].startswith("run failed: diverged in train epoch 1")
    assert (
        json.loads((sweep / diverged.user_attrs["run"] / "metrics.json").read_text())["status"]
        == "failed"
    )
    assert third.state in (TrialState.COMPLETE, TrialState.FAIL)  # asked after two failures
    front = pd.read_csv(sweep / "front_search.csv")
    assert set(front["trial"]) <= {third.number}
    report = (sweep / "front_search.md").read_text()
    assert f"- trial {refused.number} (" in report and "is out of range" in report


def test_without_optuna_the_sweeper_names_the_extra(sparsenet_cli, tmp_path):
    stub = tmp_path / "no_optuna" / "optuna"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'optuna'\", name='optuna')\n"
    )
    proc = sparsenet_cli(
        *SEARCH,
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "no_optuna")},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "sparsenet: error: hydra/sweeper=front_search needs the optuna package, which is not "
        'installed: pip install "sparsenet[search]" (from a checkout: pip install -e ".[search]")'
    )
    assert not list((tmp_path / "sweep").glob("*/metrics.json"))


def _launched_together(sweep: Path, proc) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = _study(sweep)
    first, second = study.trials
    assert first.state == second.state == TrialState.COMPLETE
    assert second.datetime_start < first.datetime_complete  # one batch: both asked at once
    _check_trials_against_runs(sweep, study)
    _check_front_file(sweep, study)


@pytest.mark.slow
def test_the_joblib_launcher_runs_a_batch_of_trials_at_once(sparsenet_cli, tmp_path):
    sweep = tmp_path / "sweep"
    proc = sparsenet_cli(
        *SEARCH,
        "hydra/launcher=parallel",
        "hydra.launcher.n_jobs=2",  # the batch size follows it
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert "Joblib.Parallel(n_jobs=2" in proc.stderr + proc.stdout
    _launched_together(sweep, proc)


@pytest.mark.slow
def test_the_submitit_local_launcher_runs_a_batch_of_trials(sparsenet_cli, tmp_path):
    sweep = tmp_path / "sweep"
    proc = sparsenet_cli(
        *SEARCH,
        "hydra/launcher=slurm_local",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    _launched_together(sweep, proc)
    assert any((sweep / ".submitit").iterdir())  # the jobs went through submitit


@pytest.mark.slow
def test_a_search_killed_mid_run_continues_that_run(tmp_path):
    """SIGKILL to the search while a trial's run trains (after its first checkpoint); the same
    command then fails that trial, asks its values again and the run resumes from its
    checkpoint in the same folder."""
    sweep = tmp_path / "sweep"
    command = (
        *SEARCH,
        "dataset.train_size=2048",
        "train.epochs=4",
        "hydra.sweeper.n_trials=1",
        f"hydra.sweep.dir={sweep}",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "sparsenet", *command],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 180
    while not list(sweep.glob("*/checkpoint.pt")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (checkpoint,) = sweep.glob("*/checkpoint.pt")
    (killed,) = _study(sweep).trials
    assert killed.state == TrialState.RUNNING

    again = run_sparsenet(*command, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    killed, retry = _study(sweep).trials
    assert killed.state == TrialState.FAIL and retry.user_attrs["retry_of"] == killed.number
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert sweep / retry.user_attrs["run"] == checkpoint.parent
    assert "resuming" in again.stdout + again.stderr and not checkpoint.exists()
    _check_trials_against_runs(sweep, _study(sweep))
