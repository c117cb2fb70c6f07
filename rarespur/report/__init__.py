"""``python -m rarespur report <results>``: the paper's figures and summary tables from a run store.

The report collects the store (as ``python -m rarespur collect`` does) and
writes a folder with ``index.md`` (one section per figure: the image, what it
shows, how many runs went into it, or "not drawn" and why), one PNG per
figure, and CSV + LaTeX summary tables. Each figure family is one function
``(ReportData) -> Figure | None`` (None: its runs are absent), so tests and
notebooks can draw a single figure from tables they built themselves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from rarespur.report import deletion, examples, figures, privacy, sensitivity, theory
from rarespur.report.data import ReportData, load, plural
from rarespur.report.tables import write_tables

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FigureSpec:
    slug: str  # file name of the PNG
    title: str
    what: str  # one sentence: what the figure shows
    needs: str  # "not drawn: no <needs>"
    draw: Callable[[ReportData], Figure | None]
    rows: Callable[[ReportData], pd.DataFrame]  # the runs drawn (counted in index.md)


def _runs_of(frame_of: Callable[[ReportData], pd.DataFrame]) -> Callable[[ReportData], pd.DataFrame]:
    """Count distinct runs of a per-point table (ROC points, removal points)."""

    def rows(data: ReportData) -> pd.DataFrame:
        frame = frame_of(data)
        return frame.drop_duplicates("run_id") if "run_id" in frame else frame

    return rows


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec(
        "score_vs_n",
        "Spurious score vs number of poisoned examples",
        "Fraction of test images whose target-class probability rises by more than eps when the pattern "
        "is pasted on, per pattern, mean ± SEM over seeds; n = 0 is the clean baseline. One panel per "
        "combination of the other settings that vary.",
        "train runs",
        figures.score_vs_n,
        figures.unregularized_train,
    ),
    FigureSpec(
        "architectures",
        "Architecture comparison",
        "Spurious score vs n per architecture (mean ± SEM over seeds), one panel per combination of the "
        "other settings that vary, where two or more architectures ran.",
        "train runs with two or more architectures",
        figures.architectures,
        figures.architecture_runs,
    ),
    FigureSpec(
        "optimizers",
        "Optimizer comparison",
        "Spurious score vs n per optimizer setting (optimizer, gradient clipping, learning rate; mean ± SEM "
        "over seeds), in the settings where two or more of them ran.",
        "train runs with two or more optimizer settings",
        figures.optimizers,
        figures.optimizer_runs,
    ),
    FigureSpec(
        "regularization",
        "Regularisation trade-off",
        "Per regularizer strength (log x): spurious score (top) and clean and spurious test accuracy "
        "(bottom), one series per n (clean model included), mean ± SEM over seeds; the 'none' tick is the "
        "unregularized run of the same settings.",
        "train runs with regularizer=l2 or gaussian_noise",
        figures.regularization,
        figures.regularization_runs,
    ),
    FigureSpec(
        "membership_bars",
        "Membership inference: members vs poisoned examples flagged",
        "Per attack and n: the fraction of all training members the attack flags as members against the "
        "fraction of the poisoned examples it flags (bars, mean ± SEM over seeds) and its accuracy (black).",
        "mem_inference runs",
        privacy.membership_bars,
        privacy.mi_runs,
    ),
    FigureSpec(
        "membership_roc",
        "Membership inference ROC curves",
        "Log-log ROC curves of each attack, TPR averaged over seeds per n; the dotted diagonal is chance.",
        "mem_inference runs with a roc table",
        privacy.membership_roc,
        _runs_of(privacy.roc_rows),
    ),
    FigureSpec(
        "pixel_removal",
        "Pixel removal",
        "Mean true-class probability on training images when each non-zero pixel is removed with "
        "probability p, per architecture (band: ± SEM over seeds).",
        "sensitivity runs",
        sensitivity.pixel_removal,
        _runs_of(sensitivity.removal_rows),
    ),
    FigureSpec(
        "weight_maps",
        "MLP weight maps",
        "Per input pixel the largest first-layer weight of an MLP, a clean model next to a poisoned one "
        "(a learned corner pattern lights up).",
        "sensitivity runs of MLPs with a weight map",
        sensitivity.weight_maps,
        sensitivity.weight_map_runs,
    ),
    FigureSpec(
        "pattern_norm",
        "Pattern norm vs spurious score",
        "Mean ||x - P(x)||_2 over the test set against the mean spurious score per pattern, one series per "
        "n (mean ± SEM over seeds), with the Pearson correlation over patterns.",
        "poisoned train runs with pattern_norm and two or more patterns in the same settings",
        figures.pattern_norm,
        figures.pattern_norm_runs,
    ),
    FigureSpec(
        "deletion",
        "Deleting the poisoned examples",
        "Spurious score (top) and clean accuracy (bottom) vs n before deletion, after deletion and for "
        "the model retrained from scratch without the poisoned examples, with the clean baseline score.",
        "incremental_retraining, group_influence or retrain_exact runs",
        deletion.deletion,
        deletion.deletion_runs,
    ),
    FigureSpec(
        "example_images",
        "Example poisoned images",
        "One test image without (top) and with (bottom) each pattern used in the runs, built from the "
        "runs' pattern configs and data seeds.",
        "patterns",
        examples.example_images,
        lambda data: pd.DataFrame(examples.pattern_configs(data)),
    ),
    FigureSpec(
        "theory",
        "Closed-form theory curves",
        "Population ridge regression with a core feature and a rare spurious feature (derivation in "
        "rarespur/report/theory.py): clean accuracy, spurious accuracy and spurious score vs the poisoned "
        "fraction gamma for several lambda.",
        "theory",
        theory.theory_figure,
        lambda data: pd.DataFrame(),
    ),
)


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
        lines += [f"![{spec.title}]({png.name})", "", f"{spec.what} {_count(spec, data)}", ""]
        log.info("figure %s -> %s", spec.slug, png)
    lines += ["## Tables", ""]
    for name, paths in write_tables(data, out).items():
        if paths is None:
            lines.append(f"- {name}: not written (no runs of that kind)")
        else:
            lines.append(f"- {name}: [{paths[0].name}]({paths[0].name}), [{paths[1].name}]({paths[1].name})")
    index = out / "index.md"
    index.write_text("\n".join(lines) + "\n")
    return index


def _count(spec: FigureSpec, data: ReportData) -> str:
    if spec.slug == "theory":
        return "Closed form: no runs."
    if spec.slug == "example_images":
        return f"{plural(len(spec.rows(data)), 'pattern')}."
    return f"Runs: {len(spec.rows(data))}."


__all__ = ["FIGURES", "FigureSpec", "ReportData", "load", "write_report"]
