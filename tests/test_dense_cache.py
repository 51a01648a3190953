"""The `dense` stage and its cache (sparsenet/pipeline/dense_cache.py): one dense network per
configuration, trained once, reused by every run that asks for the same one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparsenet.errors import ConfigError
from sparsenet.pipeline import run_experiment
from sparsenet.pipeline.dense_cache import RECORD_FILE, dense_entry
from sparsenet.pipeline.resume import config_hash
from sparsenet.pipeline.settings import parse_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DENSE_RUN = ("stages=[dense,train,prune]", "dense.epochs=2", "train.epochs=1")
# what says how a network came (trained here or taken from the cache), not what it is
PROVENANCE = {
    "reused",
    "cache",
    "wall_s",
    "total_wall_s",
    "latency_ms",
    "speedup",
    "trained_wall_s",
}


def _figures(tree):
    if isinstance(tree, dict):
        return {k: _figures(v) for k, v in tree.items() if k not in PROVENANCE}
    return tree


def _cfg(compose_cfg, quick_smoke, cache: Path, *more: str):
    return compose_cfg(*quick_smoke, *DENSE_RUN, f"dense.cache_dir={cache}", *more)


def test_a_second_run_reuses_the_dense_network_and_gets_what_training_it_gives(
    tmp_path, compose_cfg, quick_smoke
):
    """Run A (strength 1e-3) trains the dense network; run B (strength 3e-3, same seed) takes
    it from the cache. B's every figure, history and final weights equal those of B run
    against an empty cache, where it trains the dense network itself."""
    shared, empty = tmp_path / "shared", tmp_path / "empty"
    a = run_experiment(_cfg(compose_cfg, quick_smoke, shared), tmp_path / "a")
    assert a["stages"]["dense"]["reused"] is False
    folders = list(shared.iterdir())
    assert len(folders) == 1 and (folders[0] / RECORD_FILE).is_file()

    strength = "regularizer.strength=3e-3"
    b = run_experiment(_cfg(compose_cfg, quick_smoke, shared, strength), tmp_path / "b")
    alone = run_experiment(_cfg(compose_cfg, quick_smoke, empty, strength), tmp_path / "alone")
    assert b["stages"]["dense"]["reused"] is True
    assert alone["stages"]["dense"]["reused"] is False
    assert b["stages"]["dense"]["test_acc"] == a["stages"]["dense"]["test_acc"]
    assert _figures(b["stages"]) == _figures(alone["stages"])
    assert b["summary"]["dense_test_acc"] == b["stages"]["dense"]["test_acc"]
    history = [(tmp_path / run / "history.csv").read_text() for run in ("b", "alone")]
    assert history[0] == history[1]
    assert "dense" in history[0] and "train" in history[0]
    weights = [torch.load(tmp_path / r / "model" / "model_state.pt") for r in ("b", "alone")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert len(list(shared.iterdir())) == 1  # B added no second network


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ("regularizer.strength=0.5", True),
        ("finetune.epochs=7", True),
        ("prune.threshold=0.1", True),
        ("train.epochs=9", True),  # the train stage's length, not the dense stage's
        ("train.progress=true", True),
        ("seed=1", False),
        ("dense.epochs=3", False),
        ("dense.lr=0.5", False),
        ("optimizer.lr=0.5", False),
        ("dense.lr=0.05", True),  # the optimizer's own lr: the same training
        ("dense.lr=0.5 optimizer.lr=0.01", "dense.lr=0.5"),  # train's lr alone does not count
        ("train.batch_size=32", False),
        ("dataset.train_size=32", False),
        ("model=lenet300_100", False),
        ("scheduler=constant", False),
    ],
)
def test_the_cache_folder_follows_what_determines_the_dense_network(
    tmp_path, compose_cfg, quick_smoke, change, same
):
    def folder(*more):
        settings = parse_config(_cfg(compose_cfg, quick_smoke, tmp_path, *more))
        return dense_entry(settings, "data-a").folder

    if isinstance(same, str):  # the same network as with these overrides
        assert folder(*change.split()) == folder(*same.split())
        return
    assert (folder(*change.split()) == folder()) is same
    settings = parse_config(_cfg(compose_cfg, quick_smoke, tmp_path))
    assert dense_entry(settings, "data-b").folder != folder()  # other data, other network


def test_a_damaged_or_foreign_record_is_trained_again(tmp_path, compose_cfg, quick_smoke):
    cache = tmp_path / "cache"
    cfg = _cfg(compose_cfg, quick_smoke, cache)
    first = run_experiment(cfg, tmp_path / "a")
    (record,) = cache.glob(f"*/{RECORD_FILE}")
    record.write_text("{not json")
    again = run_experiment(cfg, tmp_path / "b")
    assert again["stages"]["dense"]["reused"] is False
    assert again["stages"]["dense"]["test_acc"] == first["stages"]["dense"]["test_acc"]
    stored = json.loads(record.read_text())
    stored["data_fingerprint"] = "other data"
    record.write_text(json.dumps(stored))
    third = run_experiment(cfg, tmp_path / "c")
    assert third["stages"]["dense"]["reused"] is False


def test_dense_must_come_first_and_is_hashed_only_when_it_runs(compose_cfg, quick_smoke):
    with pytest.raises(ConfigError, match=r"stages=\['train', 'dense'\] has dense after"):
        parse_config(compose_cfg(*quick_smoke, "stages=[train,dense]"))
    # runs made before the dense stage existed keep their identity (hash)
    plain = parse_config(compose_cfg(*quick_smoke)).config
    other = parse_config(compose_cfg(*quick_smoke, "dense.epochs=99")).config
    assert config_hash(plain) == config_hash(other)
    with_dense = parse_config(compose_cfg(*quick_smoke, "stages=[dense,train]")).config
    longer = parse_config(compose_cfg(*quick_smoke, "stages=[dense,train]", "dense.epochs=99"))
    assert config_hash(with_dense) != config_hash(longer.config)
    moved = parse_config(compose_cfg(*quick_smoke, "stages=[dense,train]", "dense.cache_dir=/x"))
    assert config_hash(with_dense) == config_hash(moved.config)


def test_two_runs_wanting_the_same_dense_network_at_once_train_it_once(tmp_path):
    """Two processes start together: one trains while the other waits on the cache's lock,
    then reuses; both report the same dense network."""
    from conftest import QUICK_SMOKE, cli_env

    cache = tmp_path / "cache"
    common = (*QUICK_SMOKE, *DENSE_RUN, "dense.epochs=3", f"dense.cache_dir={cache}")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sparsenet",
                *common,
                f"regularizer.strength={strength}",
                f"hydra.run.dir={tmp_path / name}",
                "train.num_threads=1",
            ],
            cwd=tmp_path,
            env=cli_env(tmp_path, None),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, strength in (("a", "1e-3"), ("b", "2e-3"))
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    dense = [
        json.loads((tmp_path / n / "metrics.json").read_text())["stages"]["dense"] for n in "ab"
    ]
    assert sorted(d["reused"] for d in dense) == [False, True]
    assert dense[0]["test_acc"] == dense[1]["test_acc"]
    assert len(list(cache.iterdir())) == 1
