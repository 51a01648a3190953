"""Bad runs never stop a summary: sparsenet-report and the sweep-end callback summarize the
good runs and list every malformed metrics.json in failed.csv with a one-line reason; an --out
folder that cannot be written is one line and exit status 2, earlier files left as they were.

Every metrics.json here is written by hand from `good_metrics` (the shape a completed
`experiment=smoke` run writes, two layers instead of four); nothing trains.
"""

from __future__ import annotations

import copy
import csv
import errno
import json
import logging
import os
import statistics
from pathlib import Path

import pytest

from sparsenet.reporting.callback import SweepSummary
from sparsenet.reporting.cli import main as report_main
from sparsenet.reporting.runs import METRICS_SCHEMA, load_run

ACC = {0: 98.0, 1: 97.0}  # the good runs' final accuracy per seed


def stage(acc: float, params: int, macs: int, units: tuple[int, int]) -> dict:
    layers = [
        {"name": name, "units_kept": kept, "units_total": total}
        for name, kept, total in zip(("fc1", "fc2"), units, (300, 10), strict=True)
    ]
    return {
        "test_loss": 0.1,
        "test_acc": acc,
        "params": params,
        "nonzero_params": params,
        "weight_sparsity": 0.25,
        "macs": macs,
        "layers": layers,
        "latency_ms": 1.5,
        "wall_s": 2.0,
    }


def good_metrics(seed: int) -> dict:
    acc = ACC.get(seed, 90.0)
    stages = {
        "train": stage(acc - 1, 1000, 2000, (300, 10)),
        "prune": stage(acc - 2, 400, 800, (120, 10)),
        "finetune": stage(acc, 400, 800, (120, 10)),
    }
    return {
        "status": "completed",
        "config": {"seed": seed, "regularizer": {"strength": 0.01}},
        "stages": stages,
        "summary": {
            "final_stage": "finetune",
            "test_acc": acc,
            "params_kept_pct": 40.0,
            "macs_kept_pct": 40.0,
            "compression": 2.5,
            "mac_reduction": 2.5,
            "speedup": 1.0,
            "total_wall_s": 6.0,
        },
    }


def write_run(folder: Path, metrics: object, seed: int, overrides: list[str] | None = None):
    """A run folder as a sweep leaves it: metrics.json (a dict, or raw text) and the
    overrides Hydra recorded."""
    (folder / ".hydra").mkdir(parents=True)
    text = metrics if isinstance(metrics, str) else json.dumps(metrics)
    (folder / "metrics.json").write_text(text)
    lines = overrides or ["regularizer.strength=0.01", f"seed={seed}"]
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in lines))


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def spoil(path: str, value: object):
    """A change to good metrics: set (or, with DELETE, remove) the value at a dotted path."""

    def change(metrics: dict) -> dict:
        *parents, last = path.split(".")
        node = metrics
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
        return metrics

    return change


DELETE = object()

# (id, metrics of the bad run (a change to good metrics, or raw file text), status, reason)
BAD_RUNS = [
    ("missing-field", spoil("stages.finetune.test_acc", DELETE), "invalid",
     "metrics.json: missing stages.finetune.test_acc"),
    ("missing-params", spoil("stages.train.params", DELETE), "invalid",
     "metrics.json: missing stages.train.params"),
    ("params-0", spoil("stages.train.params", 0), "invalid",
     "metrics.json: stages.train.params is 0 (must be > 0)"),
    ("final-params-0", spoil("stages.finetune.params", 0), "invalid",
     "metrics.json: stages.finetune.params is 0 (must be > 0)"),
    ("non-numeric", spoil("stages.finetune.test_acc", "abc"), "invalid",
     "metrics.json: stages.finetune.test_acc='abc' is not a number"),
    ("null", spoil("stages.prune.latency_ms", None), "invalid",
     "metrics.json: stages.prune.latency_ms=null is not a number"),
    ("boolean", spoil("stages.train.macs", True), "invalid",
     "metrics.json: stages.train.macs=true is not a number"),
    ("nan", spoil("stages.finetune.test_acc", float("nan")), "invalid",
     "metrics.json: stages.finetune.test_acc=NaN is not a finite number"),
    ("accuracy-out-of-range", spoil("stages.finetune.test_acc", 250.0), "invalid",
     "metrics.json: stages.finetune.test_acc is 250.0 (must be 0 to 100)"),
    ("missing-summary-field", spoil("summary.test_acc", DELETE), "invalid",
     "metrics.json: missing summary.test_acc"),
    ("units-not-a-number", spoil("stages.prune.layers.0.units_kept", "12"), "invalid",
     "metrics.json: stages.prune.layers.0.units_kept='12' is not a number"),
    ("layer-not-an-object", spoil("stages.train.layers", [3]), "invalid",
     "metrics.json: stages.train.layers.0 is not an object (a number)"),
    ("stages-a-list", spoil("stages", [1, 2]), "invalid",
     "metrics.json: stages is not an object (a list)"),
    ("stage-not-an-object", spoil("stages.prune", "pruned"), "invalid",
     "metrics.json: stages.prune is not an object (a string)"),
    ("no-stages", spoil("stages", {}), "invalid", "metrics.json: stages is empty"),
    ("newer-schema", spoil("schema", 7), "invalid",
     f"metrics.json: schema version 7 is newer than this sparsenet reads ({METRICS_SCHEMA})"),
    ("schema-not-a-number", spoil("schema", "v2"), "invalid",
     "metrics.json: schema version 'v2' is not a whole number"),
    ("not-json", "{'status': 'completed'", "invalid", "metrics.json: not JSON: "),
    ("empty-file", "", "invalid", "metrics.json: not JSON: "),
    ("deeply-nested", "[" * 100_000 + "]" * 100_000, "invalid", "metrics.json: not JSON: "),
    ("a-list", "[1, 2, 3]", "invalid", "metrics.json: not a JSON object (a list)"),
    ("not-utf8", b"\xff\xfe{}", "invalid", "metrics.json: not JSON: "),
]  # fmt: skip


