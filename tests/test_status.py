"""``python -m rarespur status``: states from the run store's files, the failure listing, and deletion."""

from __future__ import annotations

import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from rarespur.launch.runner import run_job
from rarespur.launch.status import FAILED, MISSING, RUNNING_STATE, STALE, delete_incomplete, report, run_state, survey
from rarespur.launch.sweep import expand
from rarespur.store.run_dir import CONFIG, DONE, ERROR, RECORD, RUNNING, RunDir

from conftest import rarespur_cli

TINY = ["epochs=1", "data.train_limit=300"]
LAUNCHED = ["pattern=s1,s3", "poison.count=0,10", *TINY]  # what ran
SWEEP = ["pattern=s1,s3", "poison.count=0,10,20,30", *TINY]  # what status is asked about: 8 jobs
EXPECTED = {"done": 4, "running": 1, "failed": 1, "stale": 1, "missing": 1}


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def set_owner(run: RunDir, **owner) -> None:
    (run.path / RUNNING).write_text(
        json.dumps({"host": platform.node(), "pid": os.getpid(), "started": time.time(), **owner})
    )


def age(path: Path, seconds: float) -> None:
    """Make the directory and everything in it look untouched for `seconds`."""
    then = time.time() - seconds
    for p in [path, *path.iterdir()]:
        os.utime(p, (then, then))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A partly finished store: 4 of the sweep's 8 jobs finished (run in this process, as `run.py -m` would run
    them); then, as the runner would leave them, s1/n=20 failed, s3/n=20 was killed (stale), s1/n=30 runs (in
    this very process) and s3/n=30 never started (missing)."""
    store = tmp_path_factory.mktemp("status") / "store"
    for launched in expand(None, LAUNCHED, store):
        run_job({**launched.config, "results_dir": str(store), "device": "cpu"})
    jobs = {(j.config["pattern"]["name"], j.config["poison"]["count"]): j for j in expand(None, SWEEP, store)}
    failed, stale, running = jobs["s1", 20], jobs["s3", 20], jobs["s1", 30]
    failed.run.start(failed.config)
    failed.run.fail('Traceback (most recent call last):\n  File "train.py", line 1\nValueError: boom at epoch 3\n')
    stale.run.start(stale.config)
    set_owner(stale.run, pid=dead_pid(), started=time.time() - 600)
    running.run.start(running.config)
    return store


def labeled(store: Path) -> dict[tuple[str, int], str]:
    """(pattern, n) -> state, for the sweep's jobs."""
    jobs = expand(None, SWEEP, store)
    return {(e.config["pattern"]["name"], e.config["poison"]["count"]): e.state for e in survey(store, jobs)}


def test_counts_per_state(store):
    states = labeled(store)
    assert Counter(states.values()) == EXPECTED
    assert (states["s1", 20], states["s3", 20], states["s1", 30], states["s3", 30]) == (
        FAILED,
        STALE,
        RUNNING_STATE,
        MISSING,
    )


def test_without_a_sweep_every_run_directory_counts(store):
    entries = survey(store)
    assert Counter(e.state for e in entries) == {"done": 4, "running": 1, "failed": 1, "stale": 1}


def test_report_prints_the_table_and_the_failures(store):
    out = io.StringIO()
    report(store, expand(None, SWEEP, store), out=out)
    text = out.getvalue()
    header, row = text.splitlines()[1:3]
    assert header.split() == ["total", "done", "running", "failed", "stale", "missing"]
    assert row.split() == ["all", "8", "4", "1", "1", "1", "1"]
    failures = text[text.index("failed (1):") :]
    assert "pattern=s1 poison.count=20" in failures and "| ValueError: boom at epoch 3" in failures
    assert "stale (1):" in text and "pattern=s3 poison.count=20" in text


def test_report_counts_by_config_keys(store):
    out = io.StringIO()
    report(store, expand(None, SWEEP, store), by=["pattern.name"], out=out)
    rows = {line.split()[0]: line.split()[1:] for line in out.getvalue().splitlines()[2:5]}
    assert rows == {
        "s1": ["4", "2", "1", "1", "0", "0"],
        "s3": ["4", "2", "0", "0", "1", "1"],
        "total": ["8", "4", "1", "1", "1", "1"],
    }


