"""Membership-inference figures (docs/science.md#membership-inference): members vs poisoned examples flagged, and ROC
curves."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from rarespur.report.data import MEM_INFERENCE, ReportData, common, config_columns, mean_sem, over_seeds, split
from rarespur.report.plot import finish, grid, legend_outside, palette, panel_title
from rarespur.report.sections import FigureSpec, Section, distinct_runs
from rarespur.report.tables import group_keys, summarize

ATTACK_ORDER = ("shadow", "loss", "lira_offline", "lira_online")
FPR_GRID = np.logspace(-4, 0, 200)
BARS = (
    ("members_flagged", "all training members flagged", "C0", -0.2),
    ("poisoned_flagged", "poisoned examples flagged", "C3", 0.2),
)


def attacks(runs: pd.DataFrame) -> list[str]:
    """Attack names with a ``attack.<A>.members_flagged`` column, in the paper's order first."""
    found = {m.group(1) for c in runs.columns if (m := re.fullmatch(r"attack\.(.+)\.members_flagged", c))}
    return [a for a in ATTACK_ORDER if a in found] + sorted(found - set(ATTACK_ORDER))


def mi_runs(data: ReportData) -> pd.DataFrame:
    runs = data.experiment(MEM_INFERENCE)
    return runs if not runs.empty and attacks(runs) else pd.DataFrame()


def _cells(frame: pd.DataFrame, names: list[str]) -> list[tuple[str, str, pd.DataFrame]]:
    """(attack, panel title, runs) per attack and group of settings: attacks are never averaged together either."""
    groups = split(frame, ["poison.count"])
    return [
        (attack, f"{attack} attack" + (f", {g.title}" if g.title else ""), g.rows) for attack in names for g in groups
    ]


def membership_bars(data: ReportData) -> Figure | None:
    """Fig. 5a: per attack and n, fraction of all members flagged vs of the poisoned examples flagged (+ accuracy)."""
    runs = mi_runs(data)
    if runs.empty:
        return None
    cells = _cells(runs, attacks(runs))
    fig, slots = grid(len(cells), ncols=2, size=(4.8, 3.4))
    counts: list[int] = []
    for (attack, title, rows), (ax,) in zip(cells, slots):
        counts += _bars(ax, rows, attack)
        panel_title(ax, title)
    legend_outside(fig)
    return finish(
        fig,
        "Membership inference: poisoned examples vs all training members flagged",
        common(runs),
        over_seeds(counts),
        len(runs),
    )


def _bars(ax: Axes, rows: pd.DataFrame, attack: str) -> list[int]:
    """Bars of members / poisoned examples flagged and the attack accuracy per n; returns the runs per bar."""
    prefix = f"attack.{attack}."
    ns = sorted(rows["poison.count"].unique())
    x = np.arange(len(ns))
    counts = []
    for metric, label, color, offset in BARS:
        if prefix + metric not in rows:
            continue
        stats = mean_sem(rows, ["poison.count"], prefix + metric).set_index("poison.count").reindex(ns)
        ax.bar(x + offset, stats["mean"], width=0.4, yerr=stats["sem"].fillna(0.0), capsize=3, label=label, color=color)
        counts += stats["runs"].dropna().astype(int).tolist()
    if prefix + "acc" in rows:
        acc = mean_sem(rows, ["poison.count"], prefix + "acc").set_index("poison.count").reindex(ns)
        ax.plot(x, acc["mean"], "k_", markersize=22, markeredgewidth=2, label="attack accuracy")
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":", label="chance level 0.5")
    ax.set_xticks(x, [str(int(n)) for n in ns])
    ax.set_xlabel("poisoned training examples n")
    ax.set_ylabel("fraction flagged as member")
    ax.set_ylim(0, 1.05)
    return counts


def roc_rows(data: ReportData) -> pd.DataFrame:
    """ROC points of finished mem_inference runs, with the run's settings."""
    roc = data.table("roc")
    runs = mi_runs(data)
    if roc.empty or runs.empty or not {"run_id", "attack", "fpr", "tpr"} <= set(roc.columns):
        return pd.DataFrame()
    return roc.merge(runs[["run_id", *config_columns(runs)]], on="run_id")


