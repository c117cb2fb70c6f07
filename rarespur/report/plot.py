"""Shared drawing pieces: a panel grid, mean +- SEM curves over n, and consistent axis labels."""
from __future__ import annotations

import math
import textwrap
from typing import Iterator

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from rarespur.report.data import describe, mean_sem  # noqa: E402

N_LABEL = "poisoned training examples n (symlog; 0 = clean)"
SCORE_LABEL = "spurious score (fraction of test images)"


def grid(n_panels: int, ncols: int = 3, size: tuple[float, float] = (4.6, 3.6),
         nrows_per_panel: int = 1) -> tuple[Figure, list[list[Axes]]]:
    """A figure with `n_panels` panel slots, each `nrows_per_panel` axes tall; unused slots are hidden."""
    ncols = max(1, min(ncols, n_panels))
    rows = math.ceil(n_panels / ncols)
    fig, axes = plt.subplots(rows * nrows_per_panel, ncols, figsize=(size[0] * ncols, size[1] * rows * nrows_per_panel),
                             squeeze=False, layout="constrained")
    slots = []
    for i in range(rows * ncols):
        r, c = divmod(i, ncols)
        column = [axes[r * nrows_per_panel + k][c] for k in range(nrows_per_panel)]
        if i < n_panels:
            slots.append(column)
        else:
            for ax in column:
                ax.set_visible(False)
    return fig, slots


def panels(frame: pd.DataFrame, keys: list[str]) -> Iterator[tuple[str, pd.DataFrame]]:
    """(title, rows) per combination of `keys`; one untitled panel when `keys` is empty."""
    if not keys:
        yield "", frame
        return
    for values, rows in frame.groupby(keys, dropna=False, sort=True):
        yield describe(keys, values if isinstance(values, tuple) else (values,)), rows


def curves_over_n(ax: Axes, rows: pd.DataFrame, line_key: str, value: str = "spurious_score",
                  colors: dict[str, str] | None = None) -> int:
    """One mean +- SEM curve of `value` over poison.count per value of `line_key`; returns the number of curves.

    `colors` fixes a colour per line value, so the same line looks the same in every panel.
    """
    stats = mean_sem(rows, [line_key, "poison.count"], value)
    for i, (line, points) in enumerate(stats.groupby(line_key, sort=True)):
        points = points.sort_values("poison.count")
        color = (colors or {}).get(line, f"C{i % 10}")
        ax.errorbar(points["poison.count"], points["mean"], yerr=points["sem"].fillna(0.0), marker="o",
                    markersize=4, capsize=3, label=str(line), color=color)
    symlog_n(ax)
    return stats[line_key].nunique()


def symlog_n(ax: Axes) -> None:
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(left=-0.3)
    ax.set_xlabel(N_LABEL)


def finish(fig: Figure, title: str, runs: int) -> Figure:
    """The figure title with the number of runs drawn, wrapped to the figure's width."""
    width = max(30, int(fig.get_figwidth() * 11))
    fig.suptitle(textwrap.fill(f"{title} ({runs} runs)", width))
    return fig


def sem_band(ax: Axes, x: np.ndarray, mean: np.ndarray, err: np.ndarray, label: str, color: str) -> None:
    ax.plot(x, mean, label=label, color=color)
    ax.fill_between(x, mean - np.nan_to_num(err), mean + np.nan_to_num(err), color=color, alpha=0.2)
