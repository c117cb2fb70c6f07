"""The ``logger`` config group's names: which class each one is, and the extra it needs installed."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from rarespur.errors import ConfigError, UserError
from rarespur.tracking.run_logger import RunLogger


@dataclass(frozen=True)
class LoggerKind:
    module: str  # rarespur.tracking.<module>, imported only when the logger is used
    cls: str
    needs: str  # the package it cannot work without
    extra: str  # pip install -e ".[<extra>]" installs it


KINDS = {
    "csv": LoggerKind("csv_logger", "CsvLogger", "", ""),
    "tensorboard": LoggerKind("tensorboard_logger", "TensorBoardLogger", "tensorboard", "tensorboard"),
    "mlflow": LoggerKind("mlflow_logger", "MlflowLogger", "mlflow", "mlflow"),
}


class MissingExtra(UserError):
    """A logger's package is not installed."""


def logger_settings(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The config's loggers by name (none when ``logger`` is unset), after checking each name and its package:
    a bad one fails here, before a run directory exists."""
    chosen = cfg.get("logger") or {}
    if not isinstance(chosen, dict):
        raise ConfigError(f"logger={chosen!r} is not a logger group choice; use logger={' | '.join(KINDS)} or many")
    for name in chosen:
        if name not in KINDS:
            raise ConfigError(f"logger.{name} is not a logger; valid: {', '.join(KINDS)} (several: logger=many)")
        require_package(name)
    return chosen


def require_package(name: str) -> None:
    kind = KINDS[name]
    if not kind.needs:
        return
    try:
        importlib.import_module(kind.needs)
    except ImportError:
        raise MissingExtra(
            f"logger={name} needs the {kind.needs} package, which is not installed: "
            f'pip install -e ".[{kind.extra}]" (or pip install {kind.needs})'
        ) from None


def build_logger(name: str, settings: dict[str, Any], results_dir: str) -> RunLogger:
    """A fresh logger `name` with its config group settings (``save_dir``, ``tracking_uri``, ...)."""
    kind = KINDS[name]
    cls = getattr(importlib.import_module(f"rarespur.tracking.{kind.module}"), kind.cls)
    if name == "mlflow":
        return cls(settings.get("tracking_uri"), settings.get("experiment_name") or "rarespur", results_dir)
    return cls(settings["save_dir"])
