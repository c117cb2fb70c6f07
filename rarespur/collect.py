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
    """Write ``runs.parquet`` and ``runs.csv``.

    List columns stay lists in Parquet when every row holds a list
    (``poisoned_indices``); a column mixing lists and scalars (``poison.target``
    of single- and two-class runs) and every list in the CSV become JSON text.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parquet, csv = out_dir / f"{TABLE_NAME}.parquet", out_dir / f"{TABLE_NAME}.csv"
    for_parquet, for_csv = table.copy(), table.copy()
    for column in table.columns:
        is_list = table[column].map(lambda v: isinstance(v, list))
        if is_list.any():
            for_csv[column] = table[column].map(json.dumps)
            if not is_list.all():
                for_parquet[column] = for_csv[column]
    for_parquet.to_parquet(parquet, index=False)
    for_csv.to_csv(csv, index=False)
    return parquet, csv
