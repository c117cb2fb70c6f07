"""What the report reads: the tidy runs table, the extra tables, and the one rule for grouping and naming runs.

The rule (used by every figure and table): runs are averaged only when they
differ in nothing but a seed (``poison.seed``, ``train.model_seed``). Every
other config column that varies becomes a panel, a series or an axis of the
figure; :func:`split` finds those columns and names the groups with only the
settings that tell them apart, and :func:`common` names what all runs share.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import yaml

from rarespur.config.resolve import CONF_DIR
from rarespur.experiments import clean_twin_baselined
from rarespur.store.collect import collect, collect_tables
from rarespur.store.run_dir import flatten

TRAIN = "train"
MEM_INFERENCE = "mem_inference"
SENSITIVITY = "sensitivity"
DELETION_EXPERIMENTS = ("incremental_retraining", "group_influence", "retrain_exact")

# The seeds: runs that differ only in these are repetitions, averaged into one point.
SEEDS = ("poison.seed", "train.model_seed")


def plural(count: int, noun: str) -> str:
    """'1 run', '2 runs': counts in titles and legends read as English."""
    return f"{count} {noun if count == 1 else noun + 's'}"


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)


def _target(value: Any) -> str:
    return f"targets {value}" if str(value).startswith("[") else f"target {value}"


def _count(value: Any) -> str:
    return "clean (n = 0)" if int(value) == 0 else f"n = {int(value)}"


# Display order and wording of the settings readers look for; other config columns follow as "column value".
SHOWN: dict[str, Callable[[Any], str]] = {
    "experiment.name": str,
    "dataset.name": str,
    "model.name": str,
    "optim.name": str,
    "train.lr": lambda v: f"lr {_num(v)}",
    "train.grad_clip": lambda v: f"grad clip {_num(v)}" if v else "no grad clip",
    "train.weight_decay": lambda v: f"weight decay {_num(v)}",
    "regularizer.name": lambda v: "no regularizer" if v == "none" else f"regularizer {v}",
    "pattern.name": lambda v: f"pattern {v}",
    "poison.target": _target,
    "poison.count": _count,
    "epochs": lambda v: plural(int(v), "epoch"),
    "data.train_limit": lambda v: f"first {int(v):,} training images",
    "data.test_limit": lambda v: f"first {int(v):,} test images",
    "eval.eps": lambda v: f"eps {_num(v)}",
    "deletion.mode": lambda v: f"mode {v}",
    "xbl.mask": lambda v: f"{v} mask",
}
MISSING = {"data.train_limit": "all training images", "data.test_limit": "all test images"}
# Shown in panel and series names but not in the figure title: the figure's own title already says it.
NOT_COMMON = ("experiment.name",)


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
    runs = collect(results_dir, clean_twin_baselined())
    if runs.empty:
        raise ValueError(f"no finished runs in {results_dir}; run some jobs first (python run.py results_dir=...)")
    return ReportData(normalize(runs), collect_tables(results_dir), results_dir)


def normalize(runs: pd.DataFrame) -> pd.DataFrame:
    """Hashable, comparable grouping columns: list settings (a two-class target [0, 1]) become JSON text."""
    runs = runs.copy()
    if "poison.target" in runs:
        runs["poison.target"] = runs["poison.target"].map(_target_text)
    for column in config_columns(runs):
        if runs[column].map(_is_list).any():
            runs[column] = runs[column].map(lambda v: json.dumps(np.asarray(v).tolist()) if _is_list(v) else v)
    if "train.grad_clip" in runs:
        runs["train.grad_clip"] = runs["train.grad_clip"].fillna(0.0).astype(float)
    return runs


def _is_list(value: object) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def _target_text(value: object) -> str:
    if _is_list(value):
        return json.dumps([int(v) for v in value])
    if isinstance(value, str):
        return value
    if missing(value):
        return "?"
    return str(int(value))


def missing(value: object) -> bool:
    """None, NaN or pandas' NA (the gaps of a nullable Int64 column)."""
    return value is None or (np.ndim(value) == 0 and not isinstance(value, str) and bool(pd.isna(value)))


def key(value: object) -> str:
    """A setting as comparable text, every kind of missing value the same (''), to match runs across tables.

    (pandas keeps NaN missing through ``astype(str)``, so NaN never equals NaN there.)
    """
    return "" if missing(value) else str(value)


@cache
def _conf_settings() -> tuple[frozenset[str], frozenset[str]]:
    """(config groups, the keys of the experiment files) as conf/ defines them.

    A run column under a config group (``dataset``, ``train``, ``pattern``, ...) is a setting whatever
    its key (a user-defined pattern brings its own keys). The experiment files' own sections are
    different: experiments also report diagnostics under their section's name (``influence.wall_s``),
    so there only the keys the files define are settings.
    """
    base = yaml.safe_load((CONF_DIR / "config.yaml").read_text())
    groups = {k for k in base if k != "defaults"}
    groups |= {k for entry in base.get("defaults", []) if isinstance(entry, dict) for k in entry}
    experiment_keys = set()
    for path in (CONF_DIR / "experiment").glob("*.yaml"):
        experiment_keys |= set(flatten(yaml.safe_load(path.read_text()) or {}))
    return frozenset(groups), frozenset(experiment_keys)


def _root(column: str) -> str:
    return column.split(".")[0]


