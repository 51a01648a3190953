"""The stage table of one run: what `sparsenet` prints when a run ends."""

from __future__ import annotations

import pandas as pd

STAGE_COLUMNS = ("test_acc", "params", "nonzero_params", "macs", "latency_ms", "wall_s")


def stage_table(metrics: dict) -> pd.DataFrame:
    """One row per stage of one run, plus units kept per layer as 'a-b-c'."""
    rows = []
    for stage, figures in metrics["stages"].items():
        row = {"stage": stage, **{c: figures.get(c) for c in STAGE_COLUMNS}}
        row["units"] = "-".join(str(layer["units_kept"]) for layer in figures["layers"])
        rows.append(row)
    return pd.DataFrame(rows).set_index("stage")


def format_stage_table(metrics: dict) -> str:
    table = stage_table(metrics)
    return table.to_string(
        formatters={
            "test_acc": "{:.2f}".format,
            "latency_ms": "{:.2f}".format,
            "wall_s": "{:.1f}".format,
            "params": "{:,}".format,
            "nonzero_params": "{:,}".format,
            "macs": "{:,}".format,
        }
    )
