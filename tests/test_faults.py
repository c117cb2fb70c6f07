"""Damaged files in the run store end in a clear message or a warning and a correct store, never a stuck run."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from functools import partial

import numpy as np
import pytest
from PIL import Image

from rarespur.data.fingerprint import data_fingerprint
from rarespur.errors import ConfigError, DataError
from rarespur.experiments import resolve_job
from rarespur.launch.runner import run_job
from rarespur.launch.status import CORRUPT, DONE_STATE, report, run_state
from rarespur.store.atomic import TEMP_MARK
from rarespur.store.run_dir import (
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

from conftest import REPO_ROOT, collect_runs, compose_config, run_py
from conftest import job as shared_job

JOB = ("dataset=digits", "model=mlp1x256", "epochs=2", "data.train_limit=300", "data.test_limit=100", "poison.count=10")
FAST = ("device=cpu", "progress=false")
COMPARED = ("test_acc", "spurious_score", "spurious_test_acc", "train_loss", "train_acc")


job = partial(shared_job, base=(*FAST, *JOB))  # one digits job, varied by the overrides given


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


def test_a_claim_fails_on_an_error_and_keeps_the_owner_file_on_an_interruption(tmp_path):
    """An error writes error.txt; an interruption (requeue, Ctrl-C) writes nothing and leaves running.json, so
    `status` calls the run stale once its process is gone; a claim handed back unworked is not running."""
    resolved = resolve_job(compose_config(f"results_dir={tmp_path}", *FAST, *JOB))[0]
    run = RunDir(tmp_path, resolved)
    with pytest.raises(RuntimeError), run.claim(resolved):
        raise RuntimeError("boom")
    assert "boom" in run.file("error.txt").read_text() and not run.file("running.json").exists()
    with pytest.raises(KeyboardInterrupt), run.claim(resolved):
        raise KeyboardInterrupt
    assert not run.file("error.txt").exists() and run.file("running.json").exists() and not run.done
    with run.claim(resolved) as claim:
        assert claim.held and not claim.done
    assert not run.file("running.json").exists() and not run.done


def test_a_results_dir_that_is_a_file_is_an_error_naming_it(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(ConfigError, match=rf"results_dir={afile} is a file, not a folder"):
        run_job(compose_config(f"results_dir={afile}", *FAST, *JOB))
    assert afile.read_text() == "" and sorted(tmp_path.iterdir()) == [afile]


def test_temporary_files_of_a_killed_writer_are_removed_when_the_run_starts_again(tmp_path):
    run = RunDir(tmp_path, resolve_job(compose_config(f"results_dir={tmp_path}", *FAST, *JOB))[0])
    (run.path / TABLES).mkdir(parents=True)
    left = [run.path / ".model.123-abcdef01.tmp.pt", run.path / TABLES / ".roc.123-abcdef01.tmp.csv"]
    for path in left:
        path.write_bytes(b"")
    job(tmp_path)
    assert run.file(DONE).exists() and not [p for p in left if p.exists()]
    assert not list(run.path.rglob(f"*{TEMP_MARK}*"))


@pytest.mark.slow  # a run.py launch (~5 s)
def test_an_unknown_original_dataset_string_names_the_string_and_the_form(tmp_path):
    done = run_py("dataset=mnistv99-3-0-0", f"hydra.run.dir={tmp_path}/out", timeout=120)
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
    with caplog.at_level("WARNING", logger="rarespur.store.collect"):
        table = collect_runs(store)
    assert len(table) == 1 and table["poison.count"].tolist() == [0]  # the good run is still collected
    assert f"skipped run {run}: " in caplog.text and (name in caplog.text or DONE in caplog.text)

    record = job(store)  # the relaunch runs it again
    assert {k: record[k] for k in COMPARED} == {k: expected[k] for k in COMPARED}
    assert run_state(run) == DONE_STATE and len(collect_runs(store)) == 2


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


@pytest.mark.parametrize("damage", ["truncated", "emptied"])
def test_a_damaged_table_of_a_finished_run_is_corrupt_and_rerun(tmp_path, damage, caplog):
    sensitivity = ("experiment=sensitivity", "sensitivity.images=100", "sensitivity.levels=5")
    expected = job(tmp_path, *sensitivity)
    run = tmp_path / expected["run_id"]
    (table,) = (run / TABLES).glob("*.csv")
    data = table.read_bytes()
    table.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    assert run_state(run) == CORRUPT
    with caplog.at_level("WARNING", logger="rarespur.store.collect"):
        assert expected["run_id"] not in set(collect_runs(tmp_path)["run_id"])
    assert f"{TABLES}/{table.name} has {len(data) // 2 if damage == 'truncated' else 0} bytes" in caplog.text
    again = job(tmp_path, *sensitivity)
    assert again["pixel_removal_auc"] == expected["pixel_removal_auc"] and table.read_bytes() == data


# ---------------------------------------------------------------------------
# a sweep killed at random moments

KILL_SWEEP = (
    "dataset=digits",
    "model=mlp1x256",
    "epochs=6",
    "data.train_limit=300",
    "data.test_limit=100",
    "pattern=s3,r3",
    "poison.count=0,10",
    "device=cpu",
    "progress=false",
)
KILLS = 10


def _sweep(store, sweep_dir) -> list[str]:
    return [sys.executable, "run.py", "-m", *KILL_SWEEP, f"results_dir={store}", f"hydra.sweep.dir={sweep_dir}"]


@pytest.mark.slow
def test_a_sweep_killed_at_random_moments_finishes_as_if_it_never_was(tmp_path):
    """SIGKILL at 10 seeded random moments, a relaunch after each: every record exactly once, all intact,
    equal to an uninterrupted sweep's."""
    reference, store = tmp_path / "reference", tmp_path / "store"
    started = time.monotonic()
    subprocess.run(_sweep(reference, tmp_path / "mr0"), cwd=REPO_ROOT, check=True, capture_output=True, timeout=300)
    duration = time.monotonic() - started
    rng = random.Random(0)
    killed = 0
    for attempt in range(KILLS):
        proc = subprocess.Popen(
            _sweep(store, tmp_path / f"mr{attempt + 1}"),
            cwd=REPO_ROOT,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.2, duration / 3))  # a third of a sweep: every kill lands mid-work
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            killed += 1
        proc.wait()
    final = subprocess.run(_sweep(store, tmp_path / "mr_final"), cwd=REPO_ROOT, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-3000:]
    assert killed >= KILLS - 2, f"only {killed} of {KILLS} launches were still working when killed"

    def records(folder):
        runs = [p for p in folder.iterdir() if (p / CONFIG).exists()]
        assert all(run_state(p) == DONE_STATE for p in runs)
        return {p.name: json.loads((p / RECORD).read_text()) for p in runs}

    expected, got = records(reference), records(store)
    assert set(got) == set(expected) and len(got) == 4  # every run exactly once, no stray directory
    for key, record in expected.items():
        assert {k: got[key][k] for k in COMPARED} == {k: record[k] for k in COMPARED}, key
    assert not [p for p in store.rglob(f"*{TEMP_MARK}*") if p.parent != store / ".trained"]
    print(f"kills survived: {killed} of {KILLS} launches; records: {len(got)} expected {len(expected)}, lost 0")


