"""A real MLflow tracking server on 127.0.0.1 (SQLite backend in a temporary folder), a real sweep logging to
it, a relaunch, an export of a store written without a logger, and the server's web UI in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from rarespur.config.resolve import identity
from rarespur.store.run_dir import CONFIG, DONE, HISTORY, RECORD, flatten
from rarespur.tracking.run_logger import FINISHED, record_metrics

from conftest import multirun, rarespur_cli

pytestmark = pytest.mark.slow  # a server, two sweeps and a browser: about a minute

SWEEP = ("pattern=s3,r3", "poison.count=0,10", "epochs=3", "device=cpu", "progress=false", "pack.size=2")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{folder / 'tracking.db'}",
        "--artifacts-destination",
        str(folder / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"the MLflow server did not start:\n{(folder / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def live(server, tmp_path_factory) -> Path:
    """A sweep of 4 jobs (packed in twos) that logs to the server; its store."""
    store, sweep_dir = tmp_path_factory.mktemp("live"), tmp_path_factory.mktemp("live_sweep")
    done = multirun(store, sweep_dir, *SWEEP, "logger=mlflow", f"logger.mlflow.tracking_uri={server}")
    assert done.returncode == 0, done.stderr[-3000:]
    return store


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _runs(uri: str, experiment: str = "rarespur") -> dict:
    found = _client(uri).get_experiment_by_name(experiment)
    return {r.data.tags["run_key"]: r for r in _client(uri).search_runs([found.experiment_id], max_results=1000)}


def _finished(store: Path) -> list[Path]:
    return sorted(p for p in store.iterdir() if (p / DONE).exists())


def _curve(uri: str, run, name: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in _client(uri).get_metric_history(run.info.run_id, name))


def test_a_sweep_logs_one_mlflow_run_per_job_equal_to_its_record_and_a_relaunch_adds_none(server, live, tmp_path):
    runs = _runs(server)
    finished = _finished(live)
    assert len(finished) == 4 and sorted(runs) == sorted(p.name for p in finished)
    for path in finished:
        run, record = runs[path.name], json.loads((path / RECORD).read_text())
        params = flatten(identity(json.loads((path / CONFIG).read_text())))
        assert run.info.status == FINISHED
        assert run.data.params == {name: str(value) for name, value in params.items()}
        assert run.data.tags["packed_with"] == record.get("packed_with.pack", "none")
        assert run.data.tags["experiment_type"] == "train" and run.data.tags["pattern"] == record["pattern.name"]
        history = json.loads((path / HISTORY).read_text())
        for name in ("loss", "acc", "lr"):
            assert _curve(server, run, name) == [(row["epoch"], pytest.approx(row[name])) for row in history]
        final = {name: value for name, value in run.data.metrics.items() if name not in ("loss", "acc", "lr")}
        assert final == pytest.approx(record_metrics(record, params))
        artifacts = {a.path for a in _client(server).list_artifacts(run.info.run_id)}
        assert {"record.json", "config.json", "history.json"} <= artifacts
    assert any(r.data.tags["packed_with"] != "none" for r in runs.values())  # packed models: a run each

    again = multirun(live, tmp_path / "sweep", *SWEEP, "logger=mlflow", f"logger.mlflow.tracking_uri={server}")
    assert again.returncode == 0, again.stderr[-3000:]
    after = _runs(server)
    assert sorted(after) == sorted(runs)
    for key, run in after.items():
        assert run.info.run_id == runs[key].info.run_id and len(_curve(server, run, "loss")) == 3


def test_exporting_a_store_written_without_a_logger_gives_the_same_runs_and_values(server, live, tmp_path):
    plain = tmp_path / "plain"
    done = multirun(plain, tmp_path / "sweep", *SWEEP)
    assert done.returncode == 0, done.stderr[-3000:]
    args = ("export", "mlflow", str(plain), "--tracking-uri", server, "--experiment-name", "exported")
    first = rarespur_cli(*args)
    assert first.returncode == 0 and "4 runs exported to mlflow, 0 were there already" in first.stdout, first.stderr
    exported, logged = _runs(server, "exported"), _runs(server)
    assert sorted(exported) == sorted(logged)
    for key, run in exported.items():
        assert run.info.status == FINISHED
        assert run.data.params == logged[key].data.params
        assert run.data.tags["packed_with"] == logged[key].data.tags["packed_with"]
        for name in ("loss", "acc", "lr"):
            assert _curve(server, run, name) == _curve(server, logged[key], name)
        timing = ("wall_time_s",)  # two sweeps, two wall times; everything else is the same computation
        same = {k: v for k, v in run.data.metrics.items() if k not in timing}
        assert same == {k: v for k, v in logged[key].data.metrics.items() if k not in timing}
    second = rarespur_cli(*args)
    assert "0 runs exported to mlflow, 4 were there already" in second.stdout, second.stderr
    assert len(_runs(server, "exported")) == 4


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "headless Chromium not found: apt-get install chromium (.ci/run installs it)"
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail(message + " (required on CI)", pytrace=False)
        pytest.skip(message)
    return found


def _browse(chromium: str, url: str, *action: str) -> subprocess.CompletedProcess:
    """Load `url` in headless Chromium, let the page's scripts run, then dump its DOM or take a screenshot."""
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1600,1000",
        "--virtual-time-budget=20000",
        *action,
        url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_the_mlflow_ui_lists_the_sweeps_runs_and_compares_them(server, live, tmp_path):
    chromium = _chromium()
    runs = _runs(server)
    experiment = _client(server).get_experiment_by_name("rarespur").experiment_id
    page = _browse(chromium, f"{server}/#/experiments/{experiment}/runs", "--dump-dom")
    assert page.returncode == 0, page.stderr[-2000:]
    for key, run in runs.items():
        assert run.info.run_name in page.stdout, f"run {key} ({run.info.run_name}) is not on the runs page"
    ids = urllib.parse.quote(json.dumps([run.info.run_id for run in runs.values()]))
    compare = f"{server}/#/compare-runs?runs={ids}&experiments={urllib.parse.quote(json.dumps([experiment]))}"
    shots = Path(os.environ.get("RARESPUR_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    shot = _browse(chromium, compare, f"--screenshot={shots / 'mlflow_compare.png'}")
    assert shot.returncode == 0 and (shots / "mlflow_compare.png").stat().st_size > 10_000, shot.stderr[-2000:]
    view = _browse(chromium, compare, "--dump-dom")
    assert all(run.info.run_name in view.stdout for run in runs.values())
    assert "poison.count" in view.stdout and "spurious_score" in view.stdout  # params and metrics side by side
