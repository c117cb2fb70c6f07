"""Figures from the ``train`` runs (docs/science.md#spurious-score, docs/science.md#mitigation,
docs/science.md#sensitivity-and-weights): score vs n, architectures, optimizers, regularization trade-off, pattern norm
vs score. Each takes the tables and returns a figure or None.

Panels and series come from :func:`rarespur.report.data.split`: a point averages only runs that differ
in their seeds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy import stats

from rarespur.report.data import (
    TRAIN,
    Group,
    ReportData,
    common,
    config_columns,
    describe,
    distinguishing,
    key,
    mean_sem,
    over_seeds,
    plural,
    sem,
    setting_text,
    settings,
    split,
)
from rarespur.report.plot import (
    SCORE_LABEL,
    curves_over_n,
    finish,
    floor_at_zero,
    grid,
    legend_outside,
    pad_x,
    palette,
    panel_title,
    point_counts,
)
from rarespur.report.sections import FigureSpec, Section
from rarespur.report.tables import group_keys, summarize

# What regularizer.strength means for each regularizer: the trade-off figure's x-axis label.
STRENGTH_LABELS = {
    "l2": "L2 weight decay lambda (log)",
    "gaussian_noise": "Gaussian input noise sigma (log)",
    "dp_sgd": "DP-SGD noise multiplier (log)",
}
# The settings an "optimizer" series of the optimizer comparison combines.
OPTIMIZER_SETTINGS = ("optim.name", "train.grad_clip", "train.lr")


def unregularized_train(data: ReportData) -> pd.DataFrame:
    """Train runs without a regularizer: the rows of the score-vs-n comparisons."""
    runs = data.experiment(TRAIN)
    if runs.empty or "spurious_score" not in runs:
        return pd.DataFrame()
    if "regularizer.name" in runs:
        runs = runs[runs["regularizer.name"].fillna("none") == "none"]
    return runs.dropna(subset=["spurious_score"])


@dataclass(frozen=True)
class Comparison:
    """Score-vs-n curves, one per value of `line_key`, in panels split by every other varying setting."""

    line_key: str
    legend: str  # legend title: what a series is
    title: str
    drawn_as_lines: tuple[str, ...] = ()  # settings the line key combines (never panel keys)
    min_lines: int = 1  # 2 for a comparison: panels with one curve are left out

    @property
    def drawn(self) -> tuple[str, ...]:
        return ("poison.count", self.line_key, *self.drawn_as_lines)

    def rows(self, runs: pd.DataFrame) -> pd.DataFrame:
        """The runs of the panels with at least `min_lines` curves."""
        kept = [g.rows for g in split(runs, self.drawn) if g.rows[self.line_key].nunique() >= self.min_lines]
        return pd.concat(kept) if kept else pd.DataFrame()

    def draw(self, runs: pd.DataFrame) -> Figure | None:
        rows = self.rows(runs)
        if rows.empty:
            return None
        groups = split(rows, self.drawn)  # again: a setting only the dropped panels had is now common
        colors = palette(rows[self.line_key])
        fig, slots = grid(len(groups))
        points = []
        for group, (ax,) in zip(groups, slots):
            points.append(curves_over_n(ax, group.rows, self.line_key, colors))
            panel_title(ax, group.title)
            ax.set_ylabel(SCORE_LABEL)
            floor_at_zero(ax)
            ax.grid(alpha=0.3)
        legend_outside(fig, self.legend, colors)
        return finish(fig, self.title, common(rows), over_seeds(point_counts(points)), len(rows))


PATTERNS = Comparison("pattern.name", "pattern", "Spurious score vs number of poisoned examples, per pattern")
MODELS = Comparison("model.name", "architecture", "Architecture comparison: spurious score vs n", min_lines=2)
OPTIMIZERS = Comparison(
    "optimizer",
    "optimizer",
    "Optimizer comparison: spurious score vs n",
    drawn_as_lines=OPTIMIZER_SETTINGS,
    min_lines=2,
)


def score_vs_n(data: ReportData) -> Figure | None:
    """Fig. 1: spurious score vs n per pattern, mean +- SEM over seeds, clean baseline at n = 0."""
    return PATTERNS.draw(unregularized_train(data))


def architecture_runs(data: ReportData) -> pd.DataFrame:
    return MODELS.rows(unregularized_train(data))


def architectures(data: ReportData) -> Figure | None:
    """Fig. 2: score vs n per architecture, in the panels (settings) where two or more models ran."""
    return MODELS.draw(unregularized_train(data))


def with_optimizer(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` with an ``optimizer`` column naming its optimizer setting by what differs ('sgd, grad clip 0.1')."""
    if runs.empty:
        return runs
    keys = distinguishing(runs, OPTIMIZER_SETTINGS) or [c for c in OPTIMIZER_SETTINGS[:1] if c in runs]
    return runs.assign(optimizer=[describe(keys, values) for values in runs[keys].itertuples(index=False)])


