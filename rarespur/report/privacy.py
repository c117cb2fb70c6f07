"""Membership-inference figures (SPEC 1.7): members vs poisoned examples flagged, and ROC curves."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from rarespur.report.data import MEM_INFERENCE, ReportData, mean_sem, panel_keys
from rarespur.report.plot import finish, grid, panels

ATTACK_ORDER = ("shadow", "loss", "lira_offline", "lira_online")
SPLIT = ["dataset.name", "model.name", "optim.name", "poison.target", "pattern.name", "epochs"]
FPR_GRID = np.logspace(-4, 0, 200)


def attacks(runs: pd.DataFrame) -> list[str]:
    """Attack names with a ``attack.<A>.members_flagged`` column, in the paper's order first."""
    found = {m.group(1) for c in runs.columns if (m := re.fullmatch(r"attack\.(.+)\.members_flagged", c))}
    return [a for a in ATTACK_ORDER if a in found] + sorted(found - set(ATTACK_ORDER))


def mi_runs(data: ReportData) -> pd.DataFrame:
    runs = data.experiment(MEM_INFERENCE)
    return runs if not runs.empty and attacks(runs) else pd.DataFrame()


def membership_bars(data: ReportData) -> Figure | None:
    """Fig. 5a: per attack and n, fraction of all members flagged vs of the poisoned examples flagged (+ accuracy)."""
    runs = mi_runs(data)
    if runs.empty:
        return None
    keys = panel_keys(runs, [], SPLIT)
    cells = [(attack, name, rows) for attack in attacks(runs) for name, rows in panels(runs, keys)]
    fig, slots = grid(len(cells), ncols=2, size=(5.6, 3.8))
    for (attack, name, rows), (ax,) in zip(cells, slots):
        prefix = f"attack.{attack}."
        ns = sorted(rows["poison.count"].unique())
        x = np.arange(len(ns))
        for offset, (metric, label, color) in zip((-0.2, 0.2), (
                ("members_flagged", "all training members flagged", "C0"),
                ("poisoned_flagged", "poisoned examples flagged", "C3"))):
            if prefix + metric not in rows:
                continue
            stats = mean_sem(rows, ["poison.count"], prefix + metric).set_index("poison.count").reindex(ns)
            ax.bar(x + offset, stats["mean"], width=0.4, yerr=stats["sem"].fillna(0.0), capsize=3,
                   label=label, color=color)
        if prefix + "acc" in rows:
            acc = mean_sem(rows, ["poison.count"], prefix + "acc").set_index("poison.count").reindex(ns)
            ax.plot(x, acc["mean"], "k_", markersize=22, markeredgewidth=2, label="attack accuracy")
        ax.set_xticks(x, [str(int(n)) for n in ns])
        ax.set_xlabel("poisoned training examples n")
        ax.set_ylabel("fraction flagged as member")
        ax.set_ylim(0, 1.05)
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(f"attack {attack}" + (f", {name}" if name else ""), fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    return finish(fig, "Membership inference: poisoned examples vs all members flagged (mean ± SEM over seeds)",
                  len(runs))


def roc_rows(data: ReportData) -> pd.DataFrame:
    """ROC points of finished mem_inference runs, with the run's n."""
    roc = data.table("roc")
    runs = mi_runs(data)
    if roc.empty or runs.empty or not {"run_id", "attack", "fpr", "tpr"} <= set(roc.columns):
        return pd.DataFrame()
    return roc.merge(runs[["run_id", "poison.count", *[c for c in SPLIT if c in runs]]], on="run_id")


def mean_roc(points: pd.DataFrame) -> np.ndarray:
    """TPR averaged over runs on a common log-spaced FPR grid (each run's curve interpolated)."""
    curves = []
    for _, curve in points.groupby("run_id"):
        curve = curve.sort_values(["fpr", "tpr"])
        curves.append(np.interp(FPR_GRID, curve["fpr"].to_numpy(float), curve["tpr"].to_numpy(float)))
    return np.mean(curves, axis=0)


def membership_roc(data: ReportData) -> Figure | None:
    """Fig. 5b: log-log ROC curves per attack, one curve per n (mean TPR over runs)."""
    roc = roc_rows(data)
    if roc.empty:
        return None
    keys = panel_keys(roc, [], SPLIT)
    order = [a for a in ATTACK_ORDER if a in set(roc["attack"])] + sorted(set(roc["attack"]) - set(ATTACK_ORDER))
    cells = [(attack, name, rows) for attack in order
             for name, rows in panels(roc[roc["attack"] == attack], keys)]
    fig, slots = grid(len(cells), ncols=2, size=(4.6, 4.2))
    for (attack, name, rows), (ax,) in zip(cells, slots):
        for i, (n, points) in enumerate(rows.groupby("poison.count")):
            tpr = mean_roc(points)
            keep = tpr > 0
            ax.plot(FPR_GRID[keep], tpr[keep], color=f"C{i % 10}",
                    label=f"n = {int(n)} ({points['run_id'].nunique()} runs)")
        ax.plot(FPR_GRID, FPR_GRID, color="grey", linestyle=":", label="chance")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(FPR_GRID[0], 1)
        ax.set_ylim(FPR_GRID[0], 1.05)
        ax.set_xlabel("false positive rate (log)")
        ax.set_ylabel("true positive rate (log)")
        ax.set_title(f"attack {attack}" + (f", {name}" if name else ""), fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3, which="both")
    return finish(fig, "Membership inference ROC curves", roc["run_id"].nunique())
