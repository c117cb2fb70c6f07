"""One store run's tracking runs across the configured loggers, from the claim to the record.

A tracker is secondary to the store: a logger that breaks half-way (a tracking server gone) is
warned about once and left out for the rest of the run, which still commits its record; ``export``
can replay it later. A logger that cannot start fails the job before it trains, as a bad config does.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Iterator

from rarespur.config.resolve import identity
from rarespur.store.run_dir import HISTORY, RunDir, flatten
from rarespur.tracking.loggers import build_logger, logger_settings
from rarespur.tracking.run_logger import RunInfo, RunLogger, epoch_values, record_metrics, run_artifacts

log = logging.getLogger(__name__)


def run_info(resolved: dict[str, Any], key: str, packed_with: str = "") -> RunInfo:
    """How trackers name and tag the run of `resolved` (`packed_with`: the pack it trained in, if any)."""
    params = flatten(identity(resolved))
    tags = {
        "experiment_type": str(resolved["experiment"]["name"]),
        "dataset": str(resolved["dataset"]["name"]),
        "pattern": str(resolved["pattern"]["name"]),
        "packed_with": packed_with or "none",
    }
    name = f"{tags['experiment_type']} {tags['dataset']} {tags['pattern']} n={resolved['poison']['count']} {key}"
    return RunInfo(key, name, params, tags)


class Tracking:
    """The loggers that took the run (a logger that holds it finished already does not)."""

    def __init__(self, loggers: list[tuple[str, RunLogger]], info: RunInfo) -> None:
        self.info = info
        self.loggers = [(name, logger) for name, logger in loggers if logger.start(info)]
        self.epoch_names: set[str] = set()
        self.own_epochs = False  # whether the run's own model logged epochs through this process
        self.settled = False

    def epochs(self, rows: list[dict[str, Any]], model: str | None = None) -> None:
        """Epoch rows of the run's model (`model` None) or of a helper model of the run (a shadow model)."""
        values = [epoch_values(row, model) for row in rows]
        self.own_epochs |= model is None and bool(values)
        for row in values:
            self.epoch_names.update(name for name in row if name != "epoch")
        self._each("log epochs", lambda logger: logger.log_epochs(values))

    def finish(self, record: dict[str, Any], run_path: Path) -> None:
        """The record's metrics (those that are not epoch series already) and the run's files; FINISHED.

        A run whose model trained elsewhere (a clean twin's weights, reused; a checkpoint that held every
        epoch already; an export) logs its stored history here, so every tracking run has its curves."""
        history = run_path / HISTORY
        if not self.own_epochs and history.exists():
            self.epochs(json.loads(history.read_text()))
        metrics = {k: v for k, v in record_metrics(record, self.info.params).items() if k not in self.epoch_names}
        artifacts = run_artifacts(run_path)
        self._each("finish", lambda logger: logger.finish(metrics, artifacts, run_path))
        self.settled = True

    def fail(self) -> None:
        if not self.settled:
            self._each("mark the run failed", lambda logger: logger.fail())
            self.settled = True

    def _each(self, what: str, action) -> None:
        for entry in list(self.loggers):
            try:
                action(entry[1])
            except Exception as err:  # the store is the truth: the run goes on, `export` can replay it
                log.warning(
                    "logger=%s could not %s for run %s (%s); it logs nothing more", entry[0], what, self.info.key, err
                )
                self.loggers.remove(entry)


def start_tracking(resolved: dict[str, Any], key: str, packed_with: str = "") -> Tracking:
    """The tracking runs of the configured loggers for run `key`, created or continued."""
    settings = logger_settings(resolved)
    loggers = [(name, build_logger(name, s, resolved["results_dir"])) for name, s in settings.items()]
    return Tracking(loggers, run_info(resolved, key, packed_with))


@contextlib.contextmanager
def tracked(run: RunDir, resolved: dict[str, Any], packed_with: str = "") -> Iterator[Tracking]:
    """Track the claimed `run` while the caller computes it: its epochs reach every logger through the
    run directory's epoch listeners (the loop's epoch callback calls them); an exception marks the
    tracking runs FAILED; an interruption (a requeue) leaves them running, to be continued on resume."""
    tracking = start_tracking(resolved, run.key, packed_with)
    listener = lambda row, model: tracking.epochs([row], model)  # noqa: E731
    run.epoch_listeners.append(listener)
    try:
        yield tracking
    except Exception:
        tracking.fail()
        raise
    finally:
        run.epoch_listeners.remove(listener)
