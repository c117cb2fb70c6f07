"""Model-sensitivity figures (docs/science.md#sensitivity-and-weights): pixel-removal curves and MLP first-layer weight
maps."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from rarespur.report.data import (
    SENSITIVITY,
    ReportData,
    common,
    config_columns,
    describe,
    key,
    over_seeds,
    settings,
    split,
)
from rarespur.report.plot import finish, grid, legend_outside, palette, panel_title, sem_band
from rarespur.report.sections import FigureSpec, Section, distinct_runs
from rarespur.report.tables import group_keys, summarize

MAX_WEIGHT_MAP_ROWS = 4
# A clean model is the same training without poison: its pattern, target and data seed only set its scoring.
NOT_TRAINING = ("poison.", "pattern.")


def removal_rows(data: ReportData) -> pd.DataFrame:
    """Pixel-removal points of finished sensitivity runs, with the run's settings."""
    table = data.table("pixel_removal")
    runs = data.experiment(SENSITIVITY)
    if table.empty or runs.empty or not {"run_id", "p", "mean_true_prob"} <= set(table.columns):
        return pd.DataFrame()
    return table.merge(runs[["run_id", *config_columns(runs)]], on="run_id")


def pixel_removal(data: ReportData) -> Figure | None:
    """Fig. 6: mean true-class probability vs removal probability p, one curve per architecture (± SEM over seeds)."""
    rows = removal_rows(data)
    if rows.empty:
        return None
    runs = rows.drop_duplicates("run_id")
    groups = split(runs, ["model.name"])
    colors = palette(runs["model.name"])
    fig, slots = grid(len(groups), ncols=2, size=(4.6, 3.6))
    counts = []
    for group, (ax,) in zip(groups, slots):
        part = rows[rows["run_id"].isin(group.rows["run_id"])]
        for model, curve in part.groupby("model.name"):
            per_p = curve.groupby("p")["mean_true_prob"]
            mean = per_p.mean()
            err = per_p.std(ddof=1) / np.sqrt(per_p.count())
            sem_band(ax, mean.index.to_numpy(), mean.to_numpy(), err.to_numpy(), str(model), colors[str(model)])
            counts.append(curve["run_id"].nunique())
        ax.set_xlabel("probability p of removing each non-zero pixel")
        ax.set_ylabel("mean true-class probability")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        panel_title(ax, group.title)
        ax.grid(alpha=0.3)
    legend_outside(fig, "architecture", colors)
    return finish(
        fig,
        "Pixel removal: how fast each architecture loses confidence",
        common(runs),
        over_seeds(counts, "mean (band ± SEM)", "curve"),
        len(runs),
    )


def weight_map_runs(data: ReportData) -> pd.DataFrame:
    """Sensitivity runs whose weight map file exists in the run store."""
    runs = data.experiment(SENSITIVITY)
    if runs.empty or "weight_map_file" not in runs or data.results_dir is None:
        return pd.DataFrame()
    runs = runs.dropna(subset=["weight_map_file"])
    exists = runs.apply(lambda r: (data.results_dir / r["run_id"] / r["weight_map_file"]).is_file(), axis=1)
    return runs[exists] if len(runs) else runs


def _pairs(runs: pd.DataFrame) -> list[tuple[pd.Series | None, pd.Series | None]]:
    """(clean, poisoned) runs of the same training settings; the largest n first, at most MAX_WEIGHT_MAP_ROWS."""
    keys = [c for c in config_columns(runs) if not c.startswith(NOT_TRAINING)]
    poisoned = runs[runs["poison.count"] > 0].sort_values("poison.count", ascending=False)
    clean = runs[runs["poison.count"] == 0]
    pairs: list[tuple[pd.Series | None, pd.Series | None]] = []
    for _, run in poisoned.iterrows():
        match = clean
        for k in keys:
            match = match[match[k].map(key) == key(run[k])]
        pairs.append((match.iloc[0] if len(match) else None, run))
    if not pairs:
        pairs = [(run, None) for _, run in clean.iterrows()]
    return pairs[:MAX_WEIGHT_MAP_ROWS]


def weight_maps(data: ReportData) -> Figure | None:
    """Fig. 7: per input pixel the largest first-layer weight of an MLP, clean next to poisoned."""
    runs = weight_map_runs(data)
    if runs.empty:
        return None
    pairs = _pairs(runs)
    shown = pd.DataFrame([run for pair in pairs for run in pair if run is not None])
    keys = ["poison.count", *settings(shown, ["poison.count"])]
    fig, slots = grid(2 * len(pairs), ncols=2, size=(3.8, 3.4))
    for row, (clean, poisoned) in enumerate(pairs):
        for col, run in enumerate((clean, poisoned)):
            ax = slots[2 * row + col][0]
            if run is None:
                ax.text(
                    0.5,
                    0.5,
                    "no matching clean run" if col == 0 else "no poisoned run",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                )
                ax.set_axis_off()
                continue
            image = np.load(data.results_dir / run["run_id"] / run["weight_map_file"])
            drawn = ax.imshow(image, cmap="viridis")
            fig.colorbar(drawn, ax=ax, label="max first-layer weight")
            panel_title(ax, describe(keys, [run[k] for k in keys]))
            ax.set_xlabel("pixel column")
            ax.set_ylabel("pixel row")
    return finish(fig, "MLP weight maps: clean vs poisoned", common(shown), "one run per map", len(shown))


def sensitivity_table(data: ReportData) -> pd.DataFrame:
    """Per architecture: area under the pixel-removal curve and true-class probability at half the pixels."""
    runs = data.experiment(SENSITIVITY)
    if runs.empty:
        return pd.DataFrame()
    return summarize(runs, group_keys(runs, ("poison.count",)), ["pixel_removal_auc", "half_removed_true_prob"])


SECTION = Section(
    order=30,
    figures=(
        FigureSpec(
            "pixel_removal",
            "Pixel removal",
            "Mean true-class probability on training images when each non-zero pixel is removed with "
            "probability p, per architecture (band: ± SEM over seeds).",
            "sensitivity runs",
            pixel_removal,
            distinct_runs(removal_rows),
        ),
        FigureSpec(
            "weight_maps",
            "MLP weight maps",
            "Per input pixel the largest first-layer weight of an MLP, a clean model next to a poisoned one "
            "(a learned corner pattern lights up).",
            "sensitivity runs of MLPs with a weight map",
            weight_maps,
            weight_map_runs,
        ),
    ),
    tables={
        "sensitivity": sensitivity_table,
    },
)