def mean_roc(points: pd.DataFrame) -> np.ndarray:
    """TPR averaged over runs on a common log-spaced FPR grid (each run's curve interpolated)."""
    curves = []
    for _, curve in points.groupby("run_id"):
        curve = curve.sort_values(["fpr", "tpr"])
        curves.append(np.interp(FPR_GRID, curve["fpr"].to_numpy(float), curve["tpr"].to_numpy(float)))
    return np.mean(curves, axis=0)


def membership_roc(data: ReportData) -> Figure | None:
    """Fig. 5b: log-log ROC curves per attack, one curve per n (mean TPR over the seeds' runs)."""
    roc = roc_rows(data)
    if roc.empty:
        return None
    runs = roc.drop_duplicates("run_id")
    order = [a for a in ATTACK_ORDER if a in set(roc["attack"])] + sorted(set(roc["attack"]) - set(ATTACK_ORDER))
    cells = _cells(runs, order)
    colors = palette(runs["poison.count"], lambda n: f"n = {int(n)}")
    fig, slots = grid(len(cells), ncols=2, size=(4.4, 3.8))
    counts: list[int] = []
    for (attack, title, cell_runs), (ax,) in zip(cells, slots):
        rows = roc[(roc["attack"] == attack) & roc["run_id"].isin(cell_runs["run_id"])]
        for n, points in rows.groupby("poison.count"):
            tpr = mean_roc(points)
            keep = tpr > 0
            label = f"n = {int(n)}"
            ax.plot(FPR_GRID[keep], tpr[keep], color=colors[label], label=label)
            counts.append(points["run_id"].nunique())
        ax.plot(FPR_GRID, FPR_GRID, color="grey", linestyle=":", label="chance")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(FPR_GRID[0], 1.3)
        ax.set_ylim(FPR_GRID[0], 1.3)
        ax.set_xlabel("false positive rate (log)")
        ax.set_ylabel("true positive rate (log)")
        panel_title(ax, title)
        ax.grid(alpha=0.3, which="both")
    legend_outside(fig, "poisoned examples", colors)
    return finish(
        fig,
        "Membership inference ROC curves",
        common(runs),
        over_seeds(counts, "mean TPR", "curve"),
        runs["run_id"].nunique(),
    )


def membership_table(data: ReportData) -> pd.DataFrame:
    """Per attack and n: accuracy, AUC, TPR at low FPR, members and poisoned examples flagged."""
    runs = mi_runs(data)
    if runs.empty:
        return pd.DataFrame()
    parts = []
    for attack in attacks(runs):
        prefix = f"attack.{attack}."
        renamed = runs.rename(columns=lambda c, prefix=prefix: c[len(prefix) :] if c.startswith(prefix) else c)
        renamed = renamed.loc[:, ~renamed.columns.duplicated()]
        part = summarize(
            renamed,
            group_keys(renamed, ("poison.count",)),
            ["poisoned_flagged", "members_flagged", "acc", "auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr"],
        )
        if not part.empty:
            part.insert(0, "attack", attack)
            parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


SECTION = Section(
    order=20,
    figures=(
        FigureSpec(
            "membership_bars",
            "Membership inference: members vs poisoned examples flagged",
            "Per attack and n: the fraction of all training members the attack flags as members against the "
            "fraction of the poisoned examples it flags (bars, mean ± SEM over seeds) and its accuracy (black).",
            "mem_inference runs",
            membership_bars,
            mi_runs,
        ),
        FigureSpec(
            "membership_roc",
            "Membership inference ROC curves",
            "Log-log ROC curves of each attack, TPR averaged over seeds per n; the dotted diagonal is chance.",
            "mem_inference runs with a roc table",
            membership_roc,
            distinct_runs(roc_rows),
        ),
    ),
    tables={
        "membership_inference": membership_table,
    },
)
