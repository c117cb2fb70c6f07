"""Figures from the ``train`` runs (SPEC 1.6, 1.8, 1.10): score vs n, architectures, optimizers,
regularisation trade-off, pattern norm vs score. Each takes the tables and returns a figure or None."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from rarespur.report.data import TRAIN, ReportData, mean_sem, panel_keys, sem
from rarespur.report.plot import SCORE_LABEL, curves_over_n, finish, grid, panels

# Settings that split panels when they vary (otherwise a curve would silently average over them).
SETTINGS = ["dataset.name", "model.name", "optim.name", "train.grad_clip", "poison.target", "epochs",
            "data.train_limit", "train.lr", "train.model_seed", "eval.eps"]
REGULARIZERS = {"l2": ("regularizer.strength", "L2 weight decay lambda (log)"),
                "gaussian_noise": ("regularizer.sigma", "Gaussian input noise sigma (log)")}


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
    """Score-vs-n curves, one per value of `line_key`, in panels split by the other settings."""

    line_key: str
    always: tuple[str, ...]                 # settings that always split panels
    title: str
    drawn_as_lines: tuple[str, ...] = ()    # settings the line key combines (never panel keys)
    min_lines: int = 1                      # 2 for a comparison: panels with one curve are left out

    def groups(self, runs: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
        if runs.empty:
            return []
        skip = (self.line_key, *self.drawn_as_lines)
        keys = panel_keys(runs, list(self.always), [s for s in SETTINGS if s not in skip])
        return [(name, rows) for name, rows in panels(runs, keys) if rows[self.line_key].nunique() >= self.min_lines]

    def rows(self, runs: pd.DataFrame) -> pd.DataFrame:
        groups = self.groups(runs)
        return pd.concat([rows for _, rows in groups]) if groups else pd.DataFrame()

    def draw(self, runs: pd.DataFrame) -> Figure | None:
        groups = self.groups(runs)
        if not groups:
            return None
        fig, slots = grid(len(groups))
        for (name, rows), (ax,) in zip(groups, slots):
            curves_over_n(ax, rows, self.line_key)
            ax.set_title(name, fontsize=9)
            ax.set_ylabel(SCORE_LABEL)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, title=self.line_key.split(".")[0])
        return finish(fig, self.title, sum(len(rows) for _, rows in groups))


PATTERNS = Comparison("pattern.name", ("dataset.name", "optim.name", "poison.target"),
                      "Spurious score vs number of poisoned examples, per pattern (mean ± SEM over data seeds)")
MODELS = Comparison("model.name", ("dataset.name", "pattern.name", "optim.name", "poison.target"),
                    "Architecture comparison: spurious score vs n (mean ± SEM over data seeds)", min_lines=2)
OPTIMIZERS = Comparison("optimizer", ("dataset.name", "model.name", "pattern.name", "poison.target"),
                        "Optimizer comparison: spurious score vs n (mean ± SEM over data seeds)",
                        drawn_as_lines=("optim.name", "train.grad_clip"), min_lines=2)


def score_vs_n(data: ReportData) -> Figure | None:
    """Fig. 1: spurious score vs n per pattern, mean +- SEM over data seeds, clean baseline at n = 0."""
    return PATTERNS.draw(unregularized_train(data))


def architecture_runs(data: ReportData) -> pd.DataFrame:
    return MODELS.rows(unregularized_train(data))


def architectures(data: ReportData) -> Figure | None:
    """Fig. 2: score vs n per architecture, in the panels (settings) where two or more models ran."""
    return MODELS.draw(unregularized_train(data))


def optimizer_label(row: pd.Series) -> str:
    clip = row.get("train.grad_clip", 0.0)
    return f"{row['optim.name']} clip {clip:g}" if clip and clip > 0 else str(row["optim.name"])


def _with_optimizer(runs: pd.DataFrame) -> pd.DataFrame:
    return runs.assign(optimizer=runs.apply(optimizer_label, axis=1)) if not runs.empty else runs


def optimizer_runs(data: ReportData) -> pd.DataFrame:
    return OPTIMIZERS.rows(_with_optimizer(unregularized_train(data)))


def optimizers(data: ReportData) -> Figure | None:
    """Fig. 3: score vs n per optimizer setting (optimizer + gradient clipping), where two or more ran."""
    return OPTIMIZERS.draw(_with_optimizer(unregularized_train(data)))


def regularized_train(data: ReportData) -> pd.DataFrame:
    """Train runs with an L2 or Gaussian-noise regularizer (with their strength in ``strength``)."""
    runs = data.experiment(TRAIN)
    if runs.empty or "regularizer.name" not in runs:
        return pd.DataFrame()
    parts = []
    for name, (column, _) in REGULARIZERS.items():
        rows = runs[runs["regularizer.name"] == name]
        if not rows.empty and column in rows:
            parts.append(rows.assign(strength=rows[column].astype(float)))
    return pd.concat(parts).dropna(subset=["strength", "spurious_score"]) if parts else pd.DataFrame()


def regularization(data: ReportData) -> Figure | None:
    """Fig. 4: per regularizer, spurious score (left axis) and clean / spurious test accuracy (right) vs strength.

    Averaged over n (the clean model included) and data seeds, as the paper does (SPEC 1.8); the
    unregularized runs of the same settings and n values are the dashed reference lines.
    """
    reg = regularized_train(data)
    if reg.empty:
        return None
    plain = unregularized_train(data)
    keys = ["regularizer.name"] + panel_keys(reg, ["dataset.name"], ["pattern.name", *SETTINGS])
    groups = list(panels(reg, keys))
    fig, slots = grid(len(groups), ncols=2, size=(6.4, 4.8))
    metrics = [("spurious_score", "spurious score", "C0"), ("test_acc", "clean test accuracy", "C1"),
               ("spurious_test_acc", "spurious test accuracy (patched non-target)", "C2")]
    used = len(reg)
    for (name, rows), (ax,) in zip(groups, slots):
        right = ax.twinx()
        reference = _matching(plain, rows)
        used += len(reference)
        for column, label, color in metrics:
            if column not in rows:
                continue
            target_ax = ax if column == "spurious_score" else right
            points = mean_sem(rows, ["strength"], column)
            target_ax.errorbar(points["strength"], points["mean"], yerr=points["sem"].fillna(0.0), marker="o",
                               capsize=3, color=color, label=label)
            if column in reference and reference[column].notna().any():
                target_ax.axhline(reference[column].mean(), color=color, linestyle="--", linewidth=1,
                                  label=f"{label}, no regularizer")
        regularizer = rows["regularizer.name"].iloc[0]
        ax.set_xscale("log")
        ax.set_xlabel(REGULARIZERS[regularizer][1])
        ax.set_ylabel("spurious score (averaged over n and seeds)", color="C0")
        right.set_ylabel("accuracy", color="C1")
        right.set_ylim(0, 1.02)
        ax.set_ylim(bottom=0)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        handles = [h for a in (ax, right) for h in a.get_legend_handles_labels()[0]]
        ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="upper center",
                  bbox_to_anchor=(0.5, -0.18), ncol=2)
    return finish(fig, "Regularisation trade-off: spurious score vs clean and spurious accuracy", used)


def _matching(plain: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """Unregularized runs with the panel's settings and the n values and data seeds the regularized runs used."""
    if plain.empty:
        return plain
    keep = plain["poison.count"].isin(rows["poison.count"].unique())
    for key in ["pattern.name", "poison.seed", *SETTINGS]:
        if key in plain and key in rows:
            keep &= plain[key].isin(rows[key].unique())
    return plain[keep]


