"""Damaged files in the run store end in a clear message or a warning and a correct store, never a stuck run."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys

import pytest

from rarespur.atomic import TEMP_MARK
from rarespur.collect import collect
from rarespur.errors import ConfigError
from rarespur.experiments import resolve_job
from rarespur.runner import run_job
from rarespur.status import CORRUPT, DONE_STATE, report, run_state
from rarespur.store import (
    CONFIG,
    DONE,
    FINAL_STATE,
    HISTORY,
    INDICATORS,
    MODEL,
    RECORD,
    TABLES,
    TRAIN_STATE,
    RunDir,
)

from conftest import REPO_ROOT, compose_config

JOB = ("dataset=digits", "model=mlp1x256", "epochs=2", "data.train_limit=300", "data.test_limit=100", "poison.count=10")
FAST = ("device=cpu", "progress=false")
COMPARED = ("test_acc", "spurious_score", "spurious_test_acc", "train_loss", "train_acc")


def job(store, *overrides: str) -> dict:
    return run_job(compose_config(f"results_dir={store}", *FAST, *JOB, *overrides))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The job run once without faults, and the bytes of a real checkpoint to damage."""
    store = tmp_path_factory.mktemp("reference")
    record = job(store)
    return record, (store / record["run_id"] / FINAL_STATE).read_bytes()


@pytest.mark.parametrize("damage", ["truncated", "emptied", "garbage"])
def test_an_unreadable_resume_checkpoint_is_set_aside_and_the_run_trains_from_scratch(
    tmp_path, reference, damage, caplog
):
    expected, checkpoint_bytes = reference
    run = RunDir(tmp_path, resolve_job(compose_config(f"results_dir={tmp_path}", *FAST, *JOB))[0])
    run.path.mkdir(parents=True)
    bad = {"truncated": checkpoint_bytes[: len(checkpoint_bytes) // 2], "emptied": b"", "garbage": b"not a checkpoint"}
    run.file(TRAIN_STATE).write_bytes(bad[damage])
    with caplog.at_level("WARNING"):
        record = job(tmp_path)
    assert run.file(DONE).exists()
    assert {k: record[k] for k in COMPARED} == {k: expected[k] for k in COMPARED}  # trained from scratch, same run
    (aside,) = run.path.glob(f"{TRAIN_STATE}.unreadable-*")
    assert aside.read_bytes() == bad[damage]  # kept for inspection
    assert f"{run.file(TRAIN_STATE)} cannot be read" in caplog.text and "set aside" in caplog.text


@pytest.mark.parametrize("value", ["", "null", "'  '"])
def test_an_empty_results_dir_is_an_error_not_the_current_directory(tmp_path, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"results_dir=.* is not a directory; .*results_dir=results"):
        run_job(compose_config(f"results_dir={value}", *FAST, *JOB))
    assert list(tmp_path.iterdir()) == []


def test_temporary_files_of_a_killed_writer_are_removed_when_the_run_starts_again(tmp_path):
    run = RunDir(tmp_path, resolve_job(compose_config(f"results_dir={tmp_path}", *FAST, *JOB))[0])
    (run.path / TABLES).mkdir(parents=True)
    left = [run.path / ".model.123-abcdef01.tmp.pt", run.path / TABLES / ".roc.123-abcdef01.tmp.csv"]
    for path in left:
        path.write_bytes(b"")
    job(tmp_path)
    assert run.file(DONE).exists() and not [p for p in left if p.exists()]
    assert not list(run.path.rglob(f"*{TEMP_MARK}*"))


def test_an_unknown_original_dataset_string_names_the_string_and_the_form(tmp_path):
    cmd = [sys.executable, "run.py", "dataset=mnistv99-3-0-0", f"hydra.run.dir={tmp_path}/out"]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    first = done.stderr.strip().splitlines()[0]
    assert first.startswith("error: dataset=mnistv99-3-0-0: pattern version v99 unknown"), first
    assert "{twoclass}{dataset}{version}-{n}-{target(s)}-{seed}" in first and "v8" in first


# ---------------------------------------------------------------------------
# finished runs: every file the done marker vouches for is checked


@pytest.fixture(scope="module")
def finished_store(tmp_path_factory):
    """A store with a poisoned run and its clean baseline, finished without faults."""
    store = tmp_path_factory.mktemp("finished")
    poisoned = job(store)
    job(store, "poison.count=0")
    return store, poisoned


@pytest.mark.parametrize("name", [RECORD, MODEL, INDICATORS, HISTORY, FINAL_STATE, CONFIG, DONE])
@pytest.mark.parametrize("damage", ["truncated", "emptied"])
def test_a_damaged_file_of_a_finished_run_is_corrupt_skipped_and_rerun(tmp_path, finished_store, name, damage, caplog):
    source, expected = finished_store
    store = shutil.copytree(source, tmp_path / "store")
    run = store / expected["run_id"]
    data = (run / name).read_bytes()
    (run / name).write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    if name == DONE and damage == "emptied":
        # an empty marker is how runs were stored before manifests: it stands if the record parses
        assert run_state(run) == DONE_STATE
        return
    assert run_state(run) == CORRUPT
    with caplog.at_level("WARNING", logger="rarespur.collect"):
        table = collect(store)
    assert len(table) == 1 and table["poison.count"].tolist() == [0]  # the good run is still collected
    assert f"skipped run {run}: " in caplog.text and (name in caplog.text or DONE in caplog.text)

    record = job(store)  # the relaunch runs it again
    assert {k: record[k] for k in COMPARED} == {k: expected[k] for k in COMPARED}
    assert run_state(run) == DONE_STATE and len(collect(store)) == 2


def test_status_lists_a_corrupt_run_and_delete_incomplete_removes_it(tmp_path, finished_store):
    source, expected = finished_store
    store = shutil.copytree(source, tmp_path / "store")
    run = store / expected["run_id"]
    (run / MODEL).write_bytes(b"")
    out = io.StringIO()
    report(store, delete=True, out=out)
    text = out.getvalue()
    header = text.splitlines()[1].split()
    assert header == ["total", "done", "running", "failed", "stale", "corrupt"]
    assert f"corrupt (1):\n  {run}" in text and f"{MODEL} has 0 bytes" in text
    assert "deleted 1 incomplete run directories" in text and not run.exists()


def test_a_reused_clean_model_is_verified_first(tmp_path, finished_store, caplog):
    """Clean runs of two patterns share one trained model; a model whose bytes changed is not reused."""
    source, _ = finished_store
    store = shutil.copytree(source, tmp_path / "store")
    clean = job(store, "poison.count=0")  # stored
    model = store / clean["run_id"] / MODEL
    data = bytearray(model.read_bytes())
    data[-100:] = bytes(100)  # same size, other contents: only the checksum can tell
    model.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        other = job(store, "poison.count=0", "pattern=s3")
    assert f"the clean model of {store / clean['run_id']} cannot be reused ({MODEL} does not match" in caplog.text
    assert "training this run's own" in caplog.text
    assert other["test_acc"] == clean["test_acc"]  # trained again, deterministically the same model


def test_the_done_marker_holds_the_manifest_of_the_run(finished_store):
    source, expected = finished_store
    run = source / expected["run_id"]
    manifest = json.loads((run / DONE).read_text())["files"]
    assert set(manifest) == {RECORD, MODEL, INDICATORS, HISTORY, FINAL_STATE, CONFIG}
    assert manifest[MODEL]["bytes"] == (run / MODEL).stat().st_size
    assert manifest[MODEL]["sha256"] == hashlib.sha256((run / MODEL).read_bytes()).hexdigest()
