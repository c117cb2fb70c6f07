"""notify=apprise: one message when a sweep ends, with the status counts and the first failures, sent to a URL
read from the environment and kept out of every file, log and run key. The endpoint is a local HTTP server
that apprise's json:// posts to; the slow tests run real sweeps, one of them with failing jobs."""

from __future__ import annotations

import http.server
import json
import logging
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest
from omegaconf import OmegaConf

from rarespur.config.resolve import resolve
from rarespur.errors import ConfigError
from rarespur.launch.notify import DEFAULT_URL_ENV, EXTRA, NotifyWhenSweepEnds, message
from rarespur.launch.status import DONE_STATE, FAILED, MISSING, STALE, Entry, table
from rarespur.store.run_dir import ERROR, config_key

from conftest import compose_config, multirun, rarespur_cli

SECRET = "s3cretpass"
TINY = ("epochs=1", "device=cpu", "data.train_limit=300", "data.test_limit=100", "notify=apprise")


class Endpoint:
    """A local HTTP server that keeps the JSON body of every POST (what apprise's json:// sends)."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:  # quiet: the test reads what arrived instead
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"json://user:{SECRET}@127.0.0.1:{self.server.server_address[1]}/sweeps"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    served = Endpoint()
    yield served
    served.server.shutdown()
    served.server.server_close()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def entry(root: Path, key: str, state: str, **values: object) -> Entry:
    path = root / key
    if state == FAILED:
        path.mkdir(parents=True)
        (path / ERROR).write_text(
            'Traceback (most recent call last):\n  File "train.py", line 1\n'
            f"rarespur.errors.TrainingDiverged: training diverged in {key}\n\n"
        )
    return Entry(path, state, {"poison": {"count": values.get("count", 10)}, "train": {"lr": values.get("lr", 0.01)}})


def test_message_has_status_counts_and_first_failures(tmp_path):
    entries = [
        entry(tmp_path, "aaaa", DONE_STATE, lr=0.01),
        entry(tmp_path, "bbbb", DONE_STATE, lr=0.02),
        entry(tmp_path, "cccc", FAILED, lr=1e6),
        entry(tmp_path, "dddd", FAILED, lr=1e7),
        entry(tmp_path, "eeee", STALE, lr=0.03),
        entry(tmp_path, "ffff", MISSING, count=1000),
        entry(tmp_path, "gggg", MISSING, count=2000),
    ]
    refused = {tmp_path / "ffff": "error: poison.count=1000 is larger than class 0"}
    title, body, all_done = message(entries, refused, 1, "multirun/today")
    assert title == "rarespur sweep ended: 2 done, 2 failed, 1 stale, 2 missing (7 jobs)" and not all_done
    lines = body.splitlines()
    assert lines[0].startswith(f"7 jobs of the sweep in {tmp_path}, launched on ")
    assert table(entries) in body and "logs: multirun/today" in body  # status's own table
    failed = lines.index("failed (2):")
    assert lines[failed + 1 : failed + 4] == [
        "  cccc  poison.count=10 train.lr=1000000.0",  # the run key and what differs between the jobs
        "    | rarespur.errors.TrainingDiverged: training diverged in cccc",  # the error, not "Traceback"
        "  ... and 1 more",  # limit=1
    ]
    assert "dddd" not in body and "gggg" not in body  # missing without a failure here: only counted
    assert "  ffff  poison.count=1000 train.lr=0.01\n    | error: poison.count=1000 is larger than class 0" in body

    title, body, all_done = message(entries[:2], {}, 5, "multirun/today")
    assert title == "rarespur sweep ended: 2 done (2 jobs)" and all_done and "failed (" not in body


def test_selecting_notify_changes_no_run_key_and_saves_no_url(monkeypatch):
    monkeypatch.setenv(DEFAULT_URL_ENV, f"mailto://me:{SECRET}@example.org")
    for overrides in [(), ("pattern=s3", "poison.count=3", "optim=adam")]:
        plain, notified = compose_config(*overrides), compose_config(*overrides, "notify=apprise")
        assert plain == notified  # the job's config: nothing of notify outside hydra
        assert config_key(resolve(plain)) == config_key(resolve(notified))
    hydra = compose_config("notify=apprise", return_hydra_config=True).hydra
    callback = OmegaConf.to_container(hydra.callbacks.notify)
    assert callback == {
        "_target_": "rarespur.launch.notify.NotifyWhenSweepEnds",
        "url_env": DEFAULT_URL_ENV,
        "failures": 5,
    }
    assert SECRET not in str(OmegaConf.to_container(hydra.callbacks, resolve=True))
    assert not compose_config(return_hydra_config=True).hydra.callbacks


def test_a_notify_key_in_the_job_config_is_refused_without_repeating_it():
    with pytest.raises(ConfigError) as refused:
        resolve(compose_config("notify=apprise", f"+notify.url=mailto://me:{SECRET}@example.org"))
    assert SECRET not in str(refused.value) and "RARESPUR_NOTIFY_URL" in str(refused.value)


def sweep_config(**launcher: object):
    return OmegaConf.create({"hydra": {"launcher": launcher, "sweep": {"dir": "multirun/today"}}})


def test_without_url_one_warning_and_no_error(monkeypatch, caplog):
    monkeypatch.delenv(DEFAULT_URL_ENV, raising=False)
    with caplog.at_level(logging.INFO):
        NotifyWhenSweepEnds().on_multirun_end(sweep_config())
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert f"${DEFAULT_URL_ENV} is not set" in record.message and f"export {DEFAULT_URL_ENV}=" in record.message


def test_without_apprise_names_the_extra(monkeypatch, caplog):
    monkeypatch.setenv(DEFAULT_URL_ENV, f"json://user:{SECRET}@127.0.0.1:9/")
    monkeypatch.setitem(sys.modules, "apprise", None)  # import apprise raises ImportError
    NotifyWhenSweepEnds().on_multirun_end(sweep_config())
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and EXTRA in record.message and SECRET not in caplog.text


def test_detached_slurm_sweep_sends_nothing(monkeypatch, caplog, endpoint):
    """wait=false returns right after submitting: the sweep has not ended, SLURM's mail is the way."""
    monkeypatch.setenv(DEFAULT_URL_ENV, endpoint.url)
    with caplog.at_level(logging.INFO):
        NotifyWhenSweepEnds().on_multirun_end(sweep_config(wait=False))
    assert "docs/cluster.md" in caplog.text and endpoint.received == []


