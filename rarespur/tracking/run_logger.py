"""What a logger is to the rest of the package: one tracking run per store run, driven by :class:`Tracking`.

Values cross this boundary already flattened: params are the record's config columns, epoch values are
``(epoch, name, value)`` points (a helper model's names prefixed with its name), metrics are the record's
numbers. Which points a tracking run holds already is the logger's to say (:meth:`RunLogger.logged`);
what is new is :class:`rarespur.tracking.session.Tracking`'s to decide, in one place for every logger.
"""

from __future__ import annotations

import abc
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
STATUS_FILE = "rarespur_status"  # RUNNING, FINISHED or FAILED: the file loggers that write folders keep it in

FINISHED, FAILED, RUNNING = "FINISHED", "FAILED", "RUNNING"

Point = tuple[int, str, float]  # (epoch, value name, value)


@dataclass(frozen=True)
class RunInfo:
    """What identifies a store run in a tracker: its key, a readable name, its config and its tags."""

    key: str
    name: str
    params: dict[str, Any]  # the flattened config: the record's config columns
    tags: dict[str, str]


class RunLogger(abc.ABC):
    """One tracker's view of one store run."""

    @abc.abstractmethod
    def start(self, info: RunInfo, recomputed: bool) -> bool:
        """Create or continue the tracking run of `info.key`. One the tracker holds finished is left alone
        (False), so an export adds nothing twice; unless the store computes that run again (`recomputed`: its
        directory was deleted or damaged), then it is replaced by a fresh one."""

    @abc.abstractmethod
    def logged(self) -> set[tuple[str, int]]:
        """The (value name, epoch) points the tracking run holds already (from an earlier attempt)."""

    @abc.abstractmethod
    def log_points(self, points: list[Point]) -> None: ...

    @abc.abstractmethod
    def finish(self, metrics: dict[str, float], artifacts: list[Path], run_path: Path) -> None: ...

    @abc.abstractmethod
    def fail(self) -> None: ...


def epoch_points(row: dict[str, Any], model: str | None = None) -> list[Point]:
    """The numbers of one epoch row as points; a helper model's (a shadow model, ...) names prefixed ``<model>/``."""
    prefix = f"{model}/" if model else ""
    epoch = int(row["epoch"])
    return [
        (epoch, prefix + key, float(value))
        for key, value in row.items()
        if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool)
    ]


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


def folder_status(folder: Path) -> str | None:
    """The status a folder-writing logger left in `folder` (None: it holds no tracking run)."""
    path = folder / STATUS_FILE
    return path.read_text().strip() if path.exists() else None
