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
    SEEDS,
    TRAIN,
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

# The settings an "optimizer" series of the optimizer comparison combines.
OPTIMIZER_SETTINGS = ("optim.name", "train.grad_clip", "train.lr")


@dataclass(frozen=True)
class Method:
    """A mitigation of the trade-off figure and table: how its panels are named, its strength axis, and the
    settings its strength writes (``sets``; 0 turns each off).

    The ``sets`` columns are drawn on the strength axis instead of splitting panels, and the method's
    "none" reference has them at 0: l2 is compared with weight decay 0 whatever the recipe's, clipping with
    unclipped runs. Every other setting of the reference equals the method's runs'.
    """

    title: str
    axis: str
    sets: tuple[str, ...] = ()


CLIP = "clip"  # the method of unregularized runs clipped by value (train.grad_clip > 0)
METHODS = {
    "l2": Method("regularizer l2", "L2 weight decay lambda (log)", ("train.weight_decay",)),
    "gaussian_noise": Method("regularizer gaussian_noise", "Gaussian input noise sigma (log)"),
    "dp_sgd": Method("regularizer dp_sgd", "DP-SGD noise multiplier (log)"),
    CLIP: Method("gradient clipping (no regularizer)", "gradient clip value (by value; log)", ("train.grad_clip",)),
}
SET_BY_A_METHOD = tuple(dict.fromkeys(c for m in METHODS.values() for c in m.sets))


def method(name: str) -> Method:
    """The :class:`Method` of a regularizer name (a regularizer added later gets a generic one)."""
    return METHODS.get(name, Method(f"regularizer {name}", f"{name} strength (log)"))


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
    """Train runs of a mitigation, with their ``method`` and ``strength``: the runs with a regularizer
    (``regularizer.strength``) and the unregularized runs clipped by value (method "clip", strength
    ``train.grad_clip``) in the settings where a regularizer ran too.

    Clipping counts only beside a regularizer, so that the clipping runs of the score grids (every pattern,
    target and n up to 5,000) stay in the optimizer comparison and the table averages clipping over the
    same n as the regularizers it is compared with.
    """
    runs = data.experiment(TRAIN)
    if runs.empty or "regularizer.name" not in runs or "spurious_score" not in runs:
        return pd.DataFrame()
    name = runs["regularizer.name"].fillna("none")
    reg = runs[name != "none"]
    reg = reg.assign(method=reg["regularizer.name"], strength=reg.get("regularizer.strength", np.nan)).astype(
        {"strength": float}
    )
    reg = reg.dropna(subset=["strength", "spurious_score"])
    if reg.empty:
        return pd.DataFrame()
    clipped = runs[(name == "none") & (runs.get("train.grad_clip", 0.0) > 0)]
    clipped = clipped.assign(method=CLIP, strength=clipped.get("train.grad_clip")).dropna(subset=["spurious_score"])
    return pd.concat([reg, _beside(clipped, reg)])


def _beside(clipped: pd.DataFrame, reg: pd.DataFrame) -> pd.DataFrame:
    """The `clipped` runs whose settings (n included) some regularized run shares, but for what a method sets."""
    columns = [
        c
        for c in config_columns(clipped)
        if c not in SEEDS and not c.startswith("regularizer.") and c not in SET_BY_A_METHOD
    ]

    def settings_of(frame: pd.DataFrame) -> pd.Series:
        return frame.reindex(columns=columns).map(key).apply(tuple, axis=1)

    return clipped[settings_of(clipped).isin(set(settings_of(reg)))] if not clipped.empty else clipped


# Drawn in a trade-off panel, not split into panels: the strength on the x axis, n as series, and what a method
# itself sets (l2 also writes its strength into train.weight_decay, clipping is train.grad_clip, DP-SGD's
# strength is its noise multiplier, whose epsilon follows).
REGULARIZER_DRAWN = (
    "strength",
    "method",
    "regularizer.name",
    "regularizer.strength",
    "regularizer.noise_multiplier",
    "dp_epsilon",
    *SET_BY_A_METHOD,
    "poison.count",
)
TRADEOFF = (
    ("test_acc", "clean test accuracy", "-", "o"),
    ("spurious_test_acc", "spurious test accuracy (patched non-target)", "--", "s"),
)


@dataclass(frozen=True)
class Panel:
    """One trade-off panel: the runs of one method in one setting, and where it sits in the method columns."""

    title: str
    rows: pd.DataFrame
    method: str
    row: int
    column: int


