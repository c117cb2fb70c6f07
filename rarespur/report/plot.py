"""Shared drawing pieces: a panel grid, mean +- SEM curves over n, titles that fit, one legend off the data.

Layout rules every figure follows: panel titles name only what differs between
panels, the figure title names what all panels share and what a point averages,
every text is wrapped to the width it has, and the legend sits below the axes
(constrained layout makes room for it), so nothing covers data or is clipped.
"""

from __future__ import annotations

import math
import re
import textwrap
from typing import Callable, Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from rarespur.report.data import mean_sem, plural  # noqa: E402

N_LABEL = "poisoned training examples n (symlog; 0 = clean)"
SCORE_LABEL = "spurious score\n(fraction of test images)"
TITLE_SIZE = 11
PANEL_TITLE_SIZE = 9
LEGEND_SIZE = 8
CHAR_WIDTH = 0.56  # average glyph width of the default font (DejaVu Sans), in units of the font size
MIN_WIDTH = 6.4  # inches: room for the figure title and legend even with one narrow panel
MARGIN = 0.05  # share of the (transformed) data range left free at each end of an x axis


def wrap(text: str, width_in: float, fontsize: float) -> str:
    """`text` wrapped to lines that fit `width_in` inches at `fontsize` points.

    Each line of `text` is wrapped alone, and a line breaks after a ", " or "; " where it can, so a
    setting ("first 3,000 training images") stays on one line.
    """
    chars = max(12, int(width_in * 72 / (CHAR_WIDTH * fontsize)))
    return "\n".join(out for line in text.split("\n") if line for out in _pack(re.split(r"(?<=[,;]) ", line), chars))


def _pack(parts: list[str], chars: int) -> list[str]:
    """`parts` joined by spaces into lines of at most `chars`; a part longer than a line breaks at its spaces."""
    pieces = [piece for part in parts for piece in textwrap.wrap(part, chars, break_on_hyphens=False)]
    lines: list[str] = []
    for piece in pieces:
        if lines and len(lines[-1]) + 1 + len(piece) <= chars:
            lines[-1] += " " + piece
        else:
            lines.append(piece)
    return lines


def grid(
    n_panels: int, ncols: int = 3, size: tuple[float, float] = (4.6, 3.6), nrows_per_panel: int = 1
) -> tuple[Figure, list[list[Axes]]]:
    """A figure with `n_panels` panel slots, each `nrows_per_panel` axes tall; unused slots are hidden."""
    ncols = max(1, min(ncols, n_panels))
    rows = math.ceil(n_panels / ncols)
    width = max(size[0] * ncols, MIN_WIDTH)
    fig, axes = plt.subplots(
        rows * nrows_per_panel,
        ncols,
        figsize=(width, size[1] * rows * nrows_per_panel),
        squeeze=False,
        layout="constrained",
    )
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


def panel_title(ax: Axes, text: str) -> None:
    """A panel title wrapped to the panel's width."""
    width = ax.get_figure().get_figwidth() * ax.get_position().width
    ax.set_title(wrap(text, width, PANEL_TITLE_SIZE), fontsize=PANEL_TITLE_SIZE)


def finish(fig: Figure, title: str, shared: str, averaged: str, runs: int) -> Figure:
    """The figure title: what it shows, the settings all panels share, what a point averages, the run count."""
    lines = [title, shared, "; ".join(part for part in (averaged, plural(runs, "run")) if part)]
    fig.suptitle(wrap("\n".join(lines), fig.get_figwidth() * 0.95, TITLE_SIZE), fontsize=TITLE_SIZE)
    return fig


