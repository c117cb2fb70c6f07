"""Summary tables of the report, the numbers behind the figures, as CSV and LaTeX (pandas Styler): the helpers
every section's tables share, and the writer. The tables themselves live with their figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rarespur.report.data import missing, sem, settings

# Columns every table keeps even when they are the same for all its runs, so a table read alone says what it is.
ALWAYS = ("dataset.name", "model.name", "optim.name")


def group_keys(runs: pd.DataFrame, last: tuple[str, ...], drawn: tuple[str, ...] = ()) -> list[str]:
    """Group columns: ALWAYS, every other setting that varies (see data.settings), then `last`.

    Only the seeds and `drawn` (what a table deliberately averages over) are averaged over.
    """
    lead = [c for c in ALWAYS if c in runs and c not in last]
    varying = [c for c in settings(runs, (*last, *drawn)) if c not in lead]
    return [*lead, *varying, *[c for c in last if c in runs]]


def summarize(runs: pd.DataFrame, by: list[str], columns: list[str]) -> pd.DataFrame:
    """Mean of each column per group; the first column also gets its SEM; plus the number of runs."""
    columns = [c for c in columns if c in runs and runs[c].notna().any()]
    if runs.empty or not columns:
        return pd.DataFrame()
    grouped = runs.groupby(by, dropna=False, sort=True)
    out = grouped[columns].mean()
    out.insert(1, f"{columns[0]} sem", grouped[columns[0]].agg(sem))
    out["runs"] = grouped.size()
    return out.reset_index()


def write_tables(tables: dict[str, pd.DataFrame], out: Path) -> dict[str, tuple[Path, Path] | None]:
    """Write every non-empty table as <name>.csv and <name>.tex; None for the empty ones."""
    written: dict[str, tuple[Path, Path] | None] = {}
    for name, table in tables.items():
        if table.empty:
            written[name] = None
            continue
        csv, tex = out / f"{name}.csv", out / f"{name}.tex"
        table.to_csv(csv, index=False)
        tex.write_text(to_latex(table, name))
        written[name] = (csv, tex)
    return written


def to_markdown(table: pd.DataFrame) -> str:
    """A Markdown table for index.md, numbers to 3 decimals as in the LaTeX tables.

    Written here rather than by ``DataFrame.to_markdown``, which needs the optional ``tabulate`` package.
    """
    rows = [list(table.columns), ["---"] * len(table.columns), *table.itertuples(index=False)]
    return "\n".join("| " + " | ".join(_markdown_cell(v) for v in row) + " |" for row in rows)


def _markdown_cell(value: object) -> str:
    if missing(value):
        return "--"
    text = f"{value:.3f}" if isinstance(value, (float, np.floating)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def to_latex(table: pd.DataFrame, name: str) -> str:
    """A booktabs table, numbers to 3 decimals, names escaped for LaTeX."""
    styler = table.style.hide(axis="index").format(precision=3, escape="latex", na_rep="--")
    styler = styler.format_index(escape="latex", axis=1)
    caption = f"rarespur report: {name.replace('_', ' ')}"
    return styler.to_latex(hrules=True, caption=caption, label=f"tab:{name}")
