"""``logger=mlflow``: one MLflow run per store run, found again by its ``run_key`` tag.

A fresh SQLite file is created (its schema migrated) by the first client that opens it: jobs of a
local parallel sweep would all try at once, so opening the file and finding the experiment happen
under a file lock beside it. A tracking server answers for itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import time
from pathlib import Path
from typing import Any, Iterator

from rarespur.tracking.run_logger import FAILED, FINISHED, RUNNING, Point, RunInfo, RunLogger

RUN_KEY_TAG = "run_key"
SUPERSEDED_TAG = "superseded_run_key"  # an earlier computation of a run the store computed again
PARAM_BATCH, METRIC_BATCH = 100, 1000  # the most MLflow takes in one log_batch request
PARAM_LENGTH = 6000  # the longest param value MLflow stores
# MLflow 3's UI opens an experiment as GenAI traces unless told it holds trained models: then on its runs
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
# A tracking server that does not answer: MLflow's own default retries for about 4 minutes per call, every job
HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
SQLITE = "sqlite:///"


def tracking_uri(given: str | None, results_dir: str | Path) -> str:
    """The URI given, else $MLFLOW_TRACKING_URI (read here, so a URI with a password never enters a saved
    config), else a SQLite file in the run store: fine for local sweeps; SLURM sweeps export (docs/tracking.md)."""
    found = given or os.environ.get("MLFLOW_TRACKING_URI")
    return found or f"{SQLITE}{Path(results_dir).expanduser().resolve() / 'mlflow.db'}"


def artifact_root(uri: str) -> Path | None:
    """Where a new experiment keeps its artifacts: beside a SQLite file (MLflow's default would be the
    working directory of whichever job created the experiment); a tracking server keeps its own."""
    return Path(uri[len(SQLITE) :]).resolve().parent / "mlartifacts" if uri.startswith(SQLITE) else None


@contextlib.contextmanager
def _opening(uri: str) -> Iterator[None]:
    """Hold the lock of a SQLite tracking file (nothing for a server) while the database is set up."""
    if not uri.startswith(SQLITE):
        yield
        return
    lock = Path(uri[len(SQLITE) :]).resolve().with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@functools.lru_cache(maxsize=4)
def _client_and_experiment(uri: str, experiment_name: str) -> tuple[Any, str]:
    """One client per tracking URI and process (opening a SQLite store checks its schema), and the experiment."""
    for name, value in HTTP_SETTINGS.items():
        os.environ.setdefault(name, value)
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with _opening(uri):
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is not None:
            return client, experiment.experiment_id
        root = artifact_root(uri)
        try:
            return client, client.create_experiment(experiment_name, root and root.as_uri(), tags=EXPERIMENT_TAGS)
        except MlflowException:  # a job on another machine created it meanwhile
            return client, client.get_experiment_by_name(experiment_name).experiment_id


class MlflowLogger(RunLogger):
    def __init__(self, uri: str | None, experiment_name: str, results_dir: str | Path) -> None:
        self.uri = tracking_uri(uri, results_dir)
        self.experiment_name = experiment_name
        self.client: Any = None
        self.run: Any = None

    def start(self, info: RunInfo, recomputed: bool) -> bool:
        from mlflow.entities import Param, RunTag

        self.client, experiment_id = _client_and_experiment(self.uri, self.experiment_name)
        found = self.client.search_runs(
            [experiment_id],
            f"tags.{RUN_KEY_TAG} = '{info.key}'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        tags = [RunTag(name, value) for name, value in {RUN_KEY_TAG: info.key, **info.tags}.items()]
        if found and found[0].info.status == FINISHED:
            if not recomputed:
                return False
            self.client.delete_tag(found[0].info.run_id, RUN_KEY_TAG)
            self.client.set_tag(found[0].info.run_id, SUPERSEDED_TAG, info.key)
            found = []
        if found:
            self.run = found[0]
            self.client.update_run(self.run.info.run_id, status=RUNNING)
            self.client.log_batch(self.run.info.run_id, tags=tags)
            return True
        self.run = self.client.create_run(experiment_id, run_name=info.name)
        params = [Param(name, str(value)[:PARAM_LENGTH]) for name, value in info.params.items()]
        for i in range(0, len(params), PARAM_BATCH):
            self.client.log_batch(self.run.info.run_id, params=params[i : i + PARAM_BATCH], tags=tags if i == 0 else ())
        return True

    def logged(self) -> set[tuple[str, int]]:
        run_id = self.run.info.run_id
        return {
            (name, point.step)
            for name in self.run.data.metrics
            for point in self.client.get_metric_history(run_id, name)
        }

    def log_points(self, points: list[Point]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._log_metrics([Metric(name, value, now, epoch) for epoch, name, value in points])

    def finish(self, metrics: dict[str, float], artifacts: list[Path], run_path: Path) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._log_metrics([Metric(name, value, now, 0) for name, value in metrics.items()])
        for path in artifacts:
            folder = path.parent.relative_to(run_path)
            self.client.log_artifact(self.run.info.run_id, str(path), None if str(folder) == "." else str(folder))
        self.client.set_terminated(self.run.info.run_id, FINISHED)

    def fail(self) -> None:
        self.client.set_terminated(self.run.info.run_id, FAILED)

    def _log_metrics(self, metrics: list) -> None:
        for i in range(0, len(metrics), METRIC_BATCH):
            self.client.log_batch(self.run.info.run_id, metrics=metrics[i : i + METRIC_BATCH])