def optimizer_runs(data: ReportData) -> pd.DataFrame:
    return OPTIMIZERS.rows(with_optimizer(unregularized_train(data)))


def optimizers(data: ReportData) -> Figure | None:
    """Fig. 3: score vs n per optimizer setting (optimizer, gradient clipping, lr), where two or more ran."""
    return OPTIMIZERS.draw(with_optimizer(unregularized_train(data)))


def regularized_train(data: ReportData) -> pd.DataFrame:
    """Train runs with a regularizer (with its ``regularizer.strength`` in ``strength``)."""
    runs = data.experiment(TRAIN)
    if runs.empty or "regularizer.name" not in runs or "regularizer.strength" not in runs:
        return pd.DataFrame()
    rows = runs[runs["regularizer.name"].fillna("none") != "none"]
    rows = rows.assign(strength=rows["regularizer.strength"].astype(float))
    return rows.dropna(subset=["strength", "spurious_score"])


# What the regularizer itself sets: drawn on the x axis, not split into panels
# (l2 also writes its strength into train.weight_decay, DP-SGD's is its noise multiplier, whose epsilon follows.)
REGULARIZER_DRAWN = (
    "strength",
    "regularizer.strength",
    "regularizer.noise_multiplier",
    "dp_epsilon",
    "train.weight_decay",
    "poison.count",
)
TRADEOFF = (
    ("test_acc", "clean test accuracy", "-", "o"),
    ("spurious_test_acc", "spurious test accuracy (patched non-target)", "--", "s"),
)


def regularization(data: ReportData) -> Figure | None:
    """Fig. 4: per regularizer, spurious score (top) and clean / spurious test accuracy (bottom) vs strength.

    One series per n (the clean model included), each starting at the unregularized run of the same
    settings and seeds (the "none" tick), so the cost of a strength is read against no regularizer.
    """
    reg = regularized_train(data)
    if reg.empty:
        return None
    plain = unregularized_train(data)
    groups = _regularizer_groups(reg)
    colors = palette(reg["poison.count"], lambda n: setting_text("poison.count", n))
    fig, slots = grid(len(groups), ncols=2, size=(5.6, 3.4), nrows_per_panel=2)
    points = []
    for group, (top, bottom) in zip(groups, slots):
        reference = _matching(plain, group.rows)
        none_at = group.rows["strength"].min() / 10  # where the unregularized point sits on the log axis
        for n, rows in group.rows.groupby("poison.count"):
            label = setting_text("poison.count", n)
            base = reference[reference["poison.count"] == n]
            points.append(_tradeoff_line(top, rows, base, "spurious_score", none_at, colors[label], "-", "o", label))
            for column, _, style, marker in TRADEOFF:
                points.append(_tradeoff_line(bottom, rows, base, column, none_at, colors[label], style, marker, None))
        regularizer = group.rows["regularizer.name"].iloc[0]
        for ax in (top, bottom):
            _strength_axis(ax, group.rows["strength"], none_at, strength_label(regularizer))
        top.set_ylabel(SCORE_LABEL)
        floor_at_zero(top)
        bottom.set_ylabel("test accuracy")
        bottom.set_ylim(0, 1.02)
        panel_title(top, group.title)
    for _, label, style, marker in TRADEOFF:  # legend entries for the two accuracy line styles
        bottom.plot([], [], color="grey", linestyle=style, marker=marker, label=label)
    legend_outside(fig, "color: poisoned training examples; line style: accuracy (lower panels)", colors)
    return finish(
        fig,
        "Regularization trade-off: spurious score and test accuracy vs regularizer strength",
        common(reg),
        over_seeds(point_counts(points)),
        len(regularization_runs(data)),
    )


