"""Results of runs as tables and figures.

- `stage_table` / `format_stage_table`: one run, a row per stage (printed when a run ends);
- `find_runs` -> `build_summary` -> `write_summary`: the sweep table (one row per
  configuration, seeds folded into mean ± std; failed runs apart), as csv / md / tex;
- `plots`: accuracy versus size kept with its Pareto front, units per layer, training curves;
- `callback.SweepSummary`: the Hydra callback that summarizes a sweep's folder when it ends;
- `cli`: the `sparsenet-report` command.
"""

from sparsenet.reporting.export import format_latex, format_markdown, write_summary
from sparsenet.reporting.runs import Run, find_runs, load_run, select_runs, swept_keys
from sparsenet.reporting.stages import STAGE_COLUMNS, format_stage_table, stage_table
from sparsenet.reporting.summary import Summary, build_summary, select_metrics

__all__ = [
    "STAGE_COLUMNS",
    "Run",
    "Summary",
    "build_summary",
    "find_runs",
    "format_latex",
    "format_markdown",
    "format_stage_table",
    "load_run",
    "select_metrics",
    "select_runs",
    "stage_table",
    "swept_keys",
    "write_summary",
]
