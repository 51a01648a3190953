"""The summary as files: summary.csv (every number), summary.md and summary.tex (mean ± std).

summary.csv holds the table as computed: one row per configuration, `m` and `m_std` columns.
summary.md and summary.tex hold one table per stage (the keys and `seeds` repeated in each,
the stage prefix dropped from the column names), cells as "mean ± std" rounded per metric.
Failed or unfinished runs go to failed.csv and to a section of summary.md. Every file is
written atomically (a reader never sees half a file), after all of them are rendered; a folder
that cannot be written (read-only, not creatable, full disk) is found by `ensure_writable`
before any file in it is replaced, and is one OutputError naming the folder and the reason.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from sparsenet.errors import OutputError
from sparsenet.reporting.summary import COUNT, STD, Summary
from sparsenet.runtime import atomic_write_bytes

FORMATS = ("csv", "md", "tex")
SUMMARY = "summary"
FAILED = "failed.csv"

# Decimals per metric (matched on the name's last part); the rest get 3 significant digits.
DECIMALS = {
    "test_acc": 2,
    "params": 0,
    "macs": 0,
    "params_pct": 2,
    "macs_pct": 2,
    "weight_sparsity": 3,
    "wall_s": 1,
    "latency_ms": 2,
    "delta_acc": 2,
    "compression": 2,
    "mac_reduction": 2,
}


UNITS = -1  # whole numbers unless the seeds disagree: 20, 21.5


def _decimals(metric: str) -> int | None:
    if ".units." in f".{metric}":
        return UNITS
    return DECIMALS.get(metric.rsplit(".", 1)[-1])


def format_number(value: float, decimals: int | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if decimals is None:
        return f"{value:.3g}"
    if decimals == UNITS:
        return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"
    return f"{value:,.{decimals}f}"


def format_cell(mean: float, std: float, decimals: int | None) -> str:
    text = format_number(mean, decimals)
    if text and not (std is None or math.isnan(std)):
        text += f" ± {format_number(std, decimals)}"
    return text


def _key_text(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def sections(summary: Summary) -> list[tuple[str, pd.DataFrame]]:
    """One display table per stage (and one for the baseline comparison), cells as text."""
    groups: dict[str, list[str]] = {}
    for metric in summary.metrics:
        prefix, _, rest = metric.partition(".")
        groups.setdefault(prefix if rest else "", []).append(metric)
    out = []
    for prefix, metrics in groups.items():
        display = pd.DataFrame({k: summary.table[k].map(_key_text) for k in summary.keys})
        display[COUNT] = summary.table[COUNT].astype(int).astype(str)
        for m in metrics:
            name = m[len(prefix) + 1 :] if prefix else m
            display[name] = [
                format_cell(mean, std, _decimals(m))
                for mean, std in zip(summary.table[m], summary.table[m + STD], strict=True)
            ]
        out.append((prefix, display.reset_index(drop=True)))
    return out


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (pipes in cells escaped)."""

    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(c) for c in table.columns) + " |",
        "|" + "|".join("---" for _ in table.columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join(lines)


def format_markdown(summary: Summary, title: str = "Summary") -> str:
    n_runs = int(summary.table[COUNT].sum()) if len(summary.table) else 0
    parts = [
        f"# {title}",
        "",
        f"{n_runs} completed runs in {len(summary.table)} configurations "
        f"(mean ± std over seeds; `{COUNT}`: runs per configuration).",
    ]
    if summary.keys:
        parts.append(f"Grouped by: {', '.join(f'`{k}`' for k in summary.keys)}.")
    for prefix, table in sections(summary):
        parts += ["", f"## {prefix or 'metrics'}", "", markdown_table(table)]
    if len(summary.failed):
        parts += [
            "",
            f"## Failed or unfinished runs ({len(summary.failed)})",
            "",
            markdown_table(
                pd.DataFrame({c: summary.failed[c].map(_key_text) for c in summary.failed})
            ),
        ]
    return "\n".join(parts) + "\n"


def format_latex(summary: Summary) -> str:
    """One booktabs `table` per stage; include it with \\input{summary.tex}."""
    parts = [
        "% sparsenet summary: mean $\\pm$ std over seeds; needs \\usepackage{booktabs}",
    ]
    for prefix, table in sections(summary):
        latex = table.to_latex(
            index=False,
            escape=True,
            caption=f"{prefix or 'metrics'}: mean $\\pm$ std over seeds",
            label=f"tab:sparsenet-{prefix or 'metrics'}",
            column_format="l" * len(summary.keys) + "r" * (len(table.columns) - len(summary.keys)),
        )
        # "±" passes escape=True untouched; make it math so every LaTeX engine prints it.
        parts += ["", latex.replace("±", "$\\pm$")]
    return "\n".join(parts)


def ensure_writable(folder: str | Path) -> None:
    """Create `folder` if needed and write (and flush to disk, then remove) a small file in
    it, so that a folder that cannot be created, is read-only or sits on a full disk fails
    here, before any earlier file in it is replaced: OutputError naming it and the reason."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"cannot write to {folder}: not a folder")
    probe = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".sparsenet-probe.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(b"sparsenet: can this folder be written?\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:
        reason = error.strerror or str(error)
        raise OutputError(
            f"cannot write to {folder}: {reason}; files already there are unchanged"
        ) from error
    finally:
        if probe is not None:
            with contextlib.suppress(OSError):
                Path(probe).unlink(missing_ok=True)


def write_summary(
    summary: Summary, folder: str | Path, formats: Sequence[str] = FORMATS
) -> list[Path]:
    """Write summary.<fmt> for each format and failed.csv (only when some run failed)."""
    folder = Path(folder)
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}; allowed: {', '.join(FORMATS)}")
    files = {}
    for fmt in formats:
        if fmt == "csv":
            data = summary.table.to_csv(index=False)
        elif fmt == "md":
            data = format_markdown(summary)
        else:
            data = format_latex(summary)
        files[folder / f"{SUMMARY}.{fmt}"] = data.encode()
    failed = folder / FAILED
    if len(summary.failed):
        files[failed] = summary.failed.to_csv(index=False).encode()
    ensure_writable(folder)
    for path, data in files.items():
        atomic_write_bytes(path, data)
    if failed not in files:
        try:
            failed.unlink(missing_ok=True)  # a stale list from an earlier summary of this folder
        except OSError as error:
            raise OutputError(f"cannot remove {failed}: {error.strerror or error}") from error
    return list(files)
