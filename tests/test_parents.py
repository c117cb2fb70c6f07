"""Experiments that build on other runs: declared parents, run first, and shared between processes."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from rarespur.config.resolve import resolve
from rarespur.experiments import EXPERIMENTS
from rarespur.launch.runner import run_job
from rarespur.store.run_dir import DONE, RUNNING, RunDir

from conftest import REPO_ROOT, compose_config

COMMON = ["pattern=s3", "poison.count=20", "model=mlp1x256", "optim=adam", "device=cpu"]


def composed(store, *overrides: str) -> dict:
    cfg = resolve(compose_config(f"results_dir={store}", *overrides))
    cfg["results_dir"] = str(store)
    return cfg


def test_experiments_declare_their_parents(tmp_path):
    cfg = composed(tmp_path, *COMMON, "experiment=group_influence")
    parents = EXPERIMENTS["group_influence"].requires(cfg)
    assert [p["experiment"]["name"] for p in parents] == ["train", "retrain_exact"]
    assert all("influence" not in p for p in parents)
    no_exact = composed(tmp_path, *COMMON, "experiment=incremental_retraining", "deletion.compare_exact=false")
    assert [p["experiment"]["name"] for p in EXPERIMENTS["incremental_retraining"].requires(no_exact)] == ["train"]
    assert EXPERIMENTS["train"].requires(cfg) == [] and EXPERIMENTS["mem_inference"].requires(cfg) == []


@pytest.mark.slow  # a second process trains 40 epochs while this one waits
def test_derived_job_waits_for_the_parent_another_process_is_training(tmp_path, monkeypatch, caplog):
    """A sensitivity job whose parent train run is being trained by another process (a second array
    task of the same sweep) waits for it and reuses it: the parent is trained once, not twice."""
    store = tmp_path / "store"
    train = [*COMMON, "epochs=40"]
    parent = RunDir(store, composed(store, *train))
    trainer = subprocess.Popen(
        [sys.executable, "run.py", *train, f"results_dir={store}", f"hydra.run.dir={tmp_path}/out"],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not parent.file(RUNNING).exists():  # the other process holds the parent's lock and trains
            assert trainer.poll() is None and time.time() < deadline, "the trainer never started"
            time.sleep(0.1)
        monkeypatch.setattr("rarespur.experiments.steps.train_model", lambda *a, **k: pytest.fail("trained twice"))
        caplog.set_level("INFO", logger="rarespur.store.run_dir")
        record = run_job(composed(store, *train, "experiment=sensitivity", "sensitivity.images=50"))
    finally:
        _, err = trainer.communicate(timeout=300)
    assert trainer.returncode == 0, err[-2000:]
    assert f"run {parent.key} is being worked on by" in caplog.text  # it did wait on the lock
    assert parent.file(DONE).exists() and record["parent_run_id"] == parent.key
    assert record["spurious_score"] == parent.read_record()["spurious_score"]  # the other process's model
    assert len(list(store.glob(f"*/{DONE}"))) == 2  # the parent and the sensitivity run, nothing else
