"""Deletion figure (docs/science.md#deletion): spurious score and accuracy before and after forgetting the poisoned
examples."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from rarespur.report.data import DELETION_EXPERIMENTS, ReportData, common, over_seeds, split
from rarespur.report.plot import (
    SCORE_LABEL,
    curves_over_n,
    finish,
    floor_at_zero,
    grid,
    legend_outside,
    panel_title,
    point_counts,
)
from rarespur.report.sections import FigureSpec, Section
from rarespur.report.tables import group_keys, summarize

# (column stem, legend label): unprefixed = after deletion (for retrain_exact: the retrained model itself).
STAGES = [("before.", "before deletion"), ("", "after deletion"), ("exact.", "retrained from scratch")]
COLORS = {"before deletion": "C3", "after deletion": "C0", "retrained from scratch": "C2", "clean baseline": "grey"}
# After deletion often lies on before deletion (nothing forgotten): dashed, so both stay visible.
LINESTYLES = {"after deletion": "--", "clean baseline": ":"}


def deletion_runs(data: ReportData) -> pd.DataFrame:
    runs = data.experiment(*DELETION_EXPERIMENTS)
    return runs.dropna(subset=["spurious_score"]) if not runs.empty and "spurious_score" in runs else pd.DataFrame()


def _long(rows: pd.DataFrame, metric: str, with_baseline: bool, stages: list[tuple[str, str]]) -> pd.DataFrame:
    """One row per (run, stage) with the stage's value of `metric` in ``value``."""
    exact_itself = set(rows["experiment.name"]) == {"retrain_exact"}
    parts = [
        rows.assign(
            stage="retrained from scratch" if exact_itself and not prefix else label, value=rows[prefix + metric]
        )
        for prefix, label in stages
        if prefix + metric in rows and rows[prefix + metric].notna().any()
    ]
    if with_baseline and "baseline_score" in rows and rows["baseline_score"].notna().any():
        parts.append(rows.assign(stage="clean baseline", value=rows["baseline_score"]))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def before_after(
    runs: pd.DataFrame,
    title: str,
    stages: list[tuple[str, str]] = STAGES,
    colors: dict[str, str] = COLORS,
    linestyles: dict[str, str] = LINESTYLES,
) -> Figure | None:
    """Per group of runs, score (top) and clean test accuracy (bottom) vs n for each stage of a correction
    (the unprefixed columns are the model after it, ``before.*`` the parent, ``exact.*`` retrained)."""
    if runs.empty:
        return None
    groups = split(runs, ["poison.count"])
    fig, slots = grid(len(groups), ncols=3, size=(4.4, 3.2), nrows_per_panel=2)
    points = []
    for group, (top, bottom) in zip(groups, slots):
        for ax, metric, ylabel, baseline in (
            (top, "spurious_score", SCORE_LABEL, True),
            (bottom, "test_acc", "clean test accuracy", False),
        ):
            long = _long(group.rows, metric, baseline, stages)
            if long.empty:
                ax.set_axis_off()
                continue
            points.append(curves_over_n(ax, long, "stage", colors, "value", linestyles))
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        panel_title(top, group.title)
        floor_at_zero(top)
        bottom.set_ylim(0, 1.02)
    legend_outside(fig, "model compared", colors)
    return finish(fig, title, common(runs), over_seeds(point_counts(points)), len(runs))


def deletion(data: ReportData) -> Figure | None:
    """Fig. 9: per deletion method, score (top) and clean test accuracy (bottom) vs n, before / after / exact."""
    return before_after(
        deletion_runs(data), "Deleting the poisoned examples: before, after, and retrained from scratch"
    )


def deletion_table(data: ReportData) -> pd.DataFrame:
    """Score and accuracy before / after deletion / retrained from scratch per method and n."""
    runs = deletion_runs(data)
    if runs.empty:
        return pd.DataFrame()
    columns = [prefix + m for m in ("spurious_score", "test_acc") for prefix in ("", "before.", "exact.")]
    return summarize(
        runs,
        group_keys(runs, ("experiment.name", "poison.count")),
        [*columns, "baseline_score", "param_dist.before_after", "param_dist.after_exact"],
    )


SECTION = Section(
    order=40,
    figures=(
        FigureSpec(
            "deletion",
            "Deleting the poisoned examples",
            "Spurious score (top) and clean accuracy (bottom) vs n before deletion, after deletion and for "
            "the model retrained from scratch without the poisoned examples, with the clean baseline score.",
            "incremental_retraining, group_influence or retrain_exact runs",
            deletion,
            deletion_runs,
        ),
    ),
    tables={
        "deletion": deletion_table,
    },
)
