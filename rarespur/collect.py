"""Merge every finished run of a results directory into one tidy table (one row per run)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from rarespur.experiments.train import baseline_comparison, load_indicators
from rarespur.store import CONFIG, DONE, RECORD

TABLE_NAME = "runs"


def _with_late_baseline(record: dict, run: Path, results_dir: Path) -> dict:
    """Fill baseline_score / p_value of a poisoned run whose clean baseline finished after it."""
    if record.get("experiment.name") != "train" or record.get("poison.count", 0) == 0 or "p_value" in record:
        return record
    cfg = json.loads((run / CONFIG).read_text())
    return {**record, **baseline_comparison(cfg, load_indicators(run), results_dir)}


def collect(results_dir: str | Path) -> pd.DataFrame:
    """One row per run whose ``done`` marker exists; unfinished runs are left out."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results directory {results_dir} does not exist; pass the run store (results_dir)")
    rows = [
        _with_late_baseline(json.loads((run / RECORD).read_text()), run, results_dir)
        for run in sorted(results_dir.iterdir())
        if (run / DONE).exists()
    ]
    return pd.DataFrame(rows)


def write_table(table: pd.DataFrame, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``runs.parquet`` (lists kept as lists) and ``runs.csv`` (lists as JSON text)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parquet, csv = out_dir / f"{TABLE_NAME}.parquet", out_dir / f"{TABLE_NAME}.csv"
    table.to_parquet(parquet, index=False)
    as_text = table.copy()
    for column in as_text.columns:
        if as_text[column].map(lambda v: isinstance(v, list)).any():
            as_text[column] = as_text[column].map(json.dumps)
    as_text.to_csv(csv, index=False)
    return parquet, csv
