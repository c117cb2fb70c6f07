"""What a logger is to the rest of the package: one tracking run per store run, driven by :class:`Tracking`.

Values cross this boundary already flattened: params are the record's config columns, epoch values
are numbers keyed by name (a helper model's prefixed with its name), metrics are the record's numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rarespur.store.atomic import TEMP_MARK

# Record columns that are neither config nor a result: identity, provenance, versions, pack bookkeeping.
NOT_METRICS = ("run_id", "ran_on.", "version.", "packed_with.", "argv", "finished_at", "data_fingerprint")
# The files of a run directory a tracking run gets a copy of: figures, tables and the run's own JSON.
ARTIFACT_SUFFIXES = (".png", ".pdf", ".svg", ".csv", ".md", ".json")
NOT_ARTIFACTS = ("running.json",)

FINISHED, FAILED, RUNNING = "FINISHED", "FAILED", "RUNNING"


@dataclass(frozen=True)
class RunInfo:
    """What identifies a store run in a tracker: its key, a readable name, its config and its tags."""

    key: str
    name: str
    params: dict[str, Any]  # the flattened config: the record's config columns
    tags: dict[str, str]


class RunLogger:
    """One tracker's view of one store run. ``start`` returns False when the tracker holds that run
    finished already: it is then left alone, so a relaunch or a second export adds nothing."""

    def start(self, info: RunInfo) -> bool:
        raise NotImplementedError

    def log_epochs(self, rows: list[dict[str, float]]) -> None:
        """Epoch rows (``epoch`` + values), each epoch at most once whatever a resumed run sends again."""
        raise NotImplementedError

    def finish(self, metrics: dict[str, float], artifacts: list[Path], run_path: Path) -> None:
        raise NotImplementedError

    def fail(self) -> None:
        raise NotImplementedError


def epoch_values(row: dict[str, Any], model: str | None = None) -> dict[str, float]:
    """The numbers of one epoch row by name; a helper model's (a shadow model, ...) prefixed ``<model>/``."""
    prefix = f"{model}/" if model else ""
    values = {"epoch": float(row["epoch"])}
    for key, value in row.items():
        if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
            values[prefix + key] = float(value)
    return values


def record_metrics(record: dict[str, Any], params: dict[str, Any]) -> dict[str, float]:
    """The record's results: its finite numbers that are not config columns, provenance or bookkeeping."""
    metrics = {}
    for key, value in record.items():
        if key in params or key.startswith(NOT_METRICS) or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            metrics[key] = float(value)
    return metrics


def run_artifacts(run_path: Path) -> list[Path]:
    """The figures, tables and JSON files of a run directory (never weights or checkpoints)."""
    return sorted(
        p
        for p in run_path.rglob("*")
        if p.is_file() and p.suffix in ARTIFACT_SUFFIXES and p.name not in NOT_ARTIFACTS and TEMP_MARK not in p.name
    )


def hparam_value(value: Any) -> str | int | float | bool:
    """A config value as trackers take it: numbers, words and booleans as they are, the rest as text."""
    return value if isinstance(value, (str, int, float, bool)) else str(value)