# ---------------------------------------------------------------------------
# data identity


def _image_folder(root, n_train: int, seed: int = 0):
    """<root>/{train,test}/{a,b}/NN.png: random 28x28 grey images, `n_train` per training class."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", 10)):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(
                    root / split / cls / f"{i:03d}.png"
                )
    return root


FOLDER_JOB = ("dataset=imagefolder", "model=mlp1x256", "epochs=1", "poison.count=3", *FAST)


def test_the_same_folder_spelled_differently_is_the_same_run(tmp_path, monkeypatch):
    folder = _image_folder(tmp_path / "data" / "imgs", n_train=30)
    monkeypatch.chdir(tmp_path / "data")
    spellings = ["imgs", "./imgs", "../data/imgs", str(folder), str(folder) + "/"]
    keys = {RunDir(tmp_path, resolve_job(compose_config(*FOLDER_JOB, f"dataset.path={p}"))[0]).key for p in spellings}
    assert len(keys) == 1
    first = run_job(compose_config(f"results_dir={tmp_path / 'store'}", *FOLDER_JOB, "dataset.path=imgs"))
    again = run_job(compose_config(f"results_dir={tmp_path / 'store'}", *FOLDER_JOB, "dataset.path=../data/imgs"))
    assert again == first and first["n_train"] == 60 and len(first["data_fingerprint"]) == 16


def test_a_folder_changed_in_place_is_never_answered_with_the_stale_record(tmp_path):
    folder = _image_folder(tmp_path / "imgs", n_train=30)
    store = tmp_path / "store"
    overrides = (f"results_dir={store}", *FOLDER_JOB, f"dataset.path={folder}")
    first = run_job(compose_config(*overrides))
    clean = run_job(compose_config(*overrides, "poison.count=0"))
    _image_folder(folder, n_train=40, seed=1)  # 10 more images per class, the first 30 rewritten
    with pytest.raises(DataError, match=rf"the data of run {first['run_id']} .*changed since it was stored"):
        run_job(compose_config(*overrides))
    shutil.rmtree(store / first["run_id"])  # as the message says
    assert run_job(compose_config(*overrides))["n_train"] == 80
    # a clean model trained on the old images is not reused by a clean run of another pattern
    other = run_job(compose_config(*overrides, "poison.count=0", "pattern=s1"))
    assert other["model_trained_in"] == other["run_id"] != clean["run_id"] and other["n_train"] == 80


def test_mnist_files_packed_or_unpacked_are_the_same_data(tmp_path, monkeypatch):
    """data.root differs between machines (not in the key): .gz files and the unpacked ones have one fingerprint."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    for name in names:
        content = rng.integers(0, 256, 1000, dtype=np.uint8).tobytes()
        (tmp_path / "plain" / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
        (tmp_path / "packed" / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
        (tmp_path / "plain" / "MNIST" / "raw" / name).write_bytes(content)
        (tmp_path / "packed" / "MNIST" / "raw" / f"{name}.gz").write_bytes(gzip.compress(content))
    plain, packed = data_fingerprint("mnist", tmp_path / "plain"), data_fingerprint("mnist", tmp_path / "packed")
    assert plain == packed and len(plain) == 16
    assert list((tmp_path / "cache").rglob("*"))  # each file's checksum is cached
    changed = tmp_path / "plain" / "MNIST" / "raw" / names[1]
    changed.write_bytes(b"\x00" + changed.read_bytes()[1:])
    assert data_fingerprint("mnist", tmp_path / "plain") != packed