def config_columns(frame: pd.DataFrame) -> list[str]:
    """The columns of `frame` that are config settings (not metrics, timings or versions)."""
    groups, experiment_keys = _conf_settings()
    return [c for c in frame.columns if _root(c) in groups or c in experiment_keys]


def _order(columns: Iterable[str]) -> list[str]:
    """Readers' order: the SHOWN settings first, then the others alphabetically."""
    columns = list(columns)
    return [c for c in SHOWN if c in columns] + sorted(c for c in columns if c not in SHOWN)


def _ngroups(frame: pd.DataFrame, columns: Sequence[str]) -> int:
    return frame.groupby(list(columns), dropna=False).ngroups if columns else 1


def distinguishing(frame: pd.DataFrame, candidates: Iterable[str], given: Sequence[str] = ()) -> list[str]:
    """The varying candidates, in readers' order, that a reader needs to tell the groups of `frame` apart.

    A column that only follows one before it splits nothing new and would only clutter names, so it is
    left out: a sub-setting (``pattern.top`` follows ``pattern.name``) or a setting that some runs do not
    have (``deletion.mode`` follows ``experiment.name``). A SHOWN setting that every run has stays even
    then (``sgd, lr 0.1`` against ``adam, lr 0.01``), as nothing else would tell it. Columns of `given`
    (drawn as axes or series) count only for candidates of their own config group: a drawn
    ``pattern.name`` makes ``pattern.top`` redundant, but never hides a ``dataset.name`` that goes with it.
    """
    kept: list[str] = []
    for column in _order(c for c in candidates if c in frame and frame[c].nunique(dropna=False) > 1):
        before = [*(g for g in given if g in frame and _root(g) == _root(column)), *kept]
        always_set = column in MISSING or bool(frame[column].notna().all())
        if (column in SHOWN and always_set) or _ngroups(frame, [*before, column]) > _ngroups(frame, before):
            kept.append(column)
    return kept


def settings(frame: pd.DataFrame, drawn: Sequence[str] = ()) -> list[str]:
    """Config columns that vary in `frame` apart from the seeds and the `drawn` ones (axes, series).

    These must split the figure (panels), or a point would average runs that were set up differently.
    """
    candidates = [c for c in config_columns(frame) if c not in SEEDS and c not in drawn]
    return distinguishing(frame, candidates, drawn)


def setting_text(column: str, value: Any) -> str:
    """One setting as a reader would say it: 'adam', 'target 0', '2 epochs', 'first 3,000 training images'."""
    if missing(value):
        return MISSING.get(column, f"{column} unset")
    return SHOWN.get(column, lambda v: f"{column} {_num(v)}")(value)


def describe(columns: Sequence[str], values: Sequence[Any]) -> str:
    """'adam, target 0': the settings of one group, in the order of `columns`."""
    return ", ".join(setting_text(c, v) for c, v in zip(columns, values))


@dataclass(frozen=True)
class Group:
    """Runs that share every setting but the seeds and the drawn columns, with their short name."""

    title: str
    rows: pd.DataFrame


def split(frame: pd.DataFrame, drawn: Sequence[str] = (), first: Sequence[str] = ()) -> list[Group]:
    """One group per combination of the varying settings (see :func:`settings`), named by those settings.

    `first` always split and lead the name, even where a drawn column already tells their values apart
    (the regularizer of the trade-off figure, whose strength columns are drawn). With nothing varying,
    one untitled group holds all rows.
    """
    if frame.empty:
        return []
    keys = [*first, *settings(frame, [*drawn, *first])]
    if not keys:
        return [Group("", frame)]
    return [Group(describe(keys, values), rows) for values, rows in frame.groupby(keys, dropna=False, sort=True)]


def common(frame: pd.DataFrame) -> str:
    """The SHOWN settings every run of `frame` shares, for the figure title ('all runs: mnist, adam, ...')."""
    shared = [
        c
        for c in SHOWN
        if c in frame
        and c not in NOT_COMMON
        and frame[c].nunique(dropna=False) == 1
        and (c in MISSING or frame[c].notna().all())
    ]  # a setting these runs do not have is no news
    return "all runs: " + describe(shared, [frame[c].iloc[0] for c in shared]) if shared else ""


def over_seeds(counts: Iterable[int], stat: str = "mean ± SEM", per: str = "point") -> str:
    """What a point averages: 'mean ± SEM over 2 seeds', '... over 1-3 seeds per point', 'one run per point'."""
    counts = [int(c) for c in counts]
    if not counts:
        return ""
    low, high = min(counts), max(counts)
    if high == 1:
        return f"one run per {per}, not averaged"
    if low == high:
        return f"{stat} over {plural(low, 'seed')}"
    return f"{stat} over {low}-{high} seeds per {per}"


def sem(values: pd.Series) -> float:
    """Standard error of the mean, std (ddof=1) / sqrt(k); NaN for fewer than two values."""
    values = values.dropna().astype(float)
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def mean_sem(frame: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Per group of `by`: mean, sem and number of runs of column `value` (rows where it is missing dropped)."""
    frame = frame.dropna(subset=[value]).astype({value: float})
    grouped = frame.groupby(by, dropna=False, sort=True)[value]
    return grouped.agg(mean="mean", sem=sem, runs="count").reset_index()