def strength_label(regularizer: str) -> str:
    return STRENGTH_LABELS.get(regularizer, f"{regularizer} strength (log)")


def _regularizer_groups(reg: pd.DataFrame) -> list[Group]:
    """Panels of the trade-off figure: one per regularizer and combination of the other varying settings."""
    return split(reg, REGULARIZER_DRAWN, first=("regularizer.name",))


def regularization_runs(data: ReportData) -> pd.DataFrame:
    """The runs the trade-off figure draws: the regularized ones and their unregularized references."""
    reg = regularized_train(data)
    if reg.empty:
        return reg
    plain = unregularized_train(data)
    return pd.concat([reg, *(_matching(plain, g.rows) for g in _regularizer_groups(reg))]).drop_duplicates("run_id")


def _tradeoff_line(
    ax: Axes,
    rows: pd.DataFrame,
    reference: pd.DataFrame,
    column: str,
    none_at: float,
    color: str,
    style: str,
    marker: str,
    label: str | None,
) -> pd.DataFrame:
    """Mean +- SEM of `column` per strength, led by the unregularized runs' value at `none_at`."""
    if column not in rows:
        return pd.DataFrame()
    stats = mean_sem(rows, ["strength"], column)
    if column in reference and reference[column].notna().any():
        lead = mean_sem(reference.assign(strength=none_at), ["strength"], column)
        stats = pd.concat([lead, stats], ignore_index=True)
    ax.errorbar(
        stats["strength"],
        stats["mean"],
        yerr=stats["sem"].fillna(0.0),
        color=color,
        linestyle=style,
        marker=marker,
        markersize=4,
        capsize=3,
        label=label,
    )
    return stats


def _strength_axis(ax: Axes, strengths: pd.Series, none_at: float, label: str) -> None:
    """Log strength axis whose leftmost tick, 'none', is the unregularized reference."""
    ax.set_xscale("log")
    ticks = [none_at, *sorted(strengths.unique())]
    ax.set_xticks(ticks, ["none", *[f"{t:g}" for t in ticks[1:]]])
    ax.minorticks_off()
    ax.axvline(np.sqrt(none_at * ticks[1]), color="grey", linewidth=0.8, linestyle=":")
    pad_x(ax, ticks[0], ticks[-1])
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)


