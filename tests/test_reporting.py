"""Sweep summaries and sparsenet-report, checked against the runs' own metrics.json.

One real multirun on synthetic data (regularizer=none,group_lasso x 2 strengths x 2 seeds = 8
runs) feeds every test; expected means and standard deviations are recomputed here with the
standard library, from the metrics.json files, not from the code under test.
"""

import csv
import json
import math
import shutil
import statistics
from importlib.metadata import entry_points
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sparsenet.reporting import build_summary, find_runs, format_stage_table, swept_keys
from sparsenet.reporting.cli import main as report_main
from sparsenet.reporting.plots import pareto_front, plot_training_curves
from sparsenet.reporting.runs import Run

STRENGTHS = (1e-4, 1e-2)
PNG_MAGIC, PDF_MAGIC = b"\x89PNG\r\n\x1a\n", b"%PDF-"


@pytest.fixture(scope="module")
def sweep(sparsenet_cli, tmp_path_factory) -> tuple[Path, str]:
    """The sweep folder and what the sweep printed."""
    cwd = tmp_path_factory.mktemp("reporting")
    sweep_dir = cwd / "sweep"
    proc = sparsenet_cli(
        "-m",
        "experiment=smoke",
        "regularizer=none,group_lasso",
        "regularizer.strength=" + ",".join(map(str, STRENGTHS)),
        "seed=0,1",
        "train.epochs=1",
        "finetune.epochs=0",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep_dir, proc.stdout


def read_runs(sweep_dir: Path) -> list[dict]:
    """Each run's metrics plus the regularizer choice typed on the command line."""
    runs = []
    for path in sorted(sweep_dir.glob("*/metrics.json")):
        metrics = json.loads(path.read_text())
        overrides = yaml.safe_load((path.parent / ".hydra" / "overrides.yaml").read_text())
        choice = next(o.split("=", 1)[1] for o in overrides if o.startswith("regularizer="))
        runs.append({"dir": path.parent, "choice": choice, **metrics})
    return runs


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def by_config(runs: list[dict]) -> dict[tuple[str, float], list[dict]]:
    groups: dict[tuple[str, float], list[dict]] = {}
    for run in runs:
        key = (run["choice"], run["config"]["regularizer"]["strength"])
        groups.setdefault(key, []).append(run)
    return groups


def expected_columns(run: dict) -> dict[str, float]:
    """The summary's per-run columns, worked out from the metrics.json by hand."""
    stages = run["stages"]
    dense = stages["train"]
    out = {}
    for stage, s in stages.items():
        out[f"{stage}.test_acc"] = s["test_acc"]
        out[f"{stage}.params"] = s["params"]
        out[f"{stage}.params_pct"] = 100 * s["params"] / dense["params"]
        out[f"{stage}.macs_pct"] = 100 * s["macs"] / dense["macs"]
        out[f"{stage}.weight_sparsity"] = s["weight_sparsity"]
        out[f"{stage}.wall_s"] = s["wall_s"]
        out[f"{stage}.latency_ms"] = s["latency_ms"]
        for layer in s["layers"]:
            out[f"{stage}.units.{layer['name']}"] = layer["units_kept"]
    return out


def assert_row_matches(row: dict, group: list[dict]) -> None:
    per_run = [expected_columns(run) for run in group]
    for column in per_run[0]:
        values = [r[column] for r in per_run]
        assert float(row[column]) == pytest.approx(statistics.mean(values)), column
        assert float(row[column + "_std"]) == pytest.approx(statistics.stdev(values)), column


def test_sweep_writes_the_summary_of_its_runs(sweep):
    sweep_dir, stdout = sweep
    runs = read_runs(sweep_dir)
    assert len(runs) == 8 and all(r["status"] == "completed" for r in runs)
    # regularizer=none ignores its strength but still records it: 2 x 2 configurations.
    groups = by_config(runs)
    assert len(groups) == 4 and all(len(g) == 2 for g in groups.values())

    rows = read_csv(sweep_dir / "summary.csv")
    assert list(rows[0])[:3] == ["regularizer", "regularizer.strength", "seeds"]
    assert len(rows) == 4
    seen = set()
    for row in rows:
        key = (row["regularizer"], float(row["regularizer.strength"]))
        seen.add(key)
        assert int(row["seeds"]) == 2
        assert_row_matches(row, groups[key])
    assert seen == set(groups)
    # sorted by the keys: group_lasso before none, strengths ascending
    assert [(r["regularizer"], float(r["regularizer.strength"])) for r in rows] == sorted(seen)

    md = (sweep_dir / "summary.md").read_text()
    assert "## train" in md and "## prune" in md and "## finetune" in md
    assert "8 completed runs in 4 configurations" in md and "Failed" not in md
    tex = (sweep_dir / "summary.tex").read_text()
    assert tex.count("\\begin{tabular}") == 3 and "test\\_acc" in tex and "$\\pm$" in tex
    assert not (sweep_dir / "failed.csv").exists()
    # the end of the sweep prints the markdown table
    assert "| regularizer | regularizer.strength | seeds | test_acc |" in stdout
    assert (sweep_dir / "accuracy_vs_params.png").read_bytes().startswith(PNG_MAGIC)
    assert (sweep_dir / "accuracy_vs_params.pdf").read_bytes().startswith(PDF_MAGIC)


def test_markdown_cells_are_mean_and_std(sweep):
    sweep_dir, _ = sweep
    group = by_config(read_runs(sweep_dir))[("group_lasso", STRENGTHS[0])]
    acc = [r["stages"]["finetune"]["test_acc"] for r in group]
    cell = f"{statistics.mean(acc):.2f} ± {statistics.stdev(acc):.2f}"
    line = next(
        line
        for line in (sweep_dir / "summary.md").read_text().split("## finetune")[1].splitlines()
        if line.startswith(f"| group_lasso | {STRENGTHS[0]} |")
    )
    assert line.split(" | ")[3] == cell


@pytest.fixture()
def results_with_failures(sweep, tmp_path) -> Path:
    """The sweep copied beside a run that failed and one that never wrote metrics.json."""
    sweep_dir, _ = sweep
    cluster = tmp_path / "cluster"
    shutil.copytree(sweep_dir, cluster / "sweep", ignore=shutil.ignore_patterns("summary.*"))
    failed = cluster / "other" / "diverged"
    failed.mkdir(parents=True)
    one = read_runs(sweep_dir)[0]
    (failed / "metrics.json").write_text(
        json.dumps({"status": "failed", "error": "loss is nan", "config": one["config"]})
    )
    unfinished = cluster / "other" / "killed"
    (unfinished / ".hydra").mkdir(parents=True)
    (unfinished / ".hydra" / "overrides.yaml").write_text("- regularizer=group_lasso\n")
    return cluster


def test_report_rebuilds_the_table_and_lists_failed_runs(sweep, results_with_failures, capsys):
    sweep_dir, _ = sweep
    out = results_with_failures / "report"
    args = [str(results_with_failures / "sweep"), str(results_with_failures / "other")]
    assert report_main([*args, "--out", str(out), "--format", "csv", "md", "print"]) == 0

    expected = pd.read_csv(sweep_dir / "summary.csv")
    pd.testing.assert_frame_equal(pd.read_csv(out / "summary.csv"), expected)
    failed = {Path(r["run"]).name: r for r in read_csv(out / "failed.csv")}
    assert set(failed) == {"diverged", "killed"}
    assert (
        failed["diverged"]["status"] == "failed" and failed["diverged"]["reason"] == "loss is nan"
    )
    assert (
        failed["killed"]["status"] == "unfinished"
        and "no metrics.json" in failed["killed"]["reason"]
    )
    assert failed["killed"]["overrides"] == "regularizer=group_lasso"
    md = (out / "summary.md").read_text()
    assert "## Failed or unfinished runs (2)" in md and "loss is nan" in md
    assert md in capsys.readouterr().out


def test_report_groups_and_selects_columns(sweep, tmp_path):
    sweep_dir, _ = sweep
    runs = read_runs(sweep_dir)
    out = tmp_path / "report"
    argv = [str(sweep_dir), "-o", str(out), "-f", "csv", "-g", "regularizer", "-c", "*.test_acc"]
    assert report_main(argv) == 0
    rows = read_csv(out / "summary.csv")
    assert list(rows[0]) == [
        "regularizer",
        "seeds",
        *(
            f"{s}.test_acc{suffix}"
            for s in ("train", "prune", "finetune")
            for suffix in ("", "_std")
        ),
    ]
    for row in rows:
        acc = [
            r["stages"]["finetune"]["test_acc"] for r in runs if r["choice"] == row["regularizer"]
        ]
        assert int(row["seeds"]) == 4
        assert float(row["finetune.test_acc"]) == pytest.approx(statistics.mean(acc))


def test_baseline_comparison(sweep, tmp_path):
    sweep_dir, _ = sweep
    runs = read_runs(sweep_dir)
    base = next(r for r in runs if r["choice"] == "none")
    out = tmp_path / "report"
    argv = [str(sweep_dir), "--baseline", str(base["dir"]), "-o", str(out), "-f", "csv"]
    argv += ["--columns", "vs_baseline.*"]
    assert report_main(argv) == 0
    b = base["stages"]["finetune"]
    for row in read_csv(out / "summary.csv"):
        group = by_config(runs)[(row["regularizer"], float(row["regularizer.strength"]))]
        finals = [r["stages"]["finetune"] for r in group]
        delta = [f["test_acc"] - b["test_acc"] for f in finals]
        compression = [b["params"] / f["params"] for f in finals]
        macs = [b["macs"] / f["macs"] for f in finals]
        assert float(row["vs_baseline.delta_acc"]) == pytest.approx(statistics.mean(delta))
        assert float(row["vs_baseline.delta_acc_std"]) == pytest.approx(statistics.stdev(delta))
        assert float(row["vs_baseline.compression"]) == pytest.approx(statistics.mean(compression))
        assert float(row["vs_baseline.mac_reduction"]) == pytest.approx(statistics.mean(macs))


def test_report_plots_are_valid_png_and_pdf(sweep, tmp_path):
    sweep_dir, _ = sweep
    out = tmp_path / "figs"
    plots = ["accuracy-params", "accuracy-macs", "units", "curves"]
    argv = [str(sweep_dir), "-f", "print", "-o", str(out), "-p", *plots, "-r", "*seed=0*"]
    assert report_main(argv) == 0
    for stem in ("accuracy_vs_params", "accuracy_vs_macs", "units_per_layer", "training_curves"):
        assert (out / f"{stem}.png").read_bytes().startswith(PNG_MAGIC), stem
        assert (out / f"{stem}.pdf").read_bytes().startswith(PDF_MAGIC), stem
    assert not (out / "summary.csv").exists()  # -f print: no table files


def test_training_curves_show_zero_groups_when_recorded(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    pd.DataFrame(
        {
            "stage": ["train"] * 3 + ["finetune"] * 2,
            "epoch": [1, 2, 3, 1, 2],
            "loss": [2.0, 1.0, 0.5, 0.4, 0.3],
            "reg": [3.0, 2.0, 1.5, 0.0, 0.0],
            "train_acc": [50, 70, 80, 85, 90],
            "test_acc": [48, 66, 75, 80, 84],
            "zero_groups": [0.0, 0.2, 0.4, 0.4, 0.4],
        }
    ).to_csv(run_dir / "history.csv", index=False)
    paths = plot_training_curves([Run(path=run_dir)], tmp_path / "curves")
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert paths[0].read_bytes().startswith(PNG_MAGIC)


def test_unknown_column_and_missing_folder_are_clear_errors(sweep, tmp_path, capsys):
    sweep_dir, _ = sweep
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(sweep_dir), "--columns", "nothing.like.this"])
    assert exit_info.value.code == 2 and "no column matches" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report_main([str(tmp_path / "absent")])
    assert "no such folder" in capsys.readouterr().err


