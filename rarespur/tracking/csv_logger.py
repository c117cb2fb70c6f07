"""``logger=csv``: plain files a notebook can read while the run trains, one folder per run key."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from rarespur.store.atomic import write_atomic
from rarespur.tracking.run_logger import (
    FAILED,
    FINISHED,
    RUNNING,
    STATUS_FILE,
    Point,
    RunInfo,
    RunLogger,
    folder_status,
)

METRICS = "metrics.csv"  # tidy: one row per epoch and value (epoch, metric, value)
PARAMS = "params.json"  # the flattened config and the tags
FINAL = "final.json"  # the record's metrics, once the run is done


class CsvLogger(RunLogger):
    def __init__(self, save_dir: str | Path) -> None:
        self.root = Path(save_dir).expanduser()
        self.folder = self.root

    def start(self, info: RunInfo, recomputed: bool) -> bool:
        self.folder = self.root / info.key
        if folder_status(self.folder) == FINISHED:
            if not recomputed:
                return False
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.folder / PARAMS, json.dumps({"params": info.params, "tags": info.tags}, indent=1))
        write_atomic(self.folder / STATUS_FILE, RUNNING)
        return True

    def logged(self) -> set[tuple[str, int]]:
        path = self.folder / METRICS
        if not path.exists():
            return set()
        with open(path, newline="") as handle:
            return {(row["metric"], int(row["epoch"])) for row in csv.DictReader(handle)}

    def log_points(self, points: list[Point]) -> None:
        path = self.folder / METRICS
        fresh = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if fresh:
                writer.writerow(["epoch", "metric", "value"])
            writer.writerows(points)

    def finish(self, metrics: dict[str, float], artifacts: list[Path], run_path: Path) -> None:
        write_atomic(self.folder / FINAL, json.dumps({"run_dir": str(run_path), "metrics": metrics}, indent=1))
        write_atomic(self.folder / STATUS_FILE, FINISHED)

    def fail(self) -> None:
        write_atomic(self.folder / STATUS_FILE, FAILED)
