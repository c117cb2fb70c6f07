"""``python -m rarespur report <results>``: the paper's figures and summary tables from a run store.

The report collects the store (as ``python -m rarespur collect`` does) and
writes a folder with ``index.md`` (first the tables a section shows in full,
such as the paper's findings checked on the runs; then one section per
figure: the image, what it shows, how many runs went into it, or "not drawn"
and why), one PNG per figure, and CSV + LaTeX summary tables. The figures and
tables come from the modules of this package: each that defines a ``SECTION``
(:class:`rarespur.report.sections.Section`) is found and drawn, so an
experiment type brings its report as one module here and nothing else
changes (train runs: ``figures``; ``privacy``, ``sensitivity``, ``deletion``;
``examples`` and ``theory`` need no runs; ``findings`` checks the paper's
claims on all of them).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import matplotlib.pyplot as plt

from rarespur.report.data import ReportData, load
from rarespur.report.sections import FigureSpec, Section, Shown, Table, discover
from rarespur.report.tables import to_markdown, write_tables

log = logging.getLogger(__name__)


SECTIONS = discover(sys.modules[__name__])
FIGURES: tuple[FigureSpec, ...] = tuple(spec for section in SECTIONS for spec in section.figures)
TABLES: dict[str, Table] = {name: make for section in SECTIONS for name, make in section.tables.items()}
SHOWN: tuple[Shown, ...] = tuple(shown for section in SECTIONS for shown in section.shown)


def write_report(results_dir: str | Path, out: str | Path | None = None) -> Path:
    """Collect `results_dir`, draw every figure, write the tables and index.md; returns index.md's path."""
    data = load(results_dir)
    out = Path(out) if out is not None else Path(results_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# rarespur report: {Path(results_dir).resolve()}",
        "",
        f"{len(data.runs)} finished runs: "
        + ", ".join(f"{count} {name}" for name, count in data.runs["experiment.name"].value_counts().items())
        + ".",
        "",
    ]
    tables = {name: make(data) for name, make in TABLES.items()}
    for shown in SHOWN:
        table = tables[shown.table]
        lines += [f"## {shown.title}", "", shown.what, "", to_markdown(table) if not table.empty else "no rows", ""]
    for number, spec in enumerate(FIGURES, start=1):
        lines += [f"## {number}. {spec.title}", ""]
        fig = spec.draw(data)
        if fig is None:
            (out / f"{spec.slug}.png").unlink(missing_ok=True)  # a PNG of an earlier report would mislead
            lines += [f"not drawn: no {spec.needs}", ""]
            log.info("figure %s not drawn: no %s", spec.slug, spec.needs)
            continue
        png = out / f"{spec.slug}.png"
        fig.savefig(png, dpi=110)
        plt.close(fig)
        lines += [f"![{spec.title}]({png.name})", "", f"{spec.what} {spec.count_text(data)}", ""]
        log.info("figure %s -> %s", spec.slug, png)
    lines += ["## Tables", ""]
    for name, paths in write_tables(tables, out).items():
        if paths is None:
            lines.append(f"- {name}: not written (no runs of that kind)")
        else:
            lines.append(f"- {name}: [{paths[0].name}]({paths[0].name}), [{paths[1].name}]({paths[1].name})")
    index = out / "index.md"
    index.write_text("\n".join(lines) + "\n")
    return index


__all__ = [
    "FIGURES",
    "SECTIONS",
    "SHOWN",
    "TABLES",
    "FigureSpec",
    "ReportData",
    "Section",
    "Shown",
    "load",
    "write_report",
]
