"""A sweep killed mid-way and launched again finishes only what is missing, with the same numbers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from rarespur.launch.runner import run_job
from rarespur.store.run_dir import DONE, RECORD, TRAIN_STATE

from conftest import REPO_ROOT, compose_config

SWEEP = ["pattern=s3,r3", "poison.count=0,10", "epochs=60", "device=cpu", "progress=true"]
COMPARED = ("test_acc", "spurious_score", "spurious_test_acc", "train_loss", "train_acc", "poisoned_indices")


def launch(store, sweep_dir) -> list[str]:
    return [sys.executable, "run.py", "-m", *SWEEP, f"results_dir={store}", f"hydra.sweep.dir={sweep_dir}"]


def wait_for_mid_training(store, proc, timeout: float = 120):
    """Block until one job is done and another has a checkpoint but no done marker."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the sweep finished before it could be interrupted"
        done = {p.parent for p in store.glob(f"*/{DONE}")}
        started = [p.parent for p in store.glob(f"*/{TRAIN_STATE}") if p.parent not in done]
        if done and started:
            return done, started[0]
        time.sleep(0.02)
    raise AssertionError("no job reached mid-training in time")


@pytest.mark.slow  # 4 jobs x 60 epochs in run.py, launched twice (~2 min); resuming in-process: killed_after_epoch
def test_kill_and_relaunch(tmp_path):
    store, sweep_dir = tmp_path / "store", tmp_path / "multirun"
    proc = subprocess.Popen(
        launch(store, sweep_dir),
        cwd=REPO_ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        finished, interrupted = wait_for_mid_training(store, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (interrupted / DONE).exists() and not (interrupted / RECORD).exists()
    epochs_before = len(torch.load(interrupted / TRAIN_STATE, weights_only=True)["history"])
    assert 1 <= epochs_before < 60
    records_before = {run: (run / RECORD).read_text() for run in finished}

    again = subprocess.run(launch(store, sweep_dir), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert f"resuming from {interrupted / TRAIN_STATE} at epoch" in log

    runs = [p.parent for p in store.glob(f"*/{DONE}")]
    run_dirs = [p for p in store.iterdir() if not p.name.startswith(".")]
    assert len(runs) == 4 and len(run_dirs) == 4  # every job exactly once
    for run in runs:
        json.loads((run / RECORD).read_text())  # complete, parseable
        assert not (run / TRAIN_STATE).exists()
    for run, text in records_before.items():
        assert (run / RECORD).read_text() == text  # finished jobs were not run again

    resumed = json.loads((interrupted / RECORD).read_text())
    overrides = [
        f"pattern={resumed['pattern.name']}",
        f"poison.count={resumed['poison.count']}",
        "epochs=60",
        "device=cpu",
        f"results_dir={tmp_path / 'uninterrupted'}",
    ]
    straight = run_job(compose_config(*overrides))
    assert straight["run_id"] == resumed["run_id"]
    for key in COMPARED:
        assert resumed[key] == straight[key], key
    history = json.loads((interrupted / "history.json").read_text())
    assert history == json.loads((tmp_path / "uninterrupted" / straight["run_id"] / "history.json").read_text())
