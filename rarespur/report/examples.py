"""Example poisoned images (docs/science.md#patterns): one test image clean and with each pattern pasted on, as the runs
saw it.

Each pattern is rebuilt from the config.json of a run that used it (so
user-defined patterns show too) and applied with that run's data seed to a
test image of that run's dataset. When the dataset files are not available
here, the embedded digits dataset stands in (the panel says so).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure

from rarespur.config.resolve import CONF_DIR
from rarespur.data.loaders import ImageData, dataset_options, load_dataset
from rarespur.data.patterns import build_pattern
from rarespur.report.data import ReportData, plural
from rarespur.report.plot import TITLE_SIZE, grid, panel_title, wrap
from rarespur.report.sections import FigureSpec, Section

log = logging.getLogger(__name__)

FALLBACK = "digits"


def pattern_configs(data: ReportData) -> list[dict[str, Any]]:
    """One resolved run config per pattern name in the runs (first run), else every pattern in conf/pattern."""
    configs: dict[str, dict[str, Any]] = {}
    runs = data.runs
    if data.results_dir is not None and not runs.empty and "pattern.name" in runs:
        for _, run in runs.sort_values("run_id").iterrows():
            config = data.results_dir / str(run["run_id"]) / "config.json"
            if run["pattern.name"] not in configs and config.is_file():
                configs[run["pattern.name"]] = json.loads(config.read_text())
    if configs:
        return [configs[name] for name in sorted(configs)]
    return [
        {"pattern": p, "dataset": {"name": FALLBACK}, "data": {"root": None}, "poison": {"seed": 0}}
        for p in _conf_patterns()
    ]


def _conf_patterns() -> list[dict[str, Any]]:
    """The pattern files of conf/pattern that define a pattern (alias files such as v8 only point to one)."""
    out = []
    for path in sorted((CONF_DIR / "pattern").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        if isinstance(spec, dict) and "kind" in spec:
            out.append(spec)
    return out


def _dataset(cfg: dict[str, Any], cache: dict[tuple, ImageData | None]) -> tuple[ImageData, str]:
    """The run's dataset, or the digits stand-in with a note when its files are missing here."""
    name = cfg["dataset"]["name"]
    options = dataset_options(cfg["dataset"])
    key = (name, cfg.get("data", {}).get("root"), cfg["dataset"].get("path"), tuple(sorted(options.items())))
    if key not in cache:
        try:
            cache[key] = load_dataset(name, root=key[1], path=key[2], options=options)
        except (OSError, ValueError) as err:  # DatasetNotFoundError is a FileNotFoundError
            log.warning("example images: %s not available (%s); showing %s instead", name, err, FALLBACK)
            cache[key] = None
    if cache[key] is None:
        if (FALLBACK, None, None, ()) not in cache:
            cache[(FALLBACK, None, None, ())] = load_dataset(FALLBACK)
        return cache[(FALLBACK, None, None, ())], f"{FALLBACK} ({name} not found)"
    return cache[key], name


def example_images(data: ReportData) -> Figure | None:
    """Fig. 10: per pattern, a test image without (top) and with (bottom) the pattern."""
    cache: dict[tuple, ImageData | None] = {}
    shown = []
    for cfg in pattern_configs(data):
        try:
            pattern = build_pattern(cfg["pattern"])
            images, source = _dataset(cfg, cache)
            pattern.check_shape(images.image_shape)
        except (OSError, ValueError) as err:
            log.warning("example images: pattern %s left out: %s", cfg["pattern"].get("name"), err)
            continue
        clean = images.test_x[:1]
        shown.append((pattern.name, source, clean[0], pattern.apply(clean, cfg["poison"]["seed"])[0]))
    if not shown:
        return None
    fig, slots = grid(len(shown), ncols=min(len(shown), 7), size=(2.2, 2.4), nrows_per_panel=2)
    sources = {source for _, source, _, _ in shown}
    for (name, source, clean, patched), (top, bottom) in zip(shown, slots):
        for ax, image, what in ((top, clean, "clean"), (bottom, patched, f"with {name}")):
            _show(ax, image)
            panel_title(ax, f"{what}\n{source}" if ax is top and len(sources) > 1 else what)
    dataset = f"first test image of {sources.pop()}" if len(sources) == 1 else "first test image of each dataset"
    fig.suptitle(
        wrap(
            f"Example poisoned images: {dataset}, without (top) and with (bottom) each pattern, pixel values in [0, 1]",
            fig.get_figwidth() * 0.95,
            TITLE_SIZE,
        ),
        fontsize=TITLE_SIZE,
    )
    return fig


def _show(ax, image: np.ndarray) -> None:
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(np.clip(image, 0, 1))
    ax.set_xticks([])
    ax.set_yticks([])


SECTION = Section(
    order=50,
    figures=(
        FigureSpec(
            "example_images",
            "Example poisoned images",
            "One test image without (top) and with (bottom) each pattern used in the runs, built from the "
            "runs' pattern configs and data seeds.",
            "patterns",
            example_images,
            lambda data: pd.DataFrame(pattern_configs(data)),
            lambda data: f"{plural(len(pattern_configs(data)), 'pattern')}.",
        ),
    ),
)
