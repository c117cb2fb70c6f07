"""The logger group, live tracking from the loop, export of a store, and the per-epoch table.

Each logger's files are read back with the tracker's own reader (MLflow's client, TensorBoard's event
accumulator), so the values compared are what a researcher would see in its UI. The MLflow server,
its web UI and a sweep are tested end to end in test_mlflow_server.py.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from rarespur.__main__ import main
from rarespur.config.resolve import resolve
from rarespur.store.run_dir import HISTORY, config_key, flatten
from rarespur.tracking.loggers import MissingExtra
from rarespur.tracking.run_logger import FAILED, FINISHED, RUNNING, STATUS_FILE, record_metrics

from conftest import compose_config, job, killed_after_epoch

BASE = ("device=cpu", "progress=false", "epochs=4", "checkpoint_every=2")  # the digits dataset: no files needed


@pytest.fixture(autouse=True)
def _default_mlflow_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # logger=mlflow then writes RESULTS_DIR/mlflow.db


def test_the_logger_group_is_off_by_default_and_no_choice_changes_a_run_key():
    assert "logger" not in compose_config()
    key = config_key(resolve(compose_config()))
    for choice in ("logger=csv", "logger=tensorboard", "logger=mlflow", "logger=many", "logger=[csv,mlflow]"):
        assert config_key(resolve(compose_config(choice))) == key, choice
    assert set(compose_config("logger=many").logger) == {"csv", "tensorboard", "mlflow"}
    assert set(compose_config("logger=[csv,mlflow]").logger) == {"csv", "mlflow"}


def test_a_missing_logger_package_fails_before_the_run_directory_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed: import mlflow raises ImportError
    with pytest.raises(MissingExtra, match=r'logger=mlflow needs the mlflow package.*pip install -e "\.\[mlflow\]"'):
        job(tmp_path, *BASE, "logger=mlflow")
    assert not [p for p in tmp_path.iterdir() if (p / "config.json").exists()]


# -- each logger read back as its UI reads it: {metric: [(epoch, value), ...]} and the tracking run's status


def _csv_view(store: Path, key: str) -> tuple[dict, str, dict]:
    folder = store / "csv_logs" / key
    series: dict[str, list] = {}
    with open(folder / "metrics.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            series.setdefault(row["metric"], []).append((int(row["epoch"]), float(row["value"])))
    final = json.loads((folder / "final.json").read_text())["metrics"] if (folder / "final.json").exists() else {}
    return series, (folder / STATUS_FILE).read_text(), final


def _tensorboard_view(store: Path, key: str, logdir: str = "tensorboard") -> tuple[dict, str, dict]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = store / logdir / key
    events = EventAccumulator(str(folder))
    events.Reload()
    series = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    final = {tag[len("final/") :]: values[-1][1] for tag, values in series.items() if tag.startswith("final/")}
    epochs = {tag: values for tag, values in series.items() if not tag.startswith("final/")}
    return epochs, (folder / STATUS_FILE).read_text(), final


def _hparams(store: Path, key: str) -> dict:
    """The HParams session TensorBoard's HParams dashboard shows for the run: its config values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(store / "tensorboard" / key))
    events.Reload()
    (content,) = [c for tag, c in events.PluginTagToContent("hparams").items() if tag.endswith("session_start_info")]
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    return {
        name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
        for name, value in data.session_start_info.hparams.items()
    }


def _mlflow_runs(uri: str, experiment: str = "rarespur") -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id], max_results=1000)


def _mlflow_view(store: Path, key: str) -> tuple[dict, str, dict]:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{store / 'mlflow.db'}"
    (run,) = [r for r in _mlflow_runs(uri) if r.data.tags["run_key"] == key]
    client = MlflowClient(uri)
    series = {
        name: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
        for name in run.data.metrics
    }
    epochs = {name: values for name, values in series.items() if values[-1][0] > 0}
    final = {name: values[0][1] for name, values in series.items() if values[-1][0] == 0}
    return epochs, run.info.status, final


VIEWS = {"csv": _csv_view, "tensorboard": _tensorboard_view, "mlflow": _mlflow_view}


