"""Tracking where things go wrong: a fresh SQLite file opened by parallel jobs, a tracking server that does not
answer, a logger package missing in a packed sweep, a run with helper models killed and resumed, a run the
store computes again after its directory was deleted. The digits dataset: no files needed."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest

from rarespur.__main__ import main
from rarespur.store.run_dir import DONE, ERROR

from conftest import REPO_ROOT, job, killed_after_epoch, multirun

pytestmark = pytest.mark.slow  # subprocesses, several trainings each

BASE = ("device=cpu", "progress=false", "epochs=3")


@pytest.fixture(autouse=True)
def _default_mlflow_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_parallel_jobs_open_a_fresh_sqlite_tracking_file_once(tmp_path):
    opener = (
        "import sys; from rarespur.tracking.mlflow_logger import _client_and_experiment; "
        "print(_client_and_experiment(sys.argv[1], 'rarespur')[1])"
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [
        subprocess.Popen([sys.executable, "-c", opener, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    answers = [proc.communicate(timeout=180) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, [err[-2000:] for _, err in answers]
    assert len({out.strip() for out, _ in answers}) == 1  # one experiment, the same id for every job


def test_a_tracking_server_that_does_not_answer_costs_a_warning_not_the_run(tmp_path, caplog):
    started = time.monotonic()
    record = job(tmp_path, *BASE, "logger=mlflow", "logger.mlflow.tracking_uri=http://127.0.0.1:9")
    assert (tmp_path / record["run_id"] / DONE).exists() and not (tmp_path / record["run_id"] / ERROR).exists()
    assert "logger=mlflow could not start run" in caplog.text and "export mlflow" in caplog.text
    assert time.monotonic() - started < 60  # MLflow's own retries would take about 4 minutes


def test_a_missing_logger_package_fails_a_packed_sweep_before_any_run_directory(tmp_path):
    blocked = tmp_path / "blocked"
    (blocked / "mlflow").mkdir(parents=True)
    (blocked / "mlflow" / "__init__.py").write_text("raise ImportError('mlflow is not installed here')\n")
    store = tmp_path / "store"
    env = {**__import__("os").environ, "PYTHONPATH": f"{blocked}:{REPO_ROOT}"}
    done = multirun(store, tmp_path / "sweep", *BASE, "poison.count=0,3", "pack.size=2", "logger=mlflow", env=env)
    assert done.returncode != 0
    assert 'pip install -e ".[mlflow]"' in done.stdout + done.stderr
    assert not [p for p in store.glob("*/config.json")], "a run directory was made"


def test_helper_models_are_logged_once_across_a_kill_and_exported_the_same(tmp_path):
    overrides = (*BASE, "experiment=mem_inference", "logger=[csv,tensorboard]")
    with killed_after_epoch(2), pytest.raises(KeyboardInterrupt):  # the target model, mid-training
        job(tmp_path, *overrides)
    record = job(tmp_path, *overrides)
    key = record["run_id"]

    from test_tracking import _tensorboard_view

    live, _, _ = _tensorboard_view(tmp_path, key)
    for model in ("target", "shadow", "lira0", "lira3"):
        assert [step for step, _ in live[f"{model}/loss"]] == [1, 2, 3], model
    with open(tmp_path / "csv_logs" / key / "metrics.csv", newline="") as handle:
        rows = [(r["metric"], r["epoch"]) for r in csv.DictReader(handle)]
    assert len(rows) == len(set(rows)) and ("target/loss", "3") in rows

    assert main(["export", "tensorboard", str(tmp_path), "--logdir", str(tmp_path / "tb")]) == 0
    exported, _, _ = _tensorboard_view(tmp_path, key, "tb")
    assert exported == live  # the helper models' stored histories replay as they were logged

    assert main(["collect", str(tmp_path)]) == 0
    epochs = pd.read_parquet(tmp_path / "epochs.parquet")
    assert sorted(epochs.groupby("model")["epoch"].apply(list).items()) == [
        (model, [1, 2, 3]) for model in ("lira0", "lira1", "lira2", "lira3", "shadow", "target")
    ]
    history = json.loads((tmp_path / key / "history_target.json").read_text())
    assert epochs[epochs.model == "target"]["loss"].tolist() == [row["loss"] for row in history]


def test_a_run_computed_again_replaces_its_finished_tracking_run(tmp_path):
    from mlflow.tracking import MlflowClient

    first = job(tmp_path, *BASE, "logger=mlflow")
    shutil.rmtree(tmp_path / first["run_id"])  # as `rm -r` of a run whose data changed
    again = job(tmp_path, *BASE, "logger=mlflow")
    assert again["run_id"] == first["run_id"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("rarespur").experiment_id])
    current = [r for r in runs if r.data.tags.get("run_key") == again["run_id"]]
    earlier = [r for r in runs if r.data.tags.get("superseded_run_key") == again["run_id"]]
    assert len(current) == 1 and len(earlier) == 1
    assert current[0].data.metrics["wall_time_s"] == pytest.approx(again["wall_time_s"])
