"""Debiasing figures and table (docs/science.md#signal-is-harder): Colored MNIST and Corrupted CIFAR-10 accuracy beside
the published numbers, the rare planted pattern under vanilla vs SiH training, and a SiH run's bias visualization."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from rarespur.data.cifar_corruptions import CORRUPTION_TYPES
from rarespur.data.loaders import dataset_options, load_dataset
from rarespur.errors import UserError
from rarespur.experiments.debias import BIAS_VISUALIZATION
from rarespur.report.data import ReportData, common, mean_sem, over_seeds, split
from rarespur.report.plot import (
    SCORE_LABEL,
    TITLE_SIZE,
    curves_over_n,
    finish,
    floor_at_zero,
    grid,
    legend_outside,
    panel_title,
    point_counts,
    wrap,
)
from rarespur.report.sections import FigureSpec, Section
from rarespur.report.tables import group_keys

log = logging.getLogger(__name__)

DEBIAS = "debias"
METHODS = ("vanilla", "lff", "sih")
COLORS = {"vanilla": "C7", "lff": "C1", "sih": "C0"}
# Unbiased test accuracy (%) by dataset and conflict ratio, the mean over the 10 seeds of the SiH authors' results
# files (Results_and_Evaluation/results_*.txt; SiH's are the numbers its paper prints, docs/science.md#signal-is-harder).
# Corrupted CIFAR-10: their Type0 corruptions at severity 4 (5 of 5), the ResNet VAE for SiH.
PUBLISHED = {
    "cmnist": {
        "sih": {0.005: 71.6, 0.01: 80.0, 0.02: 83.8, 0.05: 86.1},
        "lff": {0.005: 60.4, 0.01: 68.9, 0.02: 77.0, 0.05: 81.2},
        "vanilla": {0.005: 43.7, 0.01: 59.4, 0.02: 73.3, 0.05: 85.5},
    },
    "ccifar10": {
        "sih": {0.005: 27.3, 0.01: 35.2, 0.02: 43.7, 0.05: 55.6},
        "lff": {0.005: 30.0, 0.01: 39.4, 0.02: 47.3, 0.05: 55.8},
        "vanilla": {0.005: 22.3, 0.01: 28.2, 0.02: 34.9, 0.05: 46.9},
    },
}
BIAS_LABELED = tuple(PUBLISHED)  # datasets whose images carry a bias label: accuracy on an unbiased test set


def debias_runs(data: ReportData, colored: bool) -> pd.DataFrame:
    """Debias runs on a bias-labeled benchmark (`colored`: Colored MNIST, Corrupted CIFAR-10) or on the other
    (poisoned) datasets."""
    runs = data.experiment(DEBIAS)
    if runs.empty or "debias.name" not in runs:
        return pd.DataFrame()
    benchmark = runs["dataset.name"].isin(BIAS_LABELED)
    return runs[benchmark if colored else ~benchmark]


def published(dataset: str, method: str) -> dict[float, float]:
    """The published unbiased accuracy (%) of `method` on `dataset` by conflict ratio (empty if none)."""
    return PUBLISHED.get(dataset, {}).get(method, {})


def benchmark_table(data: ReportData) -> pd.DataFrame:
    """Per method and conflict ratio: unbiased test accuracy mean and std over seeds (%), the published
    number and the gap, the accuracy on bias-conflicting test images and the biased head's accuracy."""
    runs = debias_runs(data, colored=True)
    if runs.empty:
        return pd.DataFrame()
    by = group_keys(runs, ("dataset.name", "debias.name", "dataset.conflict_ratio"))
    rows = []
    for values, group in runs.groupby(by, dropna=False, sort=True):
        row = dict(zip(by, values if isinstance(values, tuple) else (values,)))
        acc = 100 * group["test_acc"].astype(float)
        paper = published(row["dataset.name"], row["debias.name"]).get(float(row["dataset.conflict_ratio"]))
        row.update(
            {
                "unbiased acc % mean": acc.mean(),
                "std": acc.std(ddof=1) if len(acc) > 1 else float("nan"),
                "published %": paper,
                "gap (points)": acc.mean() - paper if paper is not None else float("nan"),
                "conflicting acc %": 100 * group["test_acc_conflicting"].astype(float).mean(),
                "bias head acc %": 100 * group["bias_test_acc"].astype(float).mean()
                if "bias_test_acc" in group and group["bias_test_acc"].notna().any()
                else float("nan"),
                "runs": len(group),
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def benchmark_accuracy(data: ReportData) -> Figure | None:
    """Unbiased test accuracy vs conflict ratio per method (mean ± std), published numbers as open markers."""
    runs = debias_runs(data, colored=True)
    if runs.empty:
        return None
    groups = split(runs, ["debias.name", "dataset.conflict_ratio"])  # a panel per dataset (and other settings)
    fig, slots = grid(len(groups), ncols=2, size=(5.2, 3.8))
    counts = []
    for group, (ax,) in zip(groups, slots):
        stats = mean_sem(group.rows, ["debias.name", "dataset.conflict_ratio"], "test_acc")
        std = group.rows.groupby(["debias.name", "dataset.conflict_ratio"])["test_acc"].std(ddof=1).reset_index()
        stats = stats.merge(std.rename(columns={"test_acc": "std"}), on=["debias.name", "dataset.conflict_ratio"])
        counts += stats["runs"].tolist()
        for method in [m for m in METHODS if m in set(stats["debias.name"])] + sorted(
            set(stats["debias.name"]) - set(METHODS)
        ):
            points = stats[stats["debias.name"] == method].sort_values("dataset.conflict_ratio")
            color = COLORS.get(method, "C4")
            ax.errorbar(
                100 * points["dataset.conflict_ratio"],
                100 * points["mean"],
                yerr=100 * points["std"].fillna(0.0),
                marker="o",
                capsize=3,
                color=color,
                label=f"{method} (ours)",
            )
            paper = published(str(group.rows["dataset.name"].iloc[0]), method)
            if paper:
                ratios = sorted(paper)
                ax.plot(
                    [100 * r for r in ratios],
                    [paper[r] for r in ratios],
                    marker="s",
                    markerfacecolor="none",
                    linestyle=":",
                    color=color,
                    label=f"{method} (published)",
                )
        ax.set_xscale("log")
        ratios = sorted(set(100 * group.rows["dataset.conflict_ratio"].astype(float)) | {0.5, 1, 2, 5})
        ax.set_xticks(ratios, [f"{r:g}" for r in ratios])
        ax.minorticks_off()
        ax.set_xlabel("bias-conflicting training images (%)")
        ax.set_ylabel("unbiased test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        panel_title(ax, group.title)
    legend_outside(fig, "method")
    return finish(
        fig,
        "Colored MNIST and Corrupted CIFAR-10: unbiased test accuracy of the debiasing methods",
        common(runs),
        over_seeds(counts, stat="mean ± std"),
        len(runs),
    )


def rare_pattern(data: ReportData) -> Figure | None:
    """Spurious score vs n of a planted pattern, per debiasing method (vanilla vs SiH), per dataset and pattern."""
    runs = debias_runs(data, colored=False)
    runs = runs.dropna(subset=["spurious_score"]) if not runs.empty else runs
    if runs.empty:
        return None
    groups = split(runs, ["poison.count", "debias.name"])
    fig, slots = grid(len(groups), ncols=3, size=(4.4, 3.4))
    present = set(runs["debias.name"])
    colors = {m: COLORS.get(m, "C4") for m in [*METHODS, *sorted(present - set(METHODS))] if m in present}
    points = []
    for group, (ax,) in zip(groups, slots):
        points.append(curves_over_n(ax, group.rows, "debias.name", colors))
        ax.set_ylabel(SCORE_LABEL)
        ax.grid(alpha=0.3)
        floor_at_zero(ax)
        panel_title(ax, group.title)
    legend_outside(fig, "debiasing method", colors)
    return finish(
        fig,
        "Does debiasing stop a rare planted pattern? Spurious score vs n",
        common(runs),
        over_seeds(point_counts(points)),
        len(runs),
    )


def _grid(run_path: Path) -> Path | None:
    """A run's DeepFool grid, also under the name runs stored before the spelling was made one."""
    for name in (BIAS_VISUALIZATION, "bias_visualisation.png"):
        if (run_path / name).is_file():
            return run_path / name
    return None


def visualized_run(data: ReportData) -> pd.DataFrame:
    """The SiH run whose bias visualization the report shows: Colored MNIST first, then the lowest seeds."""
    runs = data.experiment(DEBIAS)
    if runs.empty or data.results_dir is None or "debias.name" not in runs:
        return pd.DataFrame()
    runs = runs[runs["debias.name"] == "sih"]
    runs = runs[[_grid(data.results_dir / run) is not None for run in runs["run_id"]]]
    if runs.empty:
        return runs
    order = [c for c in ("train.model_seed", "poison.seed", "dataset.conflict_ratio") if c in runs]
    runs = runs.assign(_cmnist=runs["dataset.name"] != "cmnist").sort_values(["_cmnist", *order])
    return runs.head(1).drop(columns="_cmnist")


def bias_visualization(data: ReportData) -> Figure | None:
    """The stored DeepFool grid of one SiH run, with the run it comes from."""
    run = visualized_run(data)
    if run.empty:
        return None
    image = mpimg.imread(_grid(data.results_dir / run["run_id"].iloc[0]))
    height, width = image.shape[:2]
    fig = plt.figure(figsize=(max(width / 100, 6.4), height / 100 + 0.8), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_axis_off()
    row = run.iloc[0]
    settings = ", ".join(
        f"{key} {row[key]}"
        for key in ("dataset.name", "dataset.conflict_ratio", "pattern.name", "poison.count", "train.model_seed")
        if key in row and pd.notna(row[key])
    )
    fig.suptitle(f"run {row['run_id']}: {settings}", fontsize=9)
    return fig


def ccifar_runs(data: ReportData) -> pd.DataFrame:
    runs = debias_runs(data, colored=True)
    return runs[runs["dataset.name"] == "ccifar10"] if not runs.empty else runs


def corruption_examples(data: ReportData, aligned: int = 5) -> Figure | None:
    """Corrupted CIFAR-10 as the first ccifar10 run trained on it: per class (a row, named with its own
    corruption) `aligned` bias-aligned training images, then one bias-conflicting image (another class's
    corruption) where the class has one."""
    runs = ccifar_runs(data)
    if runs.empty or data.results_dir is None:
        return None
    run_id = str(runs.sort_values("run_id")["run_id"].iloc[0])
    config = data.results_dir / run_id / "config.json"
    if not config.is_file():  # a store without the run's files (a collected table alone)
        return None
    cfg = json.loads(config.read_text())
    try:
        images = load_dataset(
            "ccifar10", cfg["data"]["root"], path=cfg["dataset"].get("path"), options=dataset_options(cfg["dataset"])
        )
    except (OSError, UserError) as err:  # the data (or the ccifar extra) is not here: no figure, said why
        log.warning("Corrupted CIFAR-10 examples not drawn: %s", err)
        return None
    names = CORRUPTION_TYPES[cfg["dataset"]["corruptions"]]
    fig, axes = plt.subplots(
        images.num_classes, aligned + 1, figsize=(1.2 * (aligned + 1) + 1.6, 1.3 * images.num_classes + 1.0)
    )
    for label, row in enumerate(axes):
        own = np.flatnonzero((images.train_y == label) & (images.train_bias == label))[:aligned]
        other = np.flatnonzero((images.train_y == label) & (images.train_bias != label))[:1]
        for ax, index in zip(row, [*own, *other, *[None] * (aligned + 1)]):
            ax.set_xticks([])
            ax.set_yticks([])
            if index is None:
                ax.set_visible(False)
                continue
            ax.imshow(images.train_x[index])
            if images.train_bias[index] != label:
                ax.set_title(f"conflicting:\n{names[images.train_bias[index]]}", fontsize=7)
        row[0].set_ylabel(f"{images.classes[label]}\n{names[label]}", fontsize=8, rotation=0, ha="right", va="center")
    title = (
        f"Corrupted CIFAR-10 of run {run_id} (conflict_ratio {cfg['dataset']['conflict_ratio']}, severity "
        f"{cfg['dataset']['severity']}): per class and its corruption, bias-aligned training images, then a "
        "bias-conflicting one"
    )
    fig.suptitle(wrap(title, fig.get_figwidth() * 0.95, TITLE_SIZE), fontsize=TITLE_SIZE)
    fig.tight_layout(rect=(0, 0.01, 1, 0.93))
    return fig


SECTION = Section(
    order=45,
    figures=(
        FigureSpec(
            "debias_benchmarks",
            "Debiasing on Colored MNIST and Corrupted CIFAR-10",
            "Accuracy on the unbiased test set vs the share of bias-conflicting training images, per dataset and "
            "method, with the published numbers (the means of the SiH authors' result files).",
            "debias runs on dataset=cmnist or ccifar10",
            benchmark_accuracy,
            lambda data: debias_runs(data, colored=True),
        ),
        FigureSpec(
            "ccifar10_corruptions",
            "Corrupted CIFAR-10: each class's corruption",
            "Training images of the first Corrupted CIFAR-10 run's data, per class with its own corruption, and a "
            "bias-conflicting image carrying another class's corruption.",
            "debias runs on dataset=ccifar10 (with the data here)",
            corruption_examples,
            lambda data: ccifar_runs(data).head(1),
        ),
        FigureSpec(
            "debias_rare",
            "Debiasing against a rare planted pattern",
            "Spurious score vs the number of poisoned training images n for each debiasing method, per "
            "dataset and pattern; n = 0 is the method's clean model.",
            "debias runs on a poisoned dataset",
            rare_pattern,
            lambda data: debias_runs(data, colored=False),
        ),
        FigureSpec(
            "bias_visualization",
            "What the bias model learned (SiH)",
            "Test images (top), their reconstructions (middle), and the reconstructions after DeepFool moved "
            "the bias latent until the bias head predicts another class (bottom): what changes is the bias.",
            "SiH debias runs with a bias visualization",
            bias_visualization,
            visualized_run,
        ),
    ),
    tables={"debias_benchmarks": benchmark_table},
)
