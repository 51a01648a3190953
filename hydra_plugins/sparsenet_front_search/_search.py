"""The search loop: open (or continue) the study, ask a batch of trials, launch their runs
together, tell Optuna each run's (accuracy, cost) or that it failed, until the study holds
`n_trials`; then write the front.

Resuming. The study lives in a database (default `<sweep dir>/optuna.db`), so the same command
continues it: `n_trials` is what the study should hold, not what one invocation adds, and
trials already finished are not asked again. A trial left RUNNING (the search was killed while
its run trained) is told FAIL and its parameters are asked again first (user attribute
`retry_of`); the retry has the same overrides, so it lands in the same run folder and sparsenet
continues that run from its last checkpoint (or finds it completed). Only `<sweep dir>/
.front_search.lock`'s holder may do this: a second search on the same folder is refused. (A
`storage` shared by several sweep folders is not covered by that lock: run one search per
study at a time.)

Failures. A run that fails is a FAIL trial with its reason (`_results.py`), and the search
goes on. A launcher that raises after some runs of its batch wrote their results (a joblib
worker killed, a Slurm job lost) has each trial read from its run folder. One that fails before
any run started (sbatch refusing the job array, no SLURM) stops the search with its error; the
batch's trials stay RUNNING and are asked again by the next invocation.

Trials with the same overrides (a choice drawn twice, a retry) share a run folder: within a
batch they are launched once and all get its result; across batches sparsenet finds the run
completed and returns its figures without training.

Samplers: `tpe` (Optuna's multi-objective TPE; 5 random trials before it models, where
Optuna's default of 10 is half of a small search), `nsgaii` (population 8 instead of Optuna's
50, which would keep a search of a few dozen trials random) and `random`. Each invocation seeds
the sampler with `seed + trials already in the study`: repeatable, and a resumed search does
not draw the first invocation's random trials again.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import configure_log
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.trial import FrozenTrial, TrialState

from sparsenet.errors import ConfigError

from ._front import write_front
from ._results import ACCURACY, COST_KEYS, Outcome, first_line, job_output_dir, outcome
from ._space import SearchSpace, flatten_params

log = logging.getLogger(__name__)

DIRECTIONS = ("maximize", "minimize")  # accuracy, cost
SAMPLERS = {
    "tpe": ("TPESampler", {"n_startup_trials": 5}),
    "nsgaii": ("NSGAIISampler", {"population_size": 8}),
    "random": ("RandomSampler", {}),
}
LOCK_FILE = ".front_search.lock"
DATABASE = "optuna.db"
FINISHED = (TrialState.COMPLETE, TrialState.FAIL)


def _key(name: str) -> str:
    return f"hydra.sweeper.{name}"


def check_settings(settings: dict[str, Any]) -> None:
    if settings["cost"] not in COST_KEYS:
        raise ConfigError(_key("cost"), settings["cost"], "is not a cost", ", ".join(COST_KEYS))
    if settings["sampler"] not in SAMPLERS:
        raise ConfigError(
            _key("sampler"), settings["sampler"], "is not a sampler", ", ".join(SAMPLERS)
        )
    for name, low in (("n_trials", 0), ("n_jobs", 1), ("float_digits", 1)):
        value = settings[name]
        if value is not None and value < low:
            raise ConfigError(_key(name), value, "is out of range", f"an integer >= {low}")


def batch_size(settings: dict[str, Any], config: DictConfig) -> int:
    """n_jobs, else the launcher's own parallelism when it states one (joblib's n_jobs)."""
    if settings["n_jobs"] is not None:
        return int(settings["n_jobs"])
    jobs = OmegaConf.select(config, "hydra.launcher.n_jobs", default=None)
    if isinstance(jobs, int) and jobs < 0:
        return max(1, (os.cpu_count() or 1) + 1 + jobs)  # joblib: -1 is every core
    return jobs if isinstance(jobs, int) and jobs > 0 else 1


def make_sampler(
    name: str, seed: int | None, options: dict[str, Any]
) -> optuna.samplers.BaseSampler:
    class_name, defaults = SAMPLERS[name]
    try:
        return getattr(optuna.samplers, class_name)(**{**defaults, **options, "seed": seed})
    except (TypeError, ValueError) as error:
        raise ConfigError(
            _key("sampler_options"),
            dict(options),
            f"is refused by optuna.samplers.{class_name}: {first_line(str(error))}",
        ) from error


@contextlib.contextmanager
def search_lock(sweep_dir: Path) -> Iterator[None]:
    """One search per sweep folder: it alone may fail the trials it finds RUNNING."""
    with open(sweep_dir / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigError(
                f"another front search ({holder}) is running in {sweep_dir}; wait for it to "
                "end, or give this one a sweep folder of its own (name=...)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_study(storage: str, study_name: str, cost: str) -> optuna.Study:
    study = optuna.create_study(
        storage=storage, study_name=study_name, directions=list(DIRECTIONS), load_if_exists=True
    )
    directions = [d.name.lower() for d in study.directions]
    recorded = study.user_attrs.get("cost")
    if directions != list(DIRECTIONS) or recorded not in (None, cost):
        raise ConfigError(
            f"study {study_name!r} in {storage} is another search ({recorded or directions}); "
            f"this one asks cost={cost}: give it another hydra.sweeper.study_name (or name=)"
        )
    if recorded is None:
        study.set_user_attr("cost", cost)
        study.set_user_attr("objectives", [ACCURACY, COST_KEYS[cost]])
    return study


def requeue_interrupted(study: optuna.Study) -> None:
    """Trials left RUNNING by a stopped search: FAIL, and their parameters asked again."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        if trial.params:
            study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
        log.info("trial %d was interrupted: failed, and asked again", trial.number)