def test_help_documents_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        report_main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--columns", "--group-by", "--format", "--out", "--baseline", "--plot"):
        assert option in text
    assert "vs_baseline.compression" in text and "Pareto" in text
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("sparsenet-report") == "sparsenet.reporting.cli:main"


def test_swept_keys_come_from_overrides_then_configs():
    def run(overrides: dict, config: dict, choices: dict | None = None) -> Run:
        return Run(path=Path("."), overrides=overrides, config=config, choices=choices or {})

    runs = [
        run({"regularizer": "none", "seed": "0"}, {"seed": 0, "lr": 0.1}, {"regularizer": "none"}),
        run({"seed": "1"}, {"seed": 1, "lr": 0.1}, {"regularizer": "group_lasso"}),
    ]
    assert swept_keys(runs) == ["regularizer", "seed"]
    # no Hydra records: every config value that differs
    bare = [run({}, {"seed": 0, "opt": {"lr": 0.1}}), run({}, {"seed": 0, "opt": {"lr": 0.2}})]
    assert swept_keys(bare) == ["opt.lr"]
    summary = build_summary(bare)
    assert summary.keys == ["opt.lr"] and len(summary.failed) == 2  # no metrics.json
    # where a run is tracked is no setting: logger=... and every logger.* key alike
    tracked = [
        run({"logger": "mlflow", "logger.mlflow.experiment": "a", "seed": "0"}, {"seed": 0}),
        run({"logger": "tensorboard", "+logger.mlflow.local_dir": "b", "seed": "1"}, {"seed": 1}),
    ]
    assert swept_keys(tracked) == ["seed"]


