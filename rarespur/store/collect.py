"""Merge every finished run of a results directory into one tidy table (one row per run)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Collection

import pandas as pd

from rarespur.config.names import resolve_model_name
from rarespur.errors import MissingFileError
from rarespur.store.comparison import baseline_comparison, load_indicators
from rarespur.store.run_dir import CONFIG, DONE, RECORD, STORED_REGULARIZER_KEYS, TABLES, histories, run_damage

log = logging.getLogger(__name__)

TABLE_NAME = "runs"
EPOCHS_NAME = "epochs"  # <name>.parquet: one row per run and training epoch


def _with_late_baseline(record: dict, run: Path, results_dir: Path, clean_twin_baselined: Collection[str]) -> dict:
    """Fill baseline_score / p_value of a poisoned run whose clean baseline finished after it."""
    if (
        record.get("experiment.name") not in clean_twin_baselined
        or record.get("poison.count", 0) == 0
        or "p_value" in record
    ):
        return record
    cfg = json.loads((run / CONFIG).read_text())
    return {**record, **baseline_comparison(cfg, load_indicators(run), results_dir, quiet=True)}


def _canonical_names(record: dict) -> dict:
    """Records written before the renames say ``largemlp`` and ``regularizer.sigma``: one name per
    concept in the table (the model's current name, every regularizer's ``regularizer.strength``)."""
    if isinstance(record.get("model.name"), str):
        record["model.name"] = resolve_model_name(record["model.name"])
    for (regularizer, key), stored in STORED_REGULARIZER_KEYS.items():
        old, new = f"regularizer.{stored}", f"regularizer.{key}"
        if record.get("regularizer.name") == regularizer and old in record and new not in record:
            record[new] = record.pop(old)
    return record


def collect(results_dir: str | Path, clean_twin_baselined: Collection[str]) -> pd.DataFrame:
    """One row per run whose ``done`` marker exists; unfinished runs are left out.

    `clean_twin_baselined` names the experiment types whose poisoned runs are compared with the same
    config at poison.count=0 (each type says so: :func:`rarespur.experiments.clean_twin_baselined`); the
    store knows no experiment type itself."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise MissingFileError(f"results directory {results_dir} does not exist; pass the run store (results_dir)")
    rows = [
        _canonical_names(
            _with_late_baseline(json.loads((run / RECORD).read_text()), run, results_dir, clean_twin_baselined)
        )
        for run in finished_runs(results_dir)
    ]
    return _nullable_ints(pd.DataFrame(rows), rows)


def finished_runs(results_dir: Path, quiet: bool = False) -> list[Path]:
    """The run directories with a done marker whose files are intact; each damaged one is skipped with a
    warning that names the file (``status`` lists them as corrupt, a relaunch runs them again)."""
    runs = []
    for run in sorted(results_dir.iterdir()):
        if not (run / DONE).exists():
            continue
        why = run_damage(run)
        if why is None:
            runs.append(run)
        else:
            if not quiet:
                log.warning("warning: skipped run %s: %s", run, why)
    return runs


def _nullable_ints(table: pd.DataFrame, rows: list[dict]) -> pd.DataFrame:
    """Integer columns with missing values as pandas' nullable Int64.

    pandas turns an int column with a gap into float (``data.train_limit`` 5000
    next to null became 5000.0 in the CSV); the records' own JSON types say
    which columns hold integers.
    """
    for column in table.columns:
        values = [row[column] for row in rows if row.get(column) is not None]
        if 0 < len(values) < len(rows) and all(type(v) is int for v in values):
            table[column] = table[column].astype("Int64")
    return table


def collect_tables(results_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The extra tidy tables of the finished runs (``tables/<name>.csv``), merged per name.

    Each row gets the ``run_id`` of its run, to join with the runs table.
    """
    parts: dict[str, list[pd.DataFrame]] = {}
    for run in finished_runs(Path(results_dir), quiet=True):  # collect() has warned
        if not (run / TABLES).is_dir():
            continue
        for csv in sorted((run / TABLES).glob("*.csv")):
            try:
                part = pd.read_csv(csv)
            except pd.errors.EmptyDataError:  # a table without rows (a detect run that flagged nothing)
                continue
            part.insert(0, "run_id", run.name)
            parts.setdefault(csv.stem, []).append(part)
    return {name: pd.concat(frames, ignore_index=True) for name, frames in parts.items()}


def collect_epochs(results_dir: str | Path) -> pd.DataFrame:
    """Every finished run's training histories, one row per run, model and epoch, keyed by ``run_id``: each
    curve of a sweep, ready to join with the runs table. ``model`` is null for the run's own model and names a
    helper model it trained (membership inference: target, shadow, lira0, ...). Runs that trained no model (a
    detection or deletion run that loads its parent's) have no rows."""
    frames = []
    for run in finished_runs(Path(results_dir), quiet=True):  # collect() has warned
        for model, history in histories(run).items():
            frame = pd.DataFrame(history)
            if not frame.empty:
                frame.insert(0, "model", model)
                frame.insert(0, "run_id", run.name)
                frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run_id", "model", "epoch"])


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _mixes_text_and_numbers(column: pd.Series) -> bool:
    """Parquet holds one type a column: a setting that is a word in some runs and a number in others is text."""
    kinds = {type(v) for v in column if not _missing(v)}
    return str in kinds and len(kinds) > 1


def write_table(table: pd.DataFrame, out_dir: str | Path, name: str = TABLE_NAME) -> tuple[Path, Path]:
    """Write ``<name>.parquet`` and ``<name>.csv`` (``runs`` by default).

    List columns stay lists in Parquet when every row holds a list
    (``poisoned_indices``); a column mixing lists and scalars (``poison.target``
    of single- and two-class runs) and every list in the CSV become JSON text, and in Parquet a column
    mixing words and numbers (``influence.scale``: auto or 1000) becomes text.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parquet, csv = out_dir / f"{name}.parquet", out_dir / f"{name}.csv"
    for_parquet, for_csv = table.copy(), table.copy()
    for column in table.columns:
        is_list = table[column].map(lambda v: isinstance(v, list))
        if is_list.any():
            for_csv[column] = table[column].map(json.dumps)
            if not is_list.all():
                for_parquet[column] = for_csv[column]
        elif _mixes_text_and_numbers(table[column]):  # influence.scale: "auto" beside 1000.0
            for_parquet[column] = table[column].map(lambda v: None if _missing(v) else str(v))
    for_parquet.to_parquet(parquet, index=False)
    for_csv.to_csv(csv, index=False)
    return parquet, csv
