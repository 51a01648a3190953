"""`sparsenet-report PATH...`: the sweep tables and plots from folders of finished runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sparsenet.errors import OutputError
from sparsenet.reporting.export import FORMATS, ensure_writable, format_markdown, write_summary
from sparsenet.reporting.fronts import (
    build_fronts,
    compare_fronts,
    format_fronts,
    format_fronts_markdown,
    front_points,
    write_fronts,
)
from sparsenet.reporting.runs import find_runs, load_run, select_runs
from sparsenet.reporting.summary import build_summary, select_metrics

PLOTS = ("accuracy-params", "accuracy-macs", "fronts-macs", "fronts-params", "units", "curves")
EPILOG = """\
columns (per stage S = train, prune, finetune):
  S.test_acc S.params S.params_pct S.macs S.macs_pct S.weight_sparsity
  S.units.<layer> S.wall_s S.latency_ms, and with --baseline:
  vs_baseline.delta_acc vs_baseline.compression vs_baseline.mac_reduction
  Each is the mean over the seeds of a configuration; <column>_std is the standard deviation
  and `seeds` the number of runs.

plots (PNG and PDF in --out):
  accuracy-params  final accuracy vs % parameters kept, per regularizer, Pareto front marked
  accuracy-macs    the same vs % MACs kept
  fronts-macs      every configuration per method with each method's own front
  fronts-params    the same vs % parameters kept

fronts (--fronts macs|params, --method KEY, --budgets B ...): per method, the Pareto front of
  final accuracy vs % MACs (or parameters) kept over the configurations (seeds folded), the
  front's mean accuracy over the cost range all fronts cover (log scale), and accuracy at each
  budget B (% of the dense cost) interpolated on the front, ± the seeds' std; written as
  fronts_<measure>.csv/md/tex (see sparsenet/reporting/fronts.py).
  units            units kept per layer of the --runs chosen (default: every completed run)
  curves           loss, accuracy, regularizer (and zero groups) per epoch of the --runs chosen

examples:
  sparsenet-report outputs/sweeps/default                 # print the tables
  sparsenet-report outputs/sweeps/a outputs/sweeps/b --out report --format csv md tex
  sparsenet-report cluster-results/ --columns 'finetune.*' --group-by regularizer
  sparsenet-report sweep/ --baseline outputs/runs/dense --out report
  sparsenet-report sweep/ --plot accuracy-params curves --runs '*group_lasso*seed=0*' --out figs
  sparsenet-report sweep/ --fronts macs --budgets 10 25 50 --plot fronts-macs --out report
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparsenet-report",
        description=(
            "Rebuild the sweep summary (one row per configuration, seeds folded into "
            "mean ± std) from every metrics.json found under PATH (searched recursively). "
            "Runs that failed or did not finish are listed separately."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="folders of runs, or metrics.json files"
    )
    parser.add_argument(
        "-f",
        "--format",
        nargs="+",
        choices=(*FORMATS, "print"),
        metavar="FORMAT",
        help="csv, md, tex (files in --out) and/or print (markdown to the terminal); "
        "default: print, or csv md tex when --out is given",
    )
    parser.add_argument("-o", "--out", type=Path, help="folder for the files (created if needed)")
    parser.add_argument(
        "-c",
        "--columns",
        nargs="+",
        metavar="PATTERN",
        help="metric columns to keep, as shell patterns: 'finetune.*' '*.test_acc' (default: all)",
    )
    parser.add_argument(
        "-g",
        "--group-by",
        nargs="+",
        metavar="KEY",
        help="config keys that make a configuration, e.g. regularizer regularizer.strength "
        "(default: the keys that differ between the runs, except seed)",
    )
    parser.add_argument(
        "-b",
        "--baseline",
        type=Path,
        metavar="RUN",
        help="a completed run (folder or metrics.json) to compare with: adds delta accuracy "
        "and compression / MAC reduction against its final stage",
    )
    parser.add_argument(
        "-p",
        "--plot",
        nargs="+",
        choices=PLOTS,
        default=[],
        metavar="PLOT",
        help=f"figures to draw: {', '.join(PLOTS)} (see below)",
    )
    parser.add_argument(
        "--fronts",
        nargs="+",
        choices=("macs", "params"),
        default=[],
        metavar="MEASURE",
        help="compare the methods' accuracy fronts against %% MACs and/or parameters kept",
    )
    parser.add_argument(
        "--method",
        metavar="KEY",
        help="the grouping key that names a method (default: regularizer)",
    )
    parser.add_argument(
        "--budgets",
        nargs="+",
        type=float,
        default=[],
        metavar="B",
        help="budgets (%% of the dense cost) at which to compare fronts' accuracy",
    )
    parser.add_argument(
        "-r",
        "--runs",
        nargs="+",
        metavar="PATTERN",
        help="for the units and curves plots: run folders matching these shell patterns",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    formats = args.format or (list(FORMATS) if args.out else ["print"])
    out = args.out or Path(".")
    paths = [Path(p) for p in args.paths]
    try:
        runs = find_runs(paths)
        baseline = load_run(args.baseline) if args.baseline else None
        root = paths[0].resolve() if len(paths) == 1 and paths[0].is_dir() else None
        summary = build_summary(runs, group_by=args.group_by, baseline=baseline, root=root)
        if args.columns:
            summary = select_metrics(summary, args.columns)
        needs_fronts = set(args.fronts) | {p.split("-")[1] for p in args.plot if "fronts" in p}
        fronts = {m: build_fronts(summary, m, args.method) for m in sorted(needs_fronts)}
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    if not runs:
        parser.error(f"no run folders (metrics.json) under {', '.join(map(str, paths))}")

    compared = {m: compare_fronts(fronts[m], args.budgets) for m in args.fronts}
    if "print" in formats:
        print(format_markdown(summary), end="")
        for measure, (comparison, shared) in compared.items():
            display, shown, note = format_fronts(
                comparison, front_points(fronts[measure]), shared, measure
            )
            print("\n" + format_fronts_markdown(display, shown, note, measure), end="")
    files = [f for f in formats if f != "print"]
    try:  # a folder that cannot be written: one line, exit 2, earlier files left as they were
        if files or args.plot:
            ensure_writable(out)
        written = write_summary(summary, out, files) if files else []
        for measure, (comparison, shared) in compared.items():
            if files:
                points = front_points(fronts[measure])
                written += write_fronts(comparison, points, shared, measure, out, files)
        if args.plot:
            chosen = select_runs(runs, args.runs, root)
            if not chosen:
                parser.error(f"no completed run matches --runs {' '.join(args.runs)}")
            written += _plots(args.plot, summary, chosen, out, root, parser, fronts)
    except OutputError as error:  # not a misuse of the command: no usage lines
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _plots(names, summary, runs, out: Path, root, parser, fronts) -> list[Path]:
    from sparsenet.reporting import plots

    written = []
    try:
        for name in names:
            if name.startswith("fronts-"):
                measure = name.split("-", 1)[1]
                written += plots.plot_fronts(fronts[measure], out / f"fronts_{measure}", measure)
            elif name.startswith("accuracy-"):
                measure = name.split("-", 1)[1]
                written += plots.plot_accuracy_vs_kept(
                    summary, out / f"accuracy_vs_{measure}", measure
                )
            elif name == "units":
                written += plots.plot_units_per_layer(runs, out / "units_per_layer", root)
            else:
                written += plots.plot_training_curves(runs, out / "training_curves", root)
    except ValueError as error:
        parser.error(str(error))
    return written


if __name__ == "__main__":
    raise SystemExit(main())