def test_pareto_front_by_hand():
    # (kept %, accuracy): b beats a on both axes; c and d trade off; e ties d's accuracy with more
    points = [(50, 90.0), (40, 92.0), (10, 85.0), (100, 99.0), (100, 99.0 - 1e-9)]
    assert pareto_front(points) == [2, 1, 3]


def test_stage_table_of_one_run(sweep):
    sweep_dir, _ = sweep
    run = find_runs([sweep_dir])[0]
    text = format_stage_table(run.metrics)
    assert text.splitlines()[2].startswith("train") and "20-50-500-10" in text
    assert math.isfinite(run.metrics["summary"]["compression"])


def test_runs_missing_a_swept_key_form_their_own_row():
    """Two sweeps merged into one folder: only some runs set the strength (pandas 3 regression)."""

    def run(name: str, overrides: dict, acc: float) -> Run:
        stage = {"test_acc": acc, "params": 100, "macs": 1000, "weight_sparsity": 0.0}
        metrics = {"status": "completed", "stages": {"train": stage}}
        return Run(path=Path(name), metrics=metrics, overrides=overrides)

    runs = [
        run("a", {"experiment": "ssl", "seed": "0", "regularizer.strength": "0.003"}, 99.0),
        run("b", {"experiment": "ssl", "seed": "1", "regularizer.strength": "0.003"}, 98.0),
        run("c", {"experiment": "ssl", "seed": "0"}, 97.0),
    ]
    table = build_summary(runs).table
    assert len(table) == 2
    unset = table["regularizer.strength"].isna()
    assert table[~unset]["train.test_acc"].item() == pytest.approx(98.5)
    assert table[unset]["train.test_acc"].item() == pytest.approx(97.0)


def test_under_torchrun_only_rank_0_writes_the_sweep_summary(sweep, tmp_path, monkeypatch):
    from sparsenet.reporting.callback import SweepSummary

    folder = tmp_path / "sweep"
    shutil.copytree(sweep[0], folder)
    for name in ("summary.csv", "summary.md"):
        (folder / name).unlink()
    callback = SweepSummary(plot=False, echo=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    callback._folder = folder
    callback._summarize()
    assert not (folder / "summary.csv").exists()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    callback._folder = folder
    callback._summarize()
    assert (folder / "summary.csv").exists() and (folder / "summary.md").exists()
