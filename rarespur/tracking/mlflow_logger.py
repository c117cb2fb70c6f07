"""``logger=mlflow``: one MLflow run per store run, found again by its ``run_key`` tag.

MLflow keeps every value logged at a step, so the logger asks the tracking run which epochs it has
before logging more: a resumed job, or an export after a job that failed half-way, adds only the
epochs that are missing.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

from rarespur.tracking.run_logger import FAILED, FINISHED, RUNNING, RunInfo, RunLogger

RUN_KEY_TAG = "run_key"
PARAM_BATCH, METRIC_BATCH = 100, 1000  # the most MLflow takes in one log_batch request
PARAM_LENGTH = 6000  # the longest param value MLflow stores
# MLflow 3's UI opens an experiment as GenAI traces unless told it holds trained models: then on its runs
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def default_tracking_uri(results_dir: str | Path) -> str:
    """A SQLite file in the run store: fine for local sweeps; SLURM sweeps export instead (docs/tracking.md)."""
    return f"sqlite:///{Path(results_dir).expanduser().resolve() / 'mlflow.db'}"


def artifact_root(tracking_uri: str) -> Path | None:
    """Where a new experiment keeps its artifacts: beside a SQLite file (MLflow's default would be the
    working directory of whichever job created the experiment); a tracking server keeps its own."""
    prefix = "sqlite:///"
    return (
        Path(tracking_uri[len(prefix) :]).resolve().parent / "mlartifacts" if tracking_uri.startswith(prefix) else None
    )


@functools.lru_cache(maxsize=4)
def _client(tracking_uri: str):
    """One client per tracking URI and process: opening a SQLite store checks its schema, which takes a while."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


class MlflowLogger(RunLogger):
    def __init__(self, tracking_uri: str | None, experiment_name: str, results_dir: str | Path) -> None:
        self.uri = tracking_uri or default_tracking_uri(results_dir)
        self.artifact_root = artifact_root(self.uri)
        self.experiment_name = experiment_name
        self.client = _client(self.uri)
        self.run_id = ""
        self.last_epoch: dict[str, float] = {}

    def start(self, info: RunInfo) -> bool:
        from mlflow.entities import Param, RunTag

        experiment_id = self._experiment_id()
        found = self.client.search_runs([experiment_id], f"tags.{RUN_KEY_TAG} = '{info.key}'", max_results=1)
        tags = [RunTag(name, value) for name, value in {RUN_KEY_TAG: info.key, **info.tags}.items()]
        if found:
            run = found[0]
            if run.info.status == FINISHED:
                return False
            self.run_id = run.info.run_id
            self.client.update_run(self.run_id, status=RUNNING)
            self.client.log_batch(self.run_id, tags=tags)
            self.last_epoch = self._last_epochs(run)
            return True
        self.run_id = self.client.create_run(experiment_id, run_name=info.name).info.run_id
        params = [Param(name, _param_text(value)) for name, value in info.params.items()]
        for i in range(0, len(params), PARAM_BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + PARAM_BATCH], tags=tags if i == 0 else ())
        self.last_epoch = {}
        return True

    def log_epochs(self, rows: list[dict[str, float]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(name, value, now, int(row["epoch"]))
            for row in rows
            for name, value in row.items()
            if name != "epoch" and row["epoch"] > self.last_epoch.get(name, 0)
        ]
        self._log_metrics(metrics)
        for metric in metrics:
            self.last_epoch[metric.key] = max(self.last_epoch.get(metric.key, 0), metric.step)

    def finish(self, metrics: dict[str, float], artifacts: list[Path], run_path: Path) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._log_metrics([Metric(name, value, now, 0) for name, value in metrics.items()])
        for path in artifacts:
            folder = path.parent.relative_to(run_path)
            self.client.log_artifact(self.run_id, str(path), None if str(folder) == "." else str(folder))
        self.client.set_terminated(self.run_id, FINISHED)

    def fail(self) -> None:
        self.client.set_terminated(self.run_id, FAILED)

    def _log_metrics(self, metrics: list) -> None:
        for i in range(0, len(metrics), METRIC_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + METRIC_BATCH])

    def _last_epochs(self, run: Any) -> dict[str, float]:
        """The last step each metric of an unfinished tracking run reached (its epoch series end there)."""
        return {
            name: max((m.step for m in self.client.get_metric_history(run.info.run_id, name)), default=0)
            for name in run.data.metrics
        }

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            return experiment.experiment_id
        location = self.artifact_root.as_uri() if self.artifact_root is not None else None
        try:
            return self.client.create_experiment(self.experiment_name, location, tags=EXPERIMENT_TAGS)
        except MlflowException:  # another job created it meanwhile
            return self.client.get_experiment_by_name(self.experiment_name).experiment_id


def _param_text(value: Any) -> str:
    return str(value)[:PARAM_LENGTH]