@pytest.mark.slow  # two CLI launches
def test_cli_deletes_exactly_the_incomplete_runs(store, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    before = {p.name for p in copy.iterdir() if p.is_dir()}
    out = rarespur_cli("status", str(copy), *SWEEP, "--delete-incomplete")
    assert out.returncode == 0, out.stderr
    assert re.search(r"all\s+8\s+4\s+1\s+1\s+1\s+1", out.stdout) and "ValueError: boom" in out.stdout
    after = {p.name for p in copy.iterdir() if p.is_dir()}
    states = labeled(store)  # the untouched original says which directory was which
    gone = {
        RunDir(copy, j.config).key
        for j in expand(None, SWEEP, copy)
        if states[j.config["pattern"]["name"], j.config["poison"]["count"]] in (FAILED, STALE)
    }
    assert before - after == gone and len(gone) == 2
    assert "deleted 2 incomplete run directories" in out.stdout
    # options before the overrides work too
    again = rarespur_cli("status", str(copy), "--by", "pattern.name", *SWEEP)
    rows = {line.split()[0]: line.split()[1:] for line in again.stdout.splitlines()[2:5]}
    assert rows == {
        "s1": ["4", "2", "1", "0", "0", "1"],
        "s3": ["4", "2", "0", "0", "0", "2"],
        "total": ["8", "4", "1", "0", "0", "3"],
    }, again.stdout


def test_a_job_relaunched_meanwhile_is_not_deleted(store, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    entries = survey(copy)
    failed = next(e for e in entries if e.state == FAILED)
    cfg = json.loads((failed.path / CONFIG).read_text())
    RunDir(copy, cfg).start(cfg)  # relaunched after the survey: running now
    deleted = delete_incomplete(entries)
    assert [e.state for e in entries if e.path in deleted] == [STALE] and failed.path.is_dir()


# ---------------------------------------------------------------------------
# run_state on single directories


@pytest.fixture
def run_dir(tmp_path) -> Path:
    path = tmp_path / "0123456789abcdef"
    path.mkdir()
    (path / CONFIG).write_text("{}")
    return path


def test_done_wins(run_dir):
    (run_dir / ERROR).write_text("old failure")
    (run_dir / RECORD).write_text("{}")  # a done run has its record (else it is corrupt)
    (run_dir / DONE).write_text("")
    assert run_state(run_dir) == "done"


def test_other_host_is_judged_by_recent_changes(run_dir):
    (run_dir / RUNNING).write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "started": time.time()}))
    assert run_state(run_dir, stale_after=60) == RUNNING_STATE
    age(run_dir, 120)
    assert run_state(run_dir, stale_after=60) == STALE
    (run_dir / "train_state.pt").write_bytes(b"epoch 7")  # the job checkpointed: alive again
    assert run_state(run_dir, stale_after=60) == RUNNING_STATE


def test_dead_process_on_this_host_is_stale_at_once(run_dir):
    (run_dir / RUNNING).write_text(json.dumps({"host": platform.node(), "pid": dead_pid(), "started": time.time()}))
    assert run_state(run_dir) == STALE


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times come from Linux /proc")
def test_a_reused_pid_is_not_the_owner(run_dir):
    """A pid recorded before a reboot may belong to a newer process now: that process is not the job."""
    (run_dir / RUNNING).write_text(json.dumps({"host": platform.node(), "pid": os.getpid(), "started": 1e9}))
    assert run_state(run_dir) == STALE


def test_directory_without_owner_is_stale_once_idle(run_dir):
    assert run_state(run_dir, stale_after=60) == RUNNING_STATE  # just created: start() is about to claim it
    age(run_dir, 120)
    assert run_state(run_dir, stale_after=60) == STALE
    (run_dir / ERROR).write_text("ValueError: boom")
    assert run_state(run_dir, stale_after=60) == FAILED
