"""scripts/paper_results.py on a real (synthetic-data) sweep of a bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPARSENET_DATA": str(cwd / "no-data-here")}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_results_page_folds_seeds_and_marks_shortened_runs(tmp_path):
    sweep = [
        sys.executable,
        "-m",
        "sparsenet",
        "-m",
        "experiment=smoke",
        "report.latency_repeats=1",
    ]
    _run([*sweep, "seed=0,1"], tmp_path)  # the bundle's own schedule, two seeds
    _run([*sweep, "train.epochs=0", "seed=0"], tmp_path)  # a shorter schedule than the bundle's
    sweep_dir = tmp_path / "outputs" / "sweeps" / "smoke"
    timed = [sweep_dir / f"experiment=smoke,report.latency_repeats=1,seed={s}" for s in (0, 1)]
    latency = str(REPO / "scripts" / "run_latency.py")
    _run([sys.executable, latency, *map(str, timed), "--repeats", "3", "--warmup", "1"], tmp_path)
    out = tmp_path / "results.md"
    script = str(REPO / "scripts" / "paper_results.py")
    _run([sys.executable, script, "outputs", "--out", str(out)], tmp_path)
    text = out.read_text()

    runs = sorted(sweep_dir.glob("*seed=*/metrics.json"))
    metrics = {p.parent.name: json.loads(p.read_text()) for p in runs}
    seeds = [metrics[f"experiment=smoke,report.latency_repeats=1,seed={s}"] for s in (0, 1)]
    acc = [m["summary"]["test_acc"] for m in seeds]
    mean = sum(acc) / 2
    std = abs(acc[0] - acc[1]) / 2**0.5  # sample std of two values
    cut = [m["stages"]["prune"]["test_acc"] for m in seeds]
    timings = [json.loads((run / "latency.json").read_text())["batch_sizes"] for run in timed]
    b1, b64 = ([t[b]["median_ms"] for t in timings] for b in ("1", "64"))
    bundle_row = next(
        line for line in text.splitlines() if line.startswith("| `experiment=smoke`, `report")
    )
    cells = [c.strip() for c in bundle_row.strip("|").split("|")]
    assert cells[1] == "2" and cells[2] == "no"
    assert cells[4] == f"{sum(cut) / 2:.2f} ± {abs(cut[0] - cut[1]) / 2**0.5:.2f}"  # after the cut
    assert cells[5] == f"{mean:.2f} ± {std:.2f}"
    b1_cell = f"{sum(b1) / 2:.2f} ± {abs(b1[0] - b1[1]) / 2**0.5:.2f}"
    assert cells[9] == f"{b1_cell} / {sum(b64) / 2:.2f} ± {abs(b64[0] - b64[1]) / 2**0.5:.2f}"
    short_cells = next(line for line in text.splitlines() if "`train.epochs=0`" in line)
    assert short_cells.split("|")[10].strip() == "— / —"  # not timed
    short_row = next(line for line in text.splitlines() if "`train.epochs=0`" in line)
    assert "train.epochs=0 (bundle: 1)" in short_row
    assert "sparsenet -m experiment=smoke report.latency_repeats=1 seed=0,1" in text

    # the run records alone (outputs/ gone) rebuild the page; a bundle section of the old page
    # whose runs have no records is carried over verbatim, and the page says so
    assert (tmp_path / "results" / "smoke" / "smoke").is_dir()
    old_section = "### `experiment=ancient`\n\n| a row measured long ago |\n"
    out.write_text(text.replace("## Every bundle\n", "## Every bundle\n\n" + old_section))
    for folder in (tmp_path / "outputs").iterdir():
        subprocess.run(["rm", "-r", str(folder)], check=True)
    _run([sys.executable, script, "results", "--out", str(out)], tmp_path)
    rebuilt = out.read_text()
    assert old_section in rebuilt
    assert "Carried over from the previous version of this page" in rebuilt
    assert bundle_row in rebuilt and short_row in rebuilt  # latency.json kept with the records

    # a run folder carried between sessions in results/in_progress/ is not a second record
    kept = next((tmp_path / "results" / "smoke" / "smoke").glob("*seed=0"))
    subprocess.run(["cp", "-r", str(kept), str(tmp_path / "results" / "in_progress")], check=True)
    _run([sys.executable, script, "results", "--out", str(out)], tmp_path)
    assert bundle_row in out.read_text()