def bad_metrics(change) -> bytes:
    """The bad run's metrics.json: raw bytes or text, or good metrics changed."""
    if isinstance(change, bytes):
        return change
    if isinstance(change, str):
        return change.encode()
    return json.dumps(change(copy.deepcopy(good_metrics(2)))).encode()


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    """Two good seeds of one configuration (the first without a "schema" key: version 1)."""
    folder = tmp_path / "sweep"
    old = good_metrics(0)
    write_run(folder / "seed=0", old, 0)
    write_run(folder / "seed=1", {**good_metrics(1), "schema": METRICS_SCHEMA}, 1)
    return folder


def assert_good_runs_summarized(out: Path) -> None:
    rows = read_csv(out / "summary.csv")
    assert len(rows) == 1 and int(rows[0]["seeds"]) == 2, rows
    acc = list(ACC.values())
    assert float(rows[0]["finetune.test_acc"]) == pytest.approx(statistics.mean(acc))
    assert float(rows[0]["finetune.test_acc_std"]) == pytest.approx(statistics.stdev(acc))
    assert float(rows[0]["prune.params_pct"]) == pytest.approx(40.0)


@pytest.mark.parametrize(
    ("change", "status", "reason"),
    [case[1:] for case in BAD_RUNS],
    ids=[case[0] for case in BAD_RUNS],
)
def test_a_bad_run_goes_to_failed_csv_with_its_reason(sweep_dir, tmp_path, change, status, reason):
    """The bad run is a third seed of the good runs' configuration: it is neither averaged in
    (`seeds` stays 2) nor dropped silently."""
    path = sweep_dir / "seed=2" / "metrics.json"
    write_run(path.parent, "", 2)
    path.write_bytes(bad_metrics(change))
    out = tmp_path / "report"
    assert report_main([str(sweep_dir), "--out", str(out), "-f", "csv", "md"]) == 0
    assert_good_runs_summarized(out)
    failed = read_csv(out / "failed.csv")
    assert [(r["run"], r["status"]) for r in failed] == [("seed=2", status)]
    assert failed[0]["reason"].startswith(reason), failed[0]["reason"]
    assert "\n" not in failed[0]["reason"] and len(failed[0]["reason"]) < 300
    assert "## Failed or unfinished runs (1)" in (out / "summary.md").read_text()


def test_metrics_without_a_schema_are_version_1(sweep_dir):
    assert METRICS_SCHEMA == 1
    old, new = load_run(sweep_dir / "seed=0"), load_run(sweep_dir / "seed=1")
    assert "schema" not in old.metrics and new.metrics["schema"] == 1
    assert old.completed and new.completed and old.problem is None


def test_the_sweep_end_summary_lists_every_bad_run(sweep_dir, caplog):
    """Hydra's callback on a sweep folder holding every kind of bad run at once."""
    for n, (name, change, _, _) in enumerate(BAD_RUNS, start=2):
        write_run(sweep_dir / name, "", n)
        (sweep_dir / name / "metrics.json").write_bytes(bad_metrics(change))
    callback = SweepSummary(plot=False, echo=False)
    callback._folder = sweep_dir
    with caplog.at_level(logging.WARNING):
        callback._summarize()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert_good_runs_summarized(sweep_dir)
    failed = {r["run"]: r for r in read_csv(sweep_dir / "failed.csv")}
    assert set(failed) == {case[0] for case in BAD_RUNS}
    for name, _, status, reason in BAD_RUNS:
        assert failed[name]["status"] == status and failed[name]["reason"].startswith(reason)