@pytest.mark.parametrize("scheme", ["json", "nosuchscheme"])
def test_failed_delivery_warns_without_the_url(monkeypatch, caplog, capfd, scheme):
    """Nothing listens on the port, or apprise does not know the scheme: a warning that names the variable,
    never the URL or its password, at any log level."""
    monkeypatch.setenv(DEFAULT_URL_ENV, f"{scheme}://user:{SECRET}@127.0.0.1:{closed_port()}/sweeps")
    monkeypatch.setattr(NotifyWhenSweepEnds, "summary", lambda self, config: ("title", "body", True))
    with caplog.at_level(logging.DEBUG):
        NotifyWhenSweepEnds().on_multirun_end(sweep_config())
    warnings = [r.message for r in caplog.records if r.name == "rarespur.launch.notify"]
    assert len(warnings) == 1 and f"the URL in ${DEFAULT_URL_ENV}" in warnings[0]
    out, err = capfd.readouterr()
    assert SECRET not in caplog.text + out + err


def test_slurm_mail_options_of_the_docs_compose_in_a_sweep():
    """docs/cluster.md's mail for detached sweeps: the + adds the keys, the escaped comma stays in the value
    instead of asking for a sweep (test_cluster_presets checks that additional_parameters reach #SBATCH)."""
    from rarespur.launch.sweep import Sweep

    mail = [
        "+hydra.launcher.additional_parameters.mail-type=END\\,FAIL",
        "+hydra.launcher.additional_parameters.mail-user=me@lab.org",
    ]
    sweep = Sweep(None, ["+cluster=slurm_gpu", "hydra.launcher.wait=false", "pattern=s1,s3", *mail])
    assert len(sweep) == 2
    job = sweep.loader.load_sweep_config(sweep.master, list(sweep.job_overrides[0]))
    assert job.hydra.launcher.additional_parameters == {"mail-type": "END,FAIL", "mail-user": "me@lab.org"}


def secret_files(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


@pytest.mark.slow
def test_failed_sweep_sends_one_message_and_writes_no_secret(tmp_path, endpoint):
    """Hydra skips on_multirun_end when a job fails; the sweeper calls it. Of 4 jobs one trains, one diverges
    (error.txt) and two are refused before their run directory exists (poison.count above the class)."""
    store, sweep_dir = tmp_path / "store", tmp_path / "multirun"
    grid = ("poison.count=10,1000", "train.lr=0.01,1e6", *TINY)
    done = multirun(store, sweep_dir, *grid, env={**os.environ, DEFAULT_URL_ENV: endpoint.url})
    assert done.returncode != 0 and "error: training diverged" in done.stderr
    (sent,) = endpoint.received
    assert sent["title"] == "rarespur sweep ended: 1 done, 1 failed, 2 missing (4 jobs)" and sent["type"] == "failure"
    body = sent["message"]
    (error,) = store.glob(f"*/{ERROR}")
    assert f"failed (1):\n  {error.parent.name}  poison.count=10 train.lr=1000000.0\n" in body
    assert "| rarespur.errors.TrainingDiverged: training diverged" in body
    assert body.count("| error: poison.count=1000 is larger than class 0") == 2
    status = rarespur_cli("status", str(store), *grid[:-1])  # python -m rarespur status, as the docs say
    assert status.returncode == 0, status.stderr
    assert "\n".join(status.stdout.splitlines()[1:3]) in body  # its table, verbatim
    assert secret_files(store, sweep_dir) == [] and (sweep_dir / "multirun.yaml").is_file()
    assert SECRET not in done.stdout + done.stderr


@pytest.mark.slow
def test_sweep_that_succeeds_sends_one_message(tmp_path, endpoint):
    store, sweep_dir = tmp_path / "store", tmp_path / "multirun"
    done = multirun(store, sweep_dir, "train.lr=0.01,0.02", *TINY, env={**os.environ, DEFAULT_URL_ENV: endpoint.url})
    assert done.returncode == 0, done.stderr
    (sent,) = endpoint.received
    assert sent["title"] == "rarespur sweep ended: 2 done (2 jobs)" and sent["type"] == "success"
    assert "notify: sent 'rarespur sweep ended: 2 done (2 jobs)'" in done.stdout + done.stderr
    assert secret_files(store, sweep_dir) == [] and SECRET not in done.stdout + done.stderr
