"""`hydra/sweeper=front_search`: an Optuna multi-objective search for the accuracy-cost front.

    sparsenet -m hydra/sweeper=front_search name=gl_front \
        'regularizer.strength=tag(log,interval(1e-5,1e-2))' hydra.sweeper.n_trials=20 \
        hydra/launcher=parallel hydra.launcher.n_jobs=2

Each trial is one sparsenet run, launched by whichever Hydra launcher the command chose (basic,
joblib `parallel`, submitit `slurm`/`slurm_local`). Optuna maximizes the run's final test
accuracy and minimizes the % of the dense network's MACs (`hydra.sweeper.cost=macs`) or
parameters (`params`) it keeps, read from the run's summary (`_results.py`); a run that fails
(bad value, divergence, no metrics) is a FAIL trial and the search goes on. The study is
stored (`<sweep dir>/optuna.db` by default), so the same command continues a stopped search
(`_search.py`); at the end the front is printed and written to `front_search.csv`/`.md`
(`_front.py`). Search space syntax: `_space.py`. Settings: `config.py`.

Why a plugin of our own, not the published `hydra-optuna-sweeper`. Checked on this stack
(Python 3.11, hydra-core 1.3.8, numpy 2.4.6, SQLAlchemy 2.1.9, alembic 1.20.1) in a throwaway
virtual environment: hydra-optuna-sweeper 1.2.0 and 1.3.0 (the newest on PyPI) both require
`optuna<3.0.0,>=2.10.0`, and pip resolves them to optuna 2.10.1 (released 2021) without a
conflict. Installed, a multi-objective study in memory runs, but with a stored study
(`hydra.sweeper.storage=sqlite:///...`, which resuming needs) optuna 2.10.1 fails as it opens
the database: `AssertionError` in `RDBStorage.get_current_version` (its schema-version query
does not work under SQLAlchemy 2). With SQLAlchemy 1.4.54 instead, current alembic (which
requires SQLAlchemy >= 2) fails to import, and so does optuna. Making it work means pinning
optuna, SQLAlchemy and alembic to 2021-2022 releases. It also expects the task function to
return the objective values as a list, where sparsenet's returns the run's summary dict (and
nothing for a diverged run). Hydra's main branch has moved the plugin to optuna 4.x, but only
for hydra-core 1.4 (unreleased). So this is a small Sweeper of our own on current Optuna
(tested with 5.0.0; the `search` extra asks for >= 4.0).
"""