def counted(trials: list[FrozenTrial]) -> int:
    """Finished trials toward n_trials; an interrupted one counts through its retry."""
    retried = {t.user_attrs.get("retry_of") for t in trials}
    return sum(1 for t in trials if t.state in FINISHED and t.number not in retried)


def expected_run_dir(config: DictConfig, job_num: int) -> Path | None:
    """Where the launcher will put a job whose config is `config` (Hydra's sweep dir/subdir)."""
    try:
        with open_dict(config):
            config.hydra.job.num = job_num
        return Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
    except Exception:  # noqa: BLE001 - a subdir that needs what only the launcher sets
        return None


class Search:
    """One invocation of the search (module docstring)."""

    def __init__(self, sweeper: Any, arguments: list[str]) -> None:
        settings = dict(sweeper.settings)
        check_settings(settings)
        self.settings = settings
        self.config: DictConfig = sweeper.config
        self.loader = sweeper.hydra_context.config_loader
        self.launcher = sweeper.launcher
        self.cost: str = settings["cost"]
        params = settings["params"]
        if isinstance(params, DictConfig):
            params = OmegaConf.to_container(params, resolve=False)
        self.space = SearchSpace.parse(flatten_params(params), arguments, settings["float_digits"])
        if not self.space.dimensions:
            raise ConfigError(
                "hydra/sweeper=front_search has nothing to search: give a key a range, e.g. "
                "'regularizer.strength=tag(log,interval(1e-5,1e-2))'"
            )
        self.sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        self.storage = settings["storage"] or f"sqlite:///{self.sweep_dir / DATABASE}"
        self.study_name = settings["study_name"] or str(
            OmegaConf.select(self.config, "name", default=None) or self.config.hydra.job.name
        )
        self.returns: list = []

    def run(self) -> list:
        # A key that is not in the config fails here, before any trial is asked.
        self.loader.load_sweep_config(master_config=self.config, sweep_overrides=self.space.probe())
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours
        with search_lock(self.sweep_dir):
            study = open_study(self.storage, self.study_name, self.cost)
            requeue_interrupted(study)
            study.sampler = make_sampler(
                self.settings["sampler"],
                None
                if self.settings["seed"] is None
                else self.settings["seed"] + len(study.trials),
                dict(self.settings["sampler_options"] or {}),
            )
            try:
                self._search(study)
            except BaseException:
                with contextlib.suppress(Exception):
                    write_front(study, self.sweep_dir, self.cost, self.storage, echo=False)
                raise
            write_front(study, self.sweep_dir, self.cost, self.storage)
        return self.returns

    def _search(self, study: optuna.Study) -> None:
        n_trials, size = self.settings["n_trials"], batch_size(self.settings, self.config)
        trials = study.get_trials(deepcopy=False)
        log.info(
            "front search: study %r (%s), %d of %d trials done; batches of %d",
            self.study_name,
            self.storage,
            counted(trials),
            n_trials,
            size,
        )
        while (remaining := n_trials - counted(study.get_trials(deepcopy=False))) > 0:
            batch = [study.ask(self.space.dimensions) for _ in range(min(size, remaining))]
            self._run_batch(study, batch)

    def _run_batch(self, study: optuna.Study, batch: list[optuna.Trial]) -> None:
        groups: dict[tuple[str, ...], list[optuna.Trial]] = {}
        for trial in batch:
            params = {key: trial.params[key] for key in self.space.dimensions}
            overrides = tuple(self.space.overrides(params))
            trial.set_user_attr("overrides", list(overrides[len(self.space.fixed) :]))
            groups.setdefault(overrides, []).append(trial)
        launch, run_dirs = [], []
        for overrides, trials in groups.items():
            try:
                job_config = self.loader.load_sweep_config(
                    master_config=self.config, sweep_overrides=list(overrides)
                )
            except Exception as error:  # noqa: BLE001 - a combination the config refuses
                self._tell(study, trials, Outcome(None, f"does not compose: {first_line(error)}"))
                continue
            launch.append(overrides)
            run_dirs.append(expected_run_dir(job_config, batch[0].number + len(run_dirs)))
        if not launch:
            return
        jobs = self._launch(launch, run_dirs, batch[0].number)
        for overrides, run_dir, job in zip(launch, run_dirs, jobs, strict=True):
            folder = job_output_dir(job) or run_dir
            for trial in groups[overrides]:
                if folder is not None:
                    trial.set_user_attr("run", os.path.relpath(folder, self.sweep_dir))
            self._tell(study, groups[overrides], outcome(job, run_dir, self.cost))

    def _launch(self, launch: list, run_dirs: list, first_job: int) -> list:
        """The launcher's JobReturns; None for each job when the launcher itself raised
        (a worker killed, a Slurm job lost) after some runs wrote their results."""
        from sparsenet.launchers import launcher_error_message

        try:
            jobs = list(self.launcher.launch([list(o) for o in launch], initial_job_idx=first_job))
            self.returns.append(jobs)
            return jobs
        except Exception as error:
            started = [d for d in run_dirs if d is not None and (d / "metrics.json").exists()]
            if launcher_error_message(error) is not None or not started:
                raise  # nothing ran: the trials stay RUNNING and are asked again next time
            log.error("the launcher failed (%s); reading the runs' folders", first_line(error))
            return [None] * len(launch)
        finally:
            # A launcher that ran jobs in this process left logging pointed at the last
            # job's log file; the search's own lines go to the console again.
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)

    def _tell(self, study: optuna.Study, trials: list[optuna.Trial], result: Outcome) -> None:
        for trial in trials:
            shown = " ".join(trial.user_attrs.get("overrides", []))
            if result.values is None:
                trial.set_user_attr("failure", result.reason)
                study.tell(trial, state=TrialState.FAIL)
                log.warning("trial %d failed (%s): %s", trial.number, shown, result.reason)
            else:
                study.tell(trial, values=list(result.values))
                accuracy, cost = result.values
                log.info(
                    "trial %d: %s -> %s %.2f, %s %.2f",
                    trial.number,
                    shown,
                    ACCURACY,
                    accuracy,
                    COST_KEYS[self.cost],
                    cost,
                )


def run_search(sweeper: Any, arguments: list[str]) -> list:
    return Search(sweeper, arguments).run()
