"""One store run's tracking runs across the configured loggers, from the claim to the record.

A tracker is secondary to the store: a logger that cannot start (a tracking server down) or breaks
half-way is warned about once and left out for the rest of the run, which still commits its record;
``python -m rarespur export`` replays it later. What cannot work at all (an unknown logger, its package
missing) fails before the run directory exists (:func:`rarespur.tracking.loggers.logger_settings`).

Each (value, epoch) point reaches a tracking run once, whatever a resumed, failed or relaunched job sends
again: the points a tracking run holds are asked of its logger when it starts, and at the end the run's
stored histories are replayed, so epochs trained before a logger was added, or by a model the run reused,
fill the gaps.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

from rarespur.config.resolve import identity
from rarespur.store.run_dir import RunDir, flatten, histories
from rarespur.tracking.loggers import build_logger, logger_settings
from rarespur.tracking.run_logger import RunInfo, RunLogger, epoch_points, record_metrics, run_artifacts

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


class _Taken:
    """A logger that took the run, and the points its tracking run holds."""

    def __init__(self, name: str, logger: RunLogger) -> None:
        self.name, self.logger = name, logger
        self.held = logger.logged()


class Tracking:
    """The loggers that took the run: not those holding it finished already (unless the store computes it
    again: `recomputed`), nor those that could not start."""

    def __init__(self, loggers: list[tuple[str, RunLogger]], info: RunInfo, recomputed: bool) -> None:
        self.info = info
        self.taken: list[_Taken] = []
        for name, logger in loggers:
            try:
                if logger.start(info, recomputed):
                    self.taken.append(_Taken(name, logger))
            except Exception as err:  # the store is the truth: the run goes on untracked, export adds it later
                log.warning(
                    "logger=%s could not start run %s (%s); the run goes on without it (python -m rarespur "
                    "export %s adds it afterwards)",
                    name,
                    info.key,
                    err,
                    name,
                )
        self.epoch_names: set[str] = set()
        self.settled = False

    def epochs(self, rows: list[dict[str, Any]], model: str | None = None) -> None:
        """Epoch rows of the run's model (`model` None) or of a helper model of the run (a shadow model)."""
        points = [point for row in rows for point in epoch_points(row, model)]
        self.epoch_names.update(name for _, name, _ in points)

        def new_ones(taken: _Taken) -> None:
            fresh = [p for p in points if (p[1], p[0]) not in taken.held]
            if fresh:
                taken.logger.log_points(fresh)
                taken.held.update((name, epoch) for epoch, name, _ in fresh)

        self._each("log epochs", new_ones)

    def finish(self, record: dict[str, Any], run_path: Path) -> None:
        """The stored histories (their missing points), the record's metrics (those that are not epoch series)
        and the run's files; FINISHED."""
        for model, history in histories(run_path).items():
            self.epochs(history, model)
        metrics = {k: v for k, v in record_metrics(record, self.info.params).items() if k not in self.epoch_names}
        artifacts = run_artifacts(run_path)
        self._each("finish", lambda taken: taken.logger.finish(metrics, artifacts, run_path))
        self.settled = True

    def fail(self) -> None:
        if not self.settled:
            self._each("mark the run failed", lambda taken: taken.logger.fail())
            self.settled = True

    def _each(self, what: str, action: Callable[[_Taken], None]) -> None:
        for taken in list(self.taken):
            try:
                action(taken)
            except Exception as err:  # the store is the truth: the run goes on, `export` can replay it
                log.warning(
                    "logger=%s could not %s for run %s (%s); it logs nothing more", taken.name, what, self.info.key, err
                )
                self.taken.remove(taken)


def start_tracking(resolved: dict[str, Any], key: str, packed_with: str = "", recomputed: bool = True) -> Tracking:
    """The tracking runs of the configured loggers for run `key`, created or continued."""
    settings = logger_settings(resolved)
    loggers = [(name, build_logger(name, s, resolved["results_dir"])) for name, s in settings.items()]
    return Tracking(loggers, run_info(resolved, key, packed_with), recomputed)


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