@pytest.mark.parametrize(
    "logger",
    ["csv", "tensorboard", pytest.param("mlflow", marks=pytest.mark.slow)],  # MLflow's SQLite store: ~5 s
)
def test_each_epoch_is_logged_once_across_a_kill_a_failure_and_a_relaunch(tmp_path, logger):
    overrides = (*BASE, f"logger={logger}")
    key = config_key(resolve(compose_config(f"results_dir={tmp_path}", *overrides)))
    view = VIEWS[logger]

    with killed_after_epoch(3), pytest.raises(KeyboardInterrupt):  # killed after epoch 3; its checkpoint is epoch 2
        job(tmp_path, *overrides)
    series, status, _ = view(tmp_path, key)
    assert status == RUNNING and [epoch for epoch, _ in series["loss"]] == [1, 2, 3]

    with killed_after_epoch(4, RuntimeError), pytest.raises(RuntimeError):  # resumes at 3, then fails at 4
        job(tmp_path, *overrides)
    series, status, _ = view(tmp_path, key)
    assert status == FAILED and [epoch for epoch, _ in series["loss"]] == [1, 2, 3, 4]

    record = job(tmp_path, *overrides)  # resumes from epoch 4's checkpoint: nothing left to train
    history = json.loads((tmp_path / key / HISTORY).read_text())
    series, status, final = view(tmp_path, key)
    assert status == FINISHED
    for name in ("loss", "acc", "lr"):
        assert series[name] == [(row["epoch"], pytest.approx(row[name], rel=1e-6)) for row in history]
    expected = record_metrics(record, flatten(json.loads((tmp_path / key / "config.json").read_text())))
    assert {"test_acc", "spurious_score", "train_loss"} <= set(final)
    assert final == {name: pytest.approx(value, rel=1e-6) for name, value in expected.items()}

    if logger == "tensorboard":  # one HParams session per run: the dashboard lines the grid's configs up
        session = _hparams(tmp_path, key)
        assert session["poison.count"] == 10 and session["model.name"] == record["model.name"]
        assert session["tag.experiment_type"] == "train" and session["tag.packed_with"] == "none"

    job(tmp_path, *overrides)  # done: stored, so nothing is logged again
    assert view(tmp_path, key) == (series, status, final)
    if logger == "mlflow":
        assert len(_mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")) == 1


@pytest.mark.slow  # DP-SGD's accountant: 6 s
def test_the_objectives_own_values_are_logged_each_epoch(tmp_path):
    record = job(tmp_path, *BASE, "logger=csv", "regularizer=dp_sgd")
    series, status, final = _csv_view(tmp_path, record["run_id"])
    history = json.loads((tmp_path / record["run_id"] / HISTORY).read_text())
    assert status == FINISHED and len(history) == 4
    assert series["dp_epsilon"] == [(row["epoch"], pytest.approx(row["dp_epsilon"])) for row in history]
    assert series["dp_epsilon"][-1][1] == pytest.approx(record["dp_epsilon"]) and "dp_epsilon" not in final


def test_a_logger_that_breaks_mid_run_is_warned_about_and_the_run_still_commits(tmp_path, monkeypatch, caplog):
    from rarespur.tracking.csv_logger import CsvLogger

    def broken(self, points):
        raise OSError("disk full")

    monkeypatch.setattr(CsvLogger, "log_points", broken)
    record = job(tmp_path, *BASE, "logger=[csv,tensorboard]")
    assert (tmp_path / record["run_id"] / "done").exists()
    assert "logger=csv could not log epochs for run" in caplog.text and "disk full" in caplog.text
    assert caplog.text.count("logger=csv could not") == 1  # warned once, then left out
    assert (tmp_path / "csv_logs" / record["run_id"] / STATUS_FILE).read_text() == RUNNING
    assert _tensorboard_view(tmp_path, record["run_id"])[1] == FINISHED  # the other logger goes on


@pytest.mark.slow  # four jobs and two trackers: ~6 s
def test_export_replays_a_store_without_loggers_as_the_live_loggers_saw_it_and_twice_adds_nothing(tmp_path, capsys):
    live, plain = tmp_path / "live", tmp_path / "plain"
    for count in (0, 10):
        job(live, *BASE, "logger=many", f"poison.count={count}")
        job(plain, *BASE, f"poison.count={count}")
    keys = sorted(p.name for p in plain.iterdir() if (p / "done").exists())
    assert keys == sorted(p.name for p in live.iterdir() if (p / "done").exists())  # loggers change no run key

    mlflow_uri = f"sqlite:///{tmp_path / 'exported.db'}"
    assert main(["export", "mlflow", str(plain), "--tracking-uri", mlflow_uri]) == 0
    assert main(["export", "tensorboard", str(plain), "--logdir", str(tmp_path / "tb")]) == 0
    assert "2 runs exported to tensorboard, 0 were there already" in capsys.readouterr().out
    for key in keys:  # the two stores trained the same configs: equal but for the wall time
        assert _same_values(_tensorboard_view(tmp_path, key, "tb"), _tensorboard_view(live, key), "wall_time_s")
    exported = {r.data.tags["run_key"]: r for r in _mlflow_runs(mlflow_uri)}
    logged = {r.data.tags["run_key"]: r for r in _mlflow_runs(f"sqlite:///{live / 'mlflow.db'}")}
    assert sorted(exported) == sorted(logged) == keys
    for key in keys:
        assert exported[key].data.params == logged[key].data.params
        assert exported[key].info.status == FINISHED
        assert _without(exported[key].data.metrics, "wall_time_s") == _without(logged[key].data.metrics, "wall_time_s")
        assert exported[key].data.tags["packed_with"] == "none"

    assert main(["export", "mlflow", str(plain), "--tracking-uri", mlflow_uri]) == 0
    assert main(["export", "tensorboard", str(plain), "--logdir", str(tmp_path / "tb")]) == 0
    out = capsys.readouterr().out
    assert "0 runs exported to mlflow, 2 were there already" in out
    assert "0 runs exported to tensorboard, 2 were there already" in out
    assert len(_mlflow_runs(mlflow_uri)) == 2


def _without(values: dict, name: str) -> dict:
    return {k: v for k, v in values.items() if k != name}


def _same_values(exported: tuple, live: tuple, differing: str) -> bool:
    """The same epochs, status and final metrics, but for `differing` (the wall time of two separate runs)."""
    return exported[:2] == live[:2] and _without(exported[2], differing) == _without(live[2], differing)


def test_collect_writes_one_row_per_run_and_epoch_ending_at_the_records_train_loss(tmp_path):
    records = [job(tmp_path, *BASE, f"poison.count={count}", f"epochs={epochs}") for count, epochs in ((0, 3), (10, 4))]
    assert main(["collect", str(tmp_path)]) == 0
    epochs = pd.read_parquet(tmp_path / "epochs.parquet")
    assert len(epochs) == 3 + 4
    assert sorted(epochs.groupby("run_id")["epoch"].apply(list).tolist()) == [[1, 2, 3], [1, 2, 3, 4]]
    for record in records:
        last = epochs[epochs.run_id == record["run_id"]].sort_values("epoch").iloc[-1]
        assert last["loss"] == record["train_loss"] and last["acc"] == record["train_acc"]
    runs = pd.read_parquet(tmp_path / "runs.parquet")
    assert set(epochs.run_id) == set(runs.run_id)  # joins with the runs table