def legend_outside(fig: Figure, title: str | None = None, order: Iterable[str] = ()) -> None:
    """One legend for the whole figure, below the panels; entries of the same label appear once.

    Series keep their color in every panel (see :func:`palette`), so one legend serves all panels and
    covers none of them; below (not beside) the panels it can never meet the figure title either.
    Labels listed in `order` (a palette) come first, in that order.
    """
    entries: dict[str, object] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if not entries:
        return
    rank = {label: i for i, label in enumerate(order)}
    entries = dict(sorted(entries.items(), key=lambda item: rank.get(item[0], len(rank))))
    renderer = fig.canvas.get_renderer()
    for ncol in range(len(entries), 0, -1):  # as many columns as fit the figure's width
        legend = fig.legend(
            list(entries.values()),
            list(entries),
            loc="outside lower center",
            ncols=ncol,
            fontsize=LEGEND_SIZE,
            title=title,
            title_fontsize=LEGEND_SIZE,
            handlelength=3,
        )
        if ncol == 1 or legend.get_window_extent(renderer).width <= 0.98 * fig.bbox.width:
            return
        legend.remove()


def palette(values: Iterable[object], name: Callable[[object], str] = str) -> dict[str, str]:
    """A fixed color per series (keyed by its `name`), so a series looks the same in every panel."""
    return {name(v): f"C{i % 10}" for i, v in enumerate(sorted(set(values)))}


def curves_over_n(
    ax: Axes,
    rows: pd.DataFrame,
    line_key: str,
    colors: dict[str, str],
    value: str = "spurious_score",
    linestyles: dict[str, str] | None = None,
) -> pd.DataFrame:
    """One mean +- SEM curve of `value` over poison.count per value of `line_key`; returns the points drawn.

    The points' ``runs`` column says how many seeds each one averages. Curves are drawn in the order of
    `colors`, and `linestyles` tells apart curves that may lie on top of each other.
    """
    stats = mean_sem(rows, [line_key, "poison.count"], value)
    lines = stats[line_key].astype(str)
    for line in (name for name in colors if name in set(lines)):
        points = stats[lines == line].sort_values("poison.count")
        ax.errorbar(
            points["poison.count"],
            points["mean"],
            yerr=points["sem"].fillna(0.0),
            marker="o",
            markersize=4,
            capsize=3,
            label=line,
            color=colors[line],
            linestyle=(linestyles or {}).get(line, "-"),
        )
    symlog_n(ax, rows["poison.count"])
    return stats


def symlog_n(ax: Axes, ns: pd.Series) -> None:
    """Symlog n axis (0 = clean) with room left and right, so the markers at both ends show whole."""
    ax.set_xscale("symlog", linthresh=1)
    values = sorted(ns.unique())
    ax.set_xticks(values, [str(int(n)) for n in values], fontsize=8)  # the n values run, not decades
    ax.minorticks_off()
    pad_x(ax, float(values[0]), float(values[-1]))
    ax.set_xlabel(N_LABEL)


def pad_x(ax: Axes, low: float, high: float) -> None:
    """x limits MARGIN beyond the data in the axis' own scale (symlog, log or linear)."""
    scale = ax.xaxis.get_transform()
    t_low, t_high = scale.transform([low, high])
    pad = MARGIN * (t_high - t_low) if t_high > t_low else 0.5
    ax.set_xlim(*scale.inverted().transform([t_low - pad, t_high + pad]))


def floor_at_zero(ax: Axes) -> None:
    """y from just below 0 (a non-negative quantity), so points at 0 show whole above the axis."""
    top = ax.get_ylim()[1]
    ax.set_ylim(-MARGIN * top, top)


def sem_band(ax: Axes, x: np.ndarray, mean: np.ndarray, err: np.ndarray, label: str, color: str) -> None:
    ax.plot(x, mean, label=label, color=color)
    ax.fill_between(x, mean - np.nan_to_num(err), mean + np.nan_to_num(err), color=color, alpha=0.2)


def point_counts(stats: Sequence[pd.DataFrame]) -> list[int]:
    """The ``runs`` of every point of several :func:`mean_sem` tables (for the 'over k seeds' text)."""
    return [int(c) for s in stats if "runs" in s for c in s["runs"]]
