"""What the report reads: the tidy runs table, the extra tables, and helpers to group and average them."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rarespur.collect import collect, collect_tables

TRAIN = "train"
MEM_INFERENCE = "mem_inference"
SENSITIVITY = "sensitivity"
DELETION_EXPERIMENTS = ("incremental_retraining", "group_influence", "retrain_exact")

# Readable names for the columns that appear on axes, legends and panel titles.
LABELS = {
    "dataset.name": "dataset",
    "model.name": "model",
    "optim.name": "optimizer",
    "train.grad_clip": "grad clip",
    "poison.target": "target",
    "pattern.name": "pattern",
    "epochs": "epochs",
    "data.train_limit": "train images",
    "regularizer.name": "regularizer",
    "experiment.name": "method",
    "deletion.mode": "mode",
}


@dataclass
class ReportData:
    """The run store as tables: ``runs`` (one row per finished run) and the extra tables by name."""

    runs: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    results_dir: Path | None = None  # where run folders (weight maps, config.json) live

    def experiment(self, *names: str) -> pd.DataFrame:
        """Rows of the given experiment types (empty frame when there are none)."""
        if self.runs.empty or "experiment.name" not in self.runs:
            return pd.DataFrame()
        return self.runs[self.runs["experiment.name"].isin(names)].copy()

    def table(self, name: str) -> pd.DataFrame:
        return self.tables.get(name, pd.DataFrame())


def load(results_dir: str | Path) -> ReportData:
    """Collect the run store (as ``python -m rarespur collect`` does) into a :class:`ReportData`."""
    results_dir = Path(results_dir)
    runs = collect(results_dir)
    if runs.empty:
        raise ValueError(f"no finished runs in {results_dir}; run some jobs first (python run.py results_dir=...)")
    return ReportData(normalise(runs), collect_tables(results_dir), results_dir)


def normalise(runs: pd.DataFrame) -> pd.DataFrame:
    """Hashable, comparable grouping columns: a two-class target [0, 1] becomes the text "[0, 1]"."""
    runs = runs.copy()
    if "poison.target" in runs:
        runs["poison.target"] = runs["poison.target"].map(_target_text)
    if "train.grad_clip" in runs:
        runs["train.grad_clip"] = runs["train.grad_clip"].fillna(0.0).astype(float)
    return runs


def _target_text(value: object) -> str:
    if isinstance(value, (list, tuple, np.ndarray)):
        return json.dumps([int(v) for v in value])
    if isinstance(value, str):
        return value
    if _missing(value):
        return "?"
    return str(int(value))


def sem(values: pd.Series) -> float:
    """Standard error of the mean, std (ddof=1) / sqrt(k); NaN for fewer than two values."""
    values = values.dropna()
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def mean_sem(frame: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Per group of `by`: mean, sem and number of runs of column `value` (rows where it is missing dropped)."""
    frame = frame.dropna(subset=[value])
    grouped = frame.groupby(by, dropna=False, sort=True)[value]
    out = grouped.agg(mean="mean", sem=sem, runs="count").reset_index()
    return out


def varying(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """The columns of `columns` present in `frame` that take more than one value there."""
    return [c for c in columns if c in frame and frame[c].nunique(dropna=False) > 1]


def present(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    return [c for c in columns if c in frame]


def describe(keys: list[str], values: tuple) -> str:
    """'dataset mnist, optimizer sgd, target 0' for a panel title."""
    return ", ".join(f"{LABELS.get(k, k)} {_short(v)}" for k, v in zip(keys, values) if not _missing(v))


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _short(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def panel_keys(frame: pd.DataFrame, always: list[str], if_varying: list[str]) -> list[str]:
    """Columns that split a figure into panels: `always` (when present) plus those of `if_varying` that vary.

    Settings that vary but are not drawn as lines must split panels, or the
    figure would silently average over them.
    """
    return present(frame, always) + [c for c in varying(frame, if_varying) if c not in always]