def pattern_norm_runs(data: ReportData) -> pd.DataFrame:
    """Poisoned unregularized train runs that recorded their pattern norm."""
    runs = unregularized_train(data)
    if runs.empty or "pattern_norm" not in runs:
        return pd.DataFrame()
    return runs[runs["poison.count"] > 0].dropna(subset=["pattern_norm"])


def pattern_norm_table(data: ReportData) -> pd.DataFrame:
    """Per dataset and pattern: mean pattern norm, mean score (poisoned runs), runs; the figure's points."""
    runs = pattern_norm_runs(data)
    if runs.empty:
        return pd.DataFrame()
    return (runs.groupby(["dataset.name", "pattern.name"])
            .agg(pattern_norm=("pattern_norm", "mean"), spurious_score=("spurious_score", "mean"),
                 score_sem=("spurious_score", sem), runs=("spurious_score", "count"))
            .reset_index())


def pearson(points: pd.DataFrame) -> float:
    """Pearson r of mean norm vs mean score over patterns; NaN with fewer than 3 patterns or no spread."""
    if len(points) < 3 or points["pattern_norm"].nunique() < 2 or points["spurious_score"].nunique() < 2:
        return float("nan")
    return float(stats.pearsonr(points["pattern_norm"], points["spurious_score"]).statistic)


def pattern_norm(data: ReportData) -> Figure | None:
    """Fig. 8: mean ||x - P(x)||_2 vs mean spurious score per pattern (poisoned runs), Pearson r per dataset."""
    table = pattern_norm_table(data)
    if table.empty:
        return None
    groups = list(table.groupby("dataset.name"))
    fig, slots = grid(len(groups), ncols=2, size=(5.0, 4.0))
    for (dataset, points), (ax,) in zip(groups, slots):
        ax.errorbar(points["pattern_norm"], points["spurious_score"], yerr=points["score_sem"].fillna(0.0),
                    fmt="o", capsize=3)
        for _, p in points.iterrows():
            ax.annotate(p["pattern.name"], (p["pattern_norm"], p["spurious_score"]), textcoords="offset points",
                        xytext=(5, 4), fontsize=9)
        r = pearson(points)
        r_text = f"Pearson r = {r:.2f}" if np.isfinite(r) else "Pearson r: needs 3+ patterns"
        ax.set_title(f"{dataset}: {r_text} over {len(points)} patterns", fontsize=9)
        ax.set_xlabel("mean pattern norm ||x - P(x)||₂ over the test set")
        ax.set_ylabel("mean spurious score (poisoned runs, all n)")
        ax.grid(alpha=0.3)
    return finish(fig, "Pattern norm vs spurious score", int(table["runs"].sum()))
