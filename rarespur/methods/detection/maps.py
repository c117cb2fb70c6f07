"""The per-class perturbation map of a detect run, drawn for a reader: where does a white patch pull
the model towards each class, with the top finding outlined."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_perturbation_maps(
    maps: np.ndarray, path: Path, classes: tuple[str, ...], window: int, top: dict | None, title: str
) -> None:
    """A PNG with one panel per class on one color scale (centered at 0), the top flagged finding outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = len(maps)
    cols = min(n, 5)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols + 1.2, 2.3 * rows + 0.9), squeeze=False)
    limit = max(float(np.abs(maps).max()), 1e-6)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.set_visible(False)
            continue
        shown = ax.imshow(maps[i], cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(f"class {classes[i]}", fontsize=9)
        if top is not None and top["class"] == i:
            height, width = top["bottom"] - top["top"], top["right"] - top["left"]
            ax.add_patch(Rectangle((top["left"] - 0.5, top["top"] - 0.5), width, height, fill=False, ec="k", lw=1.5))
            ax.set_xlabel(f"top finding: {top['family']}", fontsize=8)
    fig.colorbar(shown, ax=list(axes.flat), shrink=0.8, label=f"mean rise of p(class), {window}x{window} white patch")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100, format="png", bbox_inches="tight")
    plt.close(fig)
