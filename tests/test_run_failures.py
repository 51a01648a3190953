"""Runs that cannot finish: a diverging loss ends the run as `failed` while the sweep goes on;
an output folder that cannot be written is one clear error and leaves earlier results as
they were."""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
from pathlib import Path

import pytest

from sparsenet.errors import OutputError
from sparsenet.pipeline import run_experiment

QUICK = ("experiment=smoke", "train.epochs=2", "finetune.epochs=0", "train.progress=false")
# SGD at lr 1e9 throws the weights to +-1e9 after one step: the loss overflows within the
# first epoch whatever the seed.
DIVERGING_LR = "1e9"


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_a_diverging_run_fails_and_the_sweep_goes_on(sparsenet_cli, tmp_path):
    """Three runs: one diverges, one has a bad value, one is fine. The sweep runs all three,
    the summary holds the good one and lists the other two apart with their reasons, and the
    command exits with 2 for the bad value (a divergence alone would exit with 0)."""
    sweep = tmp_path / "sweep"
    proc = sparsenet_cli(
        "-m",
        *QUICK,
        f"optimizer.lr={DIVERGING_LR},0.01,-1",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "sparsenet: run failed: diverged in train epoch 1: " in proc.stderr
    bad_value = "optimizer.lr=-1 is out of range; allowed: a finite number > 0"
    assert proc.stderr.rstrip().endswith(f"sparsenet: error: {bad_value}")
    assert "Traceback" not in proc.stderr

    runs = {
        p.parent.name.split("optimizer.lr=")[1].split(",")[0]: p.parent
        for p in sweep.glob("*/metrics.json")
    }
    assert sorted(runs) == ["-1", "0.01", "1000000000.0"]
    failed = _read(runs["1000000000.0"] / "metrics.json")
    assert failed["status"] == "failed" and failed["stages"] == {}
    assert (failed["failure"]["stage"], failed["failure"]["epoch"]) == ("train", 1)
    assert "nan" in failed["failure"]["reason"] or "inf" in failed["failure"]["reason"]
    assert not (runs["1000000000.0"] / "checkpoint.pt").exists()
    assert _read(runs["0.01"] / "metrics.json")["status"] == "completed"
    assert _read(runs["-1"] / "metrics.json") == {"status": "error", "error": bad_value}

    # The summary holds the completed run and lists the other two apart, with their reasons.
    with open(sweep / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == 1
    with open(sweep / "failed.csv") as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    assert set(rows) == {runs["1000000000.0"].name, runs["-1"].name}
    diverged, refused = rows[runs["1000000000.0"].name], rows[runs["-1"].name]
    assert diverged["status"] == "failed"
    assert diverged["reason"].startswith("diverged in train epoch 1: ")
    assert (refused["status"], refused["reason"]) == ("error", bad_value)
    summary = (sweep / "summary.md").read_text()
    assert "## Failed or unfinished runs (2)" in summary
    assert summary.count(runs["1000000000.0"].name) == 1  # in that section only


def test_a_failed_run_is_not_retried_until_resume_false(
    sparsenet_cli, tmp_path, caplog, compose_cfg
):
    caplog.set_level(logging.INFO)
    run_dir = tmp_path / "run"
    overrides = (*QUICK, f"optimizer.lr={DIVERGING_LR}")
    first = run_experiment(compose_cfg(*overrides), run_dir)
    assert first["status"] == "failed"
    written = (run_dir / "metrics.json").stat().st_mtime_ns

    again = run_experiment(compose_cfg(*overrides), run_dir)
    assert again == first and (run_dir / "metrics.json").stat().st_mtime_ns == written
    assert "already failed with this config (diverged in train epoch 1" in caplog.text

    # The command line: the same skip, a "run failed" line and status 1 for a single run.
    proc = sparsenet_cli(*overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 1 and "already failed" in proc.stdout
    assert proc.stderr.startswith("sparsenet: run failed: diverged in train epoch 1: ")
    assert "Traceback" not in proc.stderr

    rerun = run_experiment(compose_cfg(*overrides, "resume=false"), run_dir)
    assert rerun["status"] == "failed"
    assert (run_dir / "metrics.json").stat().st_mtime_ns > written


def test_a_full_disk_is_a_clear_error_and_keeps_the_earlier_results(
    tmp_path, monkeypatch, compose_cfg
):
    run_dir = tmp_path / "run"
    overrides = ("experiment=smoke", "train.epochs=1", "finetune.epochs=0", "train.progress=false")
    run_experiment(compose_cfg(*overrides), run_dir)
    earlier = (run_dir / "metrics.json").read_bytes()
    assert _read(run_dir / "metrics.json")["status"] == "completed"

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)  # every atomic write flushes before its rename
    with pytest.raises(OutputError) as info:
        run_experiment(compose_cfg(*overrides, "resume=false"), run_dir)
    message = str(info.value)
    assert message.startswith(f"cannot write {run_dir}") and "No space left on device" in message
    assert (run_dir / "metrics.json").read_bytes() == earlier
    assert not list(run_dir.glob(".*.tmp"))  # no half-written temporary file left behind


def test_an_output_folder_that_cannot_be_created_is_one_clear_error(sparsenet_cli, tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the output folder should go")
    run_dir = blocker / "run"
    proc = sparsenet_cli("experiment=smoke", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    # Hydra creates the run folder: the error is the OS's, named and on one line.
    assert proc.stderr == f"sparsenet: error: {run_dir}: {os.strerror(errno.ENOTDIR)}\n"
    assert blocker.read_text() == "a file where the output folder should go"