def test_garbled_hydra_records_do_not_stop_the_summary(sweep_dir, tmp_path):
    """A good metrics.json beside unreadable Hydra records: summarized from its own config."""
    run = sweep_dir / "seed=0" / ".hydra"
    (run / "hydra.yaml").write_text("- a list\n- not Hydra's mapping\n")
    (run / "config.yaml").write_text("[1, 2]\n")
    other = sweep_dir / "seed=1" / ".hydra"
    (other / "overrides.yaml").write_text("- regularizer.strength=[0.01\n- seed=1\n")
    (other / "hydra.yaml").write_text("hydra: {runtime: {choices: [1, 2]}}\n")
    out = tmp_path / "report"
    assert report_main([str(sweep_dir), "--out", str(out), "-f", "csv"]) == 0
    rows = read_csv(out / "summary.csv")
    assert sum(int(r["seeds"]) for r in rows) == 2
    assert not (out / "failed.csv").exists()


def test_a_malformed_baseline_is_one_clear_error(sweep_dir, tmp_path, capsys):
    base = tmp_path / "dense"
    write_run(base, json.dumps(spoil("stages.finetune.test_acc", DELETE)(good_metrics(0))), 0)
    with pytest.raises(SystemExit) as info:
        report_main([str(sweep_dir), "--baseline", str(base), "-f", "print"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (  # after argparse's usage lines
        f"sparsenet-report: error: baseline {base} cannot be used: "
        "metrics.json: missing stages.finetune.test_acc"
    )


# --- an --out folder that cannot be written ---------------------------------------------------


def refuse_writes_in(folder: Path, monkeypatch) -> None:
    """Make `folder` read-only. chmod does not stop root, so as root creating a file in it is
    refused the way the kernel refuses it in a read-only folder (EACCES)."""
    folder.chmod(0o555)
    if os.geteuid() != 0:
        return
    real_open = os.open

    def guarded(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and Path(os.fsdecode(path)).parent.resolve() == folder.resolve():
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded)


def earlier_report(out: Path) -> dict[str, bytes]:
    out.mkdir()
    files = {"summary.csv": b"earlier,table\n1,2\n", "summary.md": b"# earlier\n"}
    for name, data in files.items():
        (out / name).write_bytes(data)
    return files


def assert_one_line_exit_2(capsys, info, *fragments: str) -> str:
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n"), err  # one line, no usage, no traceback
    line = err.rstrip("\n")
    assert line.startswith("sparsenet-report: error: "), err
    for fragment in fragments:
        assert fragment in line, line
    return line


def test_a_read_only_out_folder_is_one_line_and_leaves_earlier_files(
    sweep_dir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "report"
    earlier = earlier_report(out)
    refuse_writes_in(out, monkeypatch)
    try:
        with pytest.raises(SystemExit) as info:
            report_main([str(sweep_dir), "--out", str(out), "--plot", "accuracy-params"])
    finally:
        monkeypatch.undo()
        out.chmod(0o755)
    assert_one_line_exit_2(capsys, info, f"cannot write to {out}", os.strerror(errno.EACCES))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier


def test_a_full_disk_is_one_line_and_leaves_earlier_files(sweep_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "report"
    earlier = earlier_report(out)

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(SystemExit) as info:
        report_main([str(sweep_dir), "--out", str(out)])
    monkeypatch.undo()
    assert_one_line_exit_2(capsys, info, f"cannot write to {out}", os.strerror(errno.ENOSPC))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier  # no .tmp left either


@pytest.mark.parametrize("where", ["under-a-file", "is-a-file"])
def test_an_out_folder_that_cannot_be_created_is_one_line(sweep_dir, tmp_path, capsys, where):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the report folder should go")
    out = blocker / "report" if where == "under-a-file" else blocker
    with pytest.raises(SystemExit) as info:
        report_main([str(sweep_dir), "--out", str(out), "-f", "csv"])
    reason = os.strerror(errno.ENOTDIR) if where == "under-a-file" else "not a folder"
    assert_one_line_exit_2(capsys, info, f"cannot write to {out}", reason)
    assert blocker.read_text() == "a file where the report folder should go"