def regularization(data: ReportData) -> Figure | None:
    """Fig. 4: per mitigation, spurious score (top) and clean / spurious test accuracy (bottom) vs strength.

    One column per method (l2, noise, DP-SGD, clipping) and one row per setting, so the methods of one setting
    sit side by side. One series per n (the clean model included), each starting at the method's reference
    run of the same settings and seeds (the "none" tick), so the cost of a strength is read against none.
    """
    reg = regularized_train(data)
    if reg.empty:
        return None
    plain = unregularized_train(data)
    panels = _panels(reg)
    ncols = max(p.column for p in panels) + 1
    nrows = max(p.row for p in panels) + 1
    colors = palette(reg["poison.count"], lambda n: setting_text("poison.count", n))
    fig, slots = grid(nrows * ncols, ncols=ncols, size=(4.8, 3.2), nrows_per_panel=2)
    used = {(p.row, p.column) for p in panels}
    for i, slot in enumerate(slots):
        if divmod(i, ncols) not in used:  # a method that did not run in this setting
            for ax in slot:
                ax.set_visible(False)
    points = []
    tops = []
    for panel in panels:
        top, bottom = slots[panel.row * ncols + panel.column]
        tops.append(top)
        reference = _matching(plain, panel.rows, method(panel.method))
        none_at = panel.rows["strength"].min() / 10  # where the reference sits on the log axis
        for n, rows in panel.rows.groupby("poison.count"):
            label = setting_text("poison.count", n)
            base = reference[reference["poison.count"] == n]
            points.append(_tradeoff_line(top, rows, base, "spurious_score", none_at, colors[label], "-", "o", label))
            for column, _, style, marker in TRADEOFF:
                points.append(_tradeoff_line(bottom, rows, base, column, none_at, colors[label], style, marker, None))
        for ax in (top, bottom):
            _strength_axis(ax, panel.rows["strength"], none_at, method(panel.method).axis)
        top.set_ylabel(SCORE_LABEL)
        bottom.set_ylabel("test accuracy")
        bottom.set_ylim(0, 1.02)
        panel_title(top, panel.title)
    highest = max(ax.get_ylim()[1] for ax in tops)
    for ax in tops:  # one score scale, so methods side by side compare at a glance
        ax.set_ylim(top=highest)
        floor_at_zero(ax)
    for _, label, style, marker in TRADEOFF:  # legend entries for the two accuracy line styles
        bottom.plot([], [], color="grey", linestyle=style, marker=marker, label=label)
    legend_outside(fig, "color: poisoned training examples; line style: accuracy (lower panels)", colors)
    return finish(
        fig,
        "Regularization trade-off: spurious score and test accuracy vs regularizer strength or gradient clip",
        common(reg),
        over_seeds(point_counts(points)),
        len(regularization_runs(data)),
    )


def _extras(reg: pd.DataFrame) -> list[str]:
    """Columns some method sets that vary among the runs of the methods that do not set them (weight decay
    0 or the recipe's under input noise, clipping beside l2): for those methods, real settings to split by."""
    setters = reg["method"].map(lambda name: method(name).sets)
    extras = []
    for column in SET_BY_A_METHOD:
        others = reg[[column not in sets for sets in setters]]
        if column in reg and others[column].nunique(dropna=False) > 1:
            extras.append(column)
    return extras


def _panels(reg: pd.DataFrame) -> list[Panel]:
    """Panels of the trade-off figure: a row per combination of the settings that vary, a column per method.

    A method whose runs differ in an extra setting (:func:`_extras`) gets one row per value, titled with it.
    """
    extras = _extras(reg)
    order = {name: i for i, name in enumerate([*METHODS, *sorted(set(reg["method"]) - set(METHODS))])}
    names = sorted(set(reg["method"]), key=order.__getitem__)
    columns = {name: i for i, name in enumerate(names)}
    panels: list[Panel] = []
    row = 0
    for group in split(reg, REGULARIZER_DRAWN):
        depth = 1
        for name, rows in sorted(group.rows.groupby("method"), key=lambda item: order[item[0]]):
            own = [c for c in extras if c not in method(name).sets]
            parts = list(rows.groupby(own, dropna=False, sort=True)) if own else [((), rows)]
            for k, (values, part) in enumerate(parts):
                title = ", ".join(filter(None, [method(name).title, group.title, describe(own, values)]))
                panels.append(Panel(title, part, name, row + k, columns[name]))
            depth = max(depth, len(parts))
        row += depth
    return panels


def regularization_runs(data: ReportData) -> pd.DataFrame:
    """The runs the trade-off figure draws: the mitigated ones and their references."""
    reg = regularized_train(data)
    if reg.empty:
        return reg
    plain = unregularized_train(data)
    references = [_matching(plain, p.rows, method(p.method)) for p in _panels(reg)]
    return pd.concat([reg, *references]).drop_duplicates("run_id")


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


def _matching(plain: pd.DataFrame, rows: pd.DataFrame, of: Method) -> pd.DataFrame:
    """The reference of a method's `rows`: unregularized runs with every setting (n and seeds included) of
    `rows`, but the regularizer and what the method sets, which is off (0)."""
    if plain.empty:
        return plain
    keep = pd.Series(True, index=plain.index)
    for column in config_columns(rows):
        if column not in plain or column.startswith("regularizer."):
            continue
        if column in of.sets:
            keep &= plain[column].astype(float) == 0.0
        else:
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
    close = 0.08 * (float(norms.max()) - float(norms.min()))  # labels nearer than this would overprint
    ticks: list[tuple[float, str]] = []
    for name, norm in norms.items():
        if ticks and norm - ticks[-1][0] < close:
            ticks[-1] = (ticks[-1][0], f"{ticks[-1][1]}, {name}")
        else:
            ticks.append((float(norm), str(name)))
    top = ax.secondary_xaxis("top")
    top.set_xticks([x for x, _ in ticks], [label for _, label in ticks], fontsize=8)
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
    """Score and accuracies per method (regularizer, or "clip" for gradient clipping) and strength, averaged over n
    and seeds as the paper reports them (docs/science.md#mitigation); every other setting that varies stays a
    column, and so does a setting a method writes where another method's runs differ in it (see _extras)."""
    runs = regularized_train(data)
    if runs.empty:
        return pd.DataFrame()
    keys = group_keys(runs, ("method", "strength"), REGULARIZER_DRAWN)
    return summarize(
        runs, [*keys[:-2], *_extras(runs), *keys[-2:]], ["spurious_score", "test_acc", "spurious_test_acc"]
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
            "Per method strength (log x): spurious score (top) and clean and spurious test accuracy (bottom), one "
            "series per n (clean model included), mean ± SEM over seeds; one column per method (each regularizer, "
            "and gradient clipping by value where a regularizer ran in the same settings), one row per setting. "
            "The 'none' tick is the run of the same settings without the method: no regularizer, weight decay 0 "
            "for l2, no clipping for clipping.",
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
