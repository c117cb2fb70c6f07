"""``logger=csv``: plain files a notebook can read while the run trains, one folder per run key."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from rarespur.store.atomic import write_atomic
from rarespur.tracking.run_logger import FAILED, FINISHED, RUNNING, RunInfo, RunLogger

METRICS = "metrics.csv"  # tidy: one row per epoch and value (epoch, metric, value)
PARAMS = "params.json"  # the flattened config and the tags
FINAL = "final.json"  # the record's metrics, once the run is done
STATUS = "status"  # RUNNING, FINISHED or FAILED


class CsvLogger(RunLogger):
    def __init__(self, save_dir: str | Path) -> None:
        self.root = Path(save_dir).expanduser()
        self.folder: Path | None = None
        self.last_epoch: dict[str, float] = {}

    def start(self, info: RunInfo) -> bool:
        self.folder = self.root / info.key
        if _status(self.folder) == FINISHED:
            return False
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.folder / PARAMS, json.dumps({"params": info.params, "tags": info.tags}, indent=1))
        write_atomic(self.folder / STATUS, RUNNING)
        self.last_epoch = _last_epochs(self.folder / METRICS)
        return True

    def log_epochs(self, rows: list[dict[str, float]]) -> None:
        path = self.folder / METRICS
        new = [
            (row["epoch"], name, value)
            for row in rows
            for name, value in row.items()
            if name != "epoch" and row["epoch"] > self.last_epoch.get(name, 0)
        ]
        if not new:
            return
        fresh = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if fresh:
                writer.writerow(["epoch", "metric", "value"])
            writer.writerows((int(epoch), name, value) for epoch, name, value in new)
        for epoch, name, _ in new:
            self.last_epoch[name] = epoch

    def finish(self, metrics: dict[str, float], artifacts: list[Path], run_path: Path) -> None:
        write_atomic(self.folder / FINAL, json.dumps({"run_dir": str(run_path), "metrics": metrics}, indent=1))
        write_atomic(self.folder / STATUS, FINISHED)

    def fail(self) -> None:
        write_atomic(self.folder / STATUS, FAILED)


def _status(folder: Path) -> str | None:
    path = folder / STATUS
    return path.read_text().strip() if path.exists() else None


def _last_epochs(path: Path) -> dict[str, Any]:
    """The last epoch logged for each value, so that a resumed run appends only epochs it had not logged."""
    last: dict[str, float] = {}
    if path.exists():
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                last[row["metric"]] = max(last.get(row["metric"], 0), float(row["epoch"]))
    return last
