"""What a report module brings to ``python -m rarespur report``: its figures and its tables.

Every module of :mod:`rarespur.report` that defines ``SECTION`` is part of the report, found by
:func:`discover`, so an experiment type's figures and tables are one module beside the others with
nothing to register. Each figure family is one function ``(ReportData) -> Figure | None`` (None: its
runs are absent), so tests and notebooks can draw a single figure from tables they built themselves.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from types import ModuleType
from typing import Callable

import pandas as pd
from matplotlib.figure import Figure

from rarespur.report.data import ReportData

Table = Callable[[ReportData], pd.DataFrame]


@dataclass(frozen=True)
class FigureSpec:
    slug: str  # file name of the PNG
    title: str
    what: str  # one sentence: what the figure shows
    needs: str  # "not drawn: no <needs>"
    draw: Callable[[ReportData], Figure | None]
    rows: Table  # the runs drawn (counted in index.md)
    count: Callable[[ReportData], str] | None = None  # index.md's count sentence, where "Runs: N." does not fit

    def count_text(self, data: ReportData) -> str:
        return self.count(data) if self.count is not None else f"Runs: {len(self.rows(data))}."


@dataclass(frozen=True)
class Shown:
    """A table that index.md prints in full, under its own heading ahead of the figures.

    For a summary a reader should see first (the paper's findings) rather than find among the CSV files;
    it is written as CSV and LaTeX like every other table too.
    """

    table: str  # a name of the section's tables
    title: str  # its heading in index.md
    what: str  # one sentence under the heading: how to read the table


@dataclass(frozen=True)
class Section:
    order: int  # where the section's figures and tables come in the report (smaller first)
    figures: tuple[FigureSpec, ...] = ()
    tables: dict[str, Table] = field(default_factory=dict)  # name (of <name>.csv / .tex) -> table
    shown: tuple[Shown, ...] = ()  # tables index.md also prints in full, before the figures

    def __post_init__(self) -> None:
        unknown = [s.table for s in self.shown if s.table not in self.tables]
        if unknown:
            raise ValueError(f"shown tables {unknown} are not among the section's tables {sorted(self.tables)}")


def distinct_runs(frame_of: Table) -> Table:
    """The runs of a per-point table (ROC points, removal points), for a figure's count."""

    def rows(data: ReportData) -> pd.DataFrame:
        frame = frame_of(data)
        return frame.drop_duplicates("run_id") if "run_id" in frame else frame

    return rows


def discover(package: ModuleType) -> list[Section]:
    """The ``SECTION`` of every module of `package`, in report order; slugs and table names are unique."""
    sections = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        section = getattr(importlib.import_module(f"{package.__name__}.{info.name}"), "SECTION", None)
        if isinstance(section, Section):
            sections.append(section)
    sections.sort(key=lambda s: s.order)
    for kind, names in (
        ("figure", [f.slug for s in sections for f in s.figures]),
        ("table", [t for s in sections for t in s.tables]),
    ):
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise RuntimeError(f"report {kind}s named twice by the modules of {package.__name__}: {repeated}")
    return sections