def _matching(plain: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """Unregularized runs with every setting (n and seeds included) of the regularized `rows`, but the regularizer."""
    if plain.empty:
        return plain
    keep = pd.Series(True, index=plain.index)
    for column in config_columns(rows):
        if column in plain and not column.startswith("regularizer.") and column != "train.weight_decay":
            keep &= plain[column].map(key).isin(set(rows[column].map(key)))
    return plain[keep]


PATTERN_NORM_DRAWN = ("pattern.name", "poison.count")


def pattern_norm_runs(data: ReportData) -> pd.DataFrame:
    """Poisoned unregularized train runs with their pattern norm, in settings where two or more patterns ran.

    (A single pattern says nothing about how the score follows the norm.)
    """
    runs = unregularized_train(data)
    if runs.empty or "pattern_norm" not in runs:
        return pd.DataFrame()
    runs = runs[runs["poison.count"] > 0].dropna(subset=["pattern_norm"])
    kept = [g.rows for g in split(runs, PATTERN_NORM_DRAWN) if g.rows["pattern.name"].nunique() >= 2]
    return pd.concat(kept) if kept else pd.DataFrame()


# One point of the pattern-norm figure: a pattern's mean norm and mean score (SEM over seeds).
NORM_POINT = {
    "pattern_norm": ("pattern_norm", "mean"),
    "spurious_score": ("spurious_score", "mean"),
    "score_sem": ("spurious_score", sem),
    "runs": ("spurious_score", "count"),
}


def pattern_norm_table(data: ReportData) -> pd.DataFrame:
    """The figure's points: per setting group, n and pattern, mean pattern norm and score over seeds."""
    runs = pattern_norm_runs(data)
    if runs.empty:
        return pd.DataFrame()
    keys = [*settings(runs, PATTERN_NORM_DRAWN), "poison.count", "pattern.name"]
    return runs.groupby(keys, dropna=False, sort=True).agg(**NORM_POINT).reset_index()


def pearson(points: pd.DataFrame) -> float:
    """Pearson r of mean norm vs mean score over patterns; NaN with fewer than 3 patterns or no spread."""
    if len(points) < 3 or points["pattern_norm"].nunique() < 2 or points["spurious_score"].nunique() < 2:
        return float("nan")
    return float(stats.pearsonr(points["pattern_norm"], points["spurious_score"]).statistic)


def pearson_text(series: dict[str, pd.DataFrame]) -> str:
    """'Pearson r over 3 patterns: 0.99 (n = 3), 1.00 (n = 10)', or why r is not given."""
    patterns = max(len(points) for points in series.values())
    if patterns < 3:
        return f"Pearson r not given: {plural(patterns, 'pattern')}, needs 3 or more"
    values = [(label, pearson(points)) for label, points in series.items()]
    if not any(np.isfinite(r) for _, r in values):
        return f"Pearson r over {plural(patterns, 'pattern')}: none, the scores do not vary"
    return f"Pearson r over {plural(patterns, 'pattern')}: " + ", ".join(
        f"{r:.2f} ({label})" if np.isfinite(r) else f"none ({label})" for label, r in values
    )


def pattern_norm(data: ReportData) -> Figure | None:
    """Fig. 8: mean ||x - P(x)||_2 vs mean spurious score per pattern, one series per n, Pearson r per series."""
    runs = pattern_norm_runs(data)
    if runs.empty:
        return None
    groups = split(runs, PATTERN_NORM_DRAWN)
    colors = palette(runs["poison.count"], lambda n: setting_text("poison.count", n))
    fig, slots = grid(len(groups), ncols=2, size=(5.0, 4.0))
    counts = []
    for group, (ax,) in zip(groups, slots):
        series = {}
        for n, rows in group.rows.groupby("poison.count"):
            points = rows.groupby("pattern.name").agg(**NORM_POINT).reset_index().sort_values("pattern_norm")
            label = setting_text("poison.count", n)
            ax.errorbar(
                points["pattern_norm"],
                points["spurious_score"],
                yerr=points["score_sem"].fillna(0.0),
                fmt="o-",
                capsize=3,
                color=colors[label],
                label=label,
            )
            series[label] = points
            counts += points["runs"].tolist()
        _name_patterns(ax, group.rows)
        panel_title(ax, "\n".join(filter(None, [group.title, pearson_text(series)])))
        ax.set_xlabel("mean pattern norm ||x - P(x)||₂ over the test set")
        ax.set_ylabel("mean spurious score")
        floor_at_zero(ax)
        ax.grid(alpha=0.3)
    legend_outside(fig, "poisoned training examples", colors)
    return finish(
        fig, "Pattern norm vs spurious score (each point: one pattern)", common(runs), over_seeds(counts), len(runs)
    )


def _name_patterns(ax: Axes, rows: pd.DataFrame) -> None:
    """Pattern names on a top axis at their norms: one label per pattern however many series share it."""
    norms = rows.groupby("pattern.name")["pattern_norm"].mean().sort_values()
    pad_x(ax, float(norms.min()), float(norms.max()))
    top = ax.secondary_xaxis("top")
    top.set_xticks(norms.to_numpy(), norms.index.tolist(), fontsize=8)
    top.tick_params(length=2)


def score_vs_n_table(data: ReportData) -> pd.DataFrame:
    """Spurious score (mean, SEM) and accuracies per setting, pattern and n (unregularized train runs).

    ``learned`` is the fraction of runs whose Welch test beat the clean baseline; settings that are the
    same for every run are left out of the columns.
    """
    runs = unregularized_train(data)
    if runs.empty:
        return pd.DataFrame()
    if "learned" in runs:
        runs = runs.assign(learned=runs["learned"].astype(float))
    return summarize(
        runs,
        group_keys(runs, ("pattern.name", "poison.count")),
        ["spurious_score", "baseline_score", "test_acc", "spurious_test_acc", "learned", "p_value"],
    )


def regularization_table(data: ReportData) -> pd.DataFrame:
    """Score and accuracies per regularizer and strength, averaged over n and seeds as the paper reports them
    (docs/science.md#mitigation); every other setting that varies stays a column."""
    runs = regularized_train(data)
    if runs.empty:
        return pd.DataFrame()
    return summarize(
        runs,
        group_keys(runs, ("regularizer.name", "strength"), REGULARIZER_DRAWN),
        ["spurious_score", "test_acc", "spurious_test_acc"],
    )


SECTION = Section(
    order=10,
    figures=(
        FigureSpec(
            "score_vs_n",
            "Spurious score vs number of poisoned examples",
            "Fraction of test images whose target-class probability rises by more than eps when the pattern "
            "is pasted on, per pattern, mean ± SEM over seeds; n = 0 is the clean baseline. One panel per "
            "combination of the other settings that vary.",
            "train runs",
            score_vs_n,
            unregularized_train,
        ),
        FigureSpec(
            "architectures",
            "Architecture comparison",
            "Spurious score vs n per architecture (mean ± SEM over seeds), one panel per combination of the "
            "other settings that vary, where two or more architectures ran.",
            "train runs with two or more architectures",
            architectures,
            architecture_runs,
        ),
        FigureSpec(
            "optimizers",
            "Optimizer comparison",
            "Spurious score vs n per optimizer setting (optimizer, gradient clipping, learning rate; mean ± SEM "
            "over seeds), in the settings where two or more of them ran.",
            "train runs with two or more optimizer settings",
            optimizers,
            optimizer_runs,
        ),
        FigureSpec(
            "regularization",
            "Regularization trade-off",
            "Per regularizer strength (log x): spurious score (top) and clean and spurious test accuracy "
            "(bottom), one series per n (clean model included), mean ± SEM over seeds; the 'none' tick is the "
            "unregularized run of the same settings.",
            "train runs with a regularizer (l2, gaussian_noise, dp_sgd, ...)",
            regularization,
            regularization_runs,
        ),
        FigureSpec(
            "pattern_norm",
            "Pattern norm vs spurious score",
            "Mean ||x - P(x)||_2 over the test set against the mean spurious score per pattern, one series per "
            "n (mean ± SEM over seeds), with the Pearson correlation over patterns.",
            "poisoned train runs with pattern_norm and two or more patterns in the same settings",
            pattern_norm,
            pattern_norm_runs,
        ),
    ),
    tables={
        "score_vs_n": score_vs_n_table,
        "regularization": regularization_table,
        "pattern_norm": pattern_norm_table,
    },
)
