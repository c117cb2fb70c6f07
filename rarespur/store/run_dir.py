"""The run store: one directory per job, keyed by a stable hash of what the job computes.

Layout of ``<results_dir>/<key>/``: ``config.json`` (resolved config),
``record.json`` (one flat row), ``model.pt`` (final weights), ``final_state.pt``
(final optimizer and schedule state, which incremental retraining continues from),
``train_state.pt`` (per-epoch checkpoint while training), ``tables/`` (extra tidy
rows), ``error.txt`` after a failure, and
``running.json`` (host, pid, start time) while a job works on it, and ``done``,
written last. Every file is written to a temporary name and renamed,
so a killed job never leaves something that looks finished.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

from rarespur.config.names import resolve_model_name, store_name
from rarespur.config.resolve import identity, training_identity
from rarespur.store.atomic import TEMP_MARK, write_atomic
from rarespur.store.damaged import UNREADABLE
from rarespur.store.manifest import damage, file_manifest

log = logging.getLogger(__name__)

LOCK_POLL_S = 2.0

DONE = "done"
RECORD = "record.json"
CONFIG = "config.json"
MODEL = "model.pt"
TRAIN_STATE = "train_state.pt"
ERROR = "error.txt"
RUNNING = "running.json"
TABLES = "tables"  # <run>/tables/<name>.csv: extra tidy rows of a run (ROC points, removal curves, ...)
INDICATORS = "spurious_indicators.npz"  # per test image: did the pattern raise the target class by > eps
HISTORY = "history.json"  # one row per training epoch
HELPER_HISTORY = "history_{}.json"  # the same for a helper model the run trains (a membership-inference shadow)
# optimizer, schedule and generators after the last epoch: incremental retraining goes on from it
FINAL_STATE = "final_state.pt"
DATA_FINGERPRINT = "data_fingerprint"  # record field: which data the run trained on (rarespur.data.fingerprint)
TRAINED_INDEX = ".trained"  # <results_dir>/.trained/<training key> holds the run key of a finished model
LOCKS = ".locks"  # <results_dir>/.locks/<run key>: held (flock) by the process working on that run


# Regularizer settings renamed since runs were first stored: (regularizer, new key) -> the stored key.
STORED_REGULARIZER_KEYS = {("gaussian_noise", "strength"): "sigma"}


def _digest(tree: dict[str, Any]) -> str:
    """16 hex digits of the sorted-key JSON of `tree`, with names spelled as the runs already stored spell
    them: the model by its original code name (:func:`rarespur.config.names.store_name`), a renamed
    regularizer setting by its old key. Renaming must not orphan the runs already stored."""
    if isinstance(tree.get("model"), dict) and "name" in tree["model"]:
        tree = {**tree, "model": {**tree["model"], "name": store_name(resolve_model_name(tree["model"]["name"]))}}
    reg = tree.get("regularizer")
    if isinstance(reg, dict):
        renamed = {STORED_REGULARIZER_KEYS.get((reg.get("name"), k), k): v for k, v in reg.items()}
        tree = {**tree, "regularizer": renamed}
    blob = json.dumps(tree, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def config_key(resolved: dict[str, Any]) -> str:
    """Stable 16-hex key of a resolved config: sorted-key JSON of its identity part."""
    return _digest(identity(resolved))


def training_key(resolved: dict[str, Any]) -> str:
    """Equal for configs that train the same weights (:func:`rarespur.config.resolve.training_identity`)."""
    return _digest(training_identity(resolved))


def find_trained(results_dir: str | Path, resolved: dict[str, Any], data_fingerprint: str = "") -> Path | None:
    """A finished run directory whose model was trained exactly as `resolved` would train it, on the data
    of `data_fingerprint` (:mod:`rarespur.data.fingerprint`), with its weights as written.

    Clean baselines of one dataset/model/optimizer differ only in how they are
    scored, so a sweep trains each such model once and scores it many times.
    """
    entry = Path(results_dir) / TRAINED_INDEX / training_key(resolved)
    if not entry.exists():
        return None
    run = Path(results_dir) / entry.read_text().strip()
    if not ((run / DONE).exists() and (run / MODEL).exists()):
        return None
    why = run_damage(run, (MODEL,))
    stored_data = read_record(run).get(DATA_FINGERPRINT) if why is None else None
    if why is None and stored_data and data_fingerprint and stored_data != data_fingerprint:
        why = f"it was trained on other data (fingerprint {stored_data}, now {data_fingerprint})"
    if why is not None:
        log.warning("the clean model of %s cannot be reused (%s): training this run's own", run, why)
        return None
    return run


def register_trained(results_dir: str | Path, resolved: dict[str, Any], run_key: str) -> None:
    """Make the finished model of run `run_key` findable by :func:`find_trained`."""
    index = Path(results_dir) / TRAINED_INDEX
    index.mkdir(parents=True, exist_ok=True)
    write_atomic(index / training_key(resolved), run_key)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _vouched(name: str) -> bool:
    """Files of a finished run that its done marker vouches for: all but the markers of work in progress."""
    return name not in (DONE, RUNNING, ERROR, TRAIN_STATE) and TEMP_MARK not in name and UNREADABLE not in name


def run_damage(run_path: Path, verify: tuple[str, ...] = ()) -> str | None:
    """What is wrong with the finished run at `run_path`, naming the file (None: nothing).

    Every file of the done marker's manifest must exist with its size, and the files in `verify`
    (about to be used again) with their checksum too. A run stored before manifests existed has an
    empty marker: its record must parse.
    """
    text = (run_path / DONE).read_text()  # an I/O error is not damage: it propagates, nothing is taken back
    try:
        manifest = json.loads(text)["files"] if text.strip() else None
    except (ValueError, KeyError, TypeError):
        return f"{DONE} cannot be read"
    if manifest is not None:
        return damage(run_path, manifest, list(verify))
    try:
        read_record(run_path)
    except ValueError:
        return f"{RECORD} does not parse"
    except FileNotFoundError:
        return f"{RECORD} is missing"
    return None


def histories(run_path: Path) -> dict[str | None, list[dict[str, Any]]]:
    """The training histories a run stored: its own model's (key None) and each helper model's (by name)."""
    found: dict[str | None, list[dict[str, Any]]] = {}
    if (run_path / HISTORY).exists():
        found[None] = json.loads((run_path / HISTORY).read_text())
    prefix, suffix = HELPER_HISTORY.split("{}")
    for path in sorted(run_path.glob(HELPER_HISTORY.format("*"))):
        found[path.name[len(prefix) : -len(suffix)]] = json.loads(path.read_text())
    return found


def read_record(run_path: Path) -> dict[str, Any]:
    """The record of a finished run, by its directory."""
    return json.loads((run_path / RECORD).read_text())


class Claim:
    """This process's hold on one run (:meth:`RunDir.claim`): what it found there, and the one way out."""

    def __init__(self, run: RunDir, resolved: dict[str, Any], held: bool, done: bool) -> None:
        self.run, self.resolved = run, resolved
        self.held = held  # False: another process works on the run; leave it to that one
        self.done = done  # finished and intact: read its record, compute nothing
        self.settled = False

    def commit(self, record: dict[str, Any]) -> None:
        """The run is complete: its record, then the done marker (:meth:`RunDir.finish`)."""
        self.run.finish(record, self.resolved)
        self.settled = True

    def fail(self, message: str) -> None:
        """The run failed: error.txt with `message`, and no done marker."""
        self.run.fail(message)
        self.settled = True


class RunDir:
    """The directory of one job in the run store."""

    def __init__(self, results_dir: str | Path, resolved: dict[str, Any]):
        self.key = config_key(resolved)
        self.path = Path(results_dir) / self.key
        # called with (epoch row, helper model name or None) after each epoch: the trackers of the run
        # (rarespur.tracking.session.tracked), so every experiment is tracked without code of its own
        self.epoch_listeners: list[Callable[[dict[str, Any], str | None], None]] = []

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def done(self) -> bool:
        """The done marker exists (whether the files are intact is :meth:`damage`)."""
        return self.file(DONE).exists()

    def damage(self, verify: tuple[str, ...] = ()) -> str | None:
        """What is wrong with this finished run (None: nothing): see :func:`run_damage`."""
        return run_damage(self.path, verify)

    def reopen(self, why: str) -> None:
        """Take back the done marker of a damaged run, so it is computed again (its files are rewritten)."""
        log.warning("run %s is corrupt (%s): running it again", self.key, why)
        self.file(DONE).unlink(missing_ok=True)

    def read_record(self) -> dict[str, Any]:
        return read_record(self.path)

    def start(self, resolved: dict[str, Any]) -> None:
        """Create the directory, clear a previous failure and the temporary files of a killed attempt (the
        caller holds the run's lock: no other writer is at work here), store the config, say who runs it."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.file(ERROR).unlink(missing_ok=True)
        for stale in self.path.rglob(f"*{TEMP_MARK}*"):
            stale.unlink(missing_ok=True)
        write_atomic(self.file(CONFIG), json.dumps(resolved, indent=2, sort_keys=True, default=str))
        owner = {"host": platform.node(), "pid": os.getpid(), "started": time.time()}
        write_atomic(self.file(RUNNING), json.dumps(owner))

    def finish(self, record: dict[str, Any], resolved: dict[str, Any]) -> None:
        """Write the record, then the done marker with the manifest of every file the run vouches for
        (sizes and checksums, :mod:`rarespur.store.manifest`): the marker is the commit point."""
        write_atomic(self.file(RECORD), json.dumps(record, indent=2, default=str))
        self.file(TRAIN_STATE).unlink(missing_ok=True)
        write_atomic(self.file(DONE), json.dumps({"files": file_manifest(self.path, _vouched)}, indent=1))
        self.file(RUNNING).unlink(missing_ok=True)
        if self.file(MODEL).exists():
            register_trained(self.path.parent, resolved, self.key)

    def write_table(self, name: str, rows: list[dict[str, Any]]) -> Path:
        """Store extra tidy rows of this run (one row per curve point, level, ...).

        ``collect`` merges the tables of one name over all finished runs into
        ``<name>.parquet``, with a ``run_id`` column to join with the runs table.
        """
        import pandas as pd

        folder = self.path / TABLES
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.csv"
        write_atomic(path, pd.DataFrame(rows).to_csv(index=False))
        return path

    @contextlib.contextmanager
    def lock(self, wait: bool = True) -> Iterator[bool]:
        """Hold this run for the calling process: a second process that needs the same run (an identical
        job, or a parent that two derived jobs need at once) waits here, then finds it done.

        An flock on ``<results_dir>/.locks/<key>``: the kernel drops it when its holder dies, so a
        crashed or killed holder never leaves the run locked; the next one resumes from the checkpoint.
        Yields whether this process holds the run: with `wait` False, a run another process holds is
        not waited for (False), so a pack can leave it to that process.
        """
        folder = self.path.parent / LOCKS
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / self.key, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "?"
                if not wait:
                    log.info("run %s is being worked on by %s: left to it", self.key, holder)
                    yield False
                    return
                log.info("run %s is being worked on by %s: waiting for it", self.key, holder)
                while True:
                    time.sleep(LOCK_POLL_S)
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        continue
            handle.seek(0)
            handle.truncate()
            handle.write(f"{platform.node()}:{os.getpid()}")
            handle.flush()
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def claim(self, resolved: dict[str, Any], verify: tuple[str, ...] = (), wait: bool = True) -> Iterator[Claim]:
        """The store's side of computing this run, in one place: hold its lock; find it done and intact (another
        process finished it meanwhile), or take back a damaged done marker and start it; then the caller works
        and commits or fails the claim. An exception that leaves the claim unsettled fails the run with its
        traceback; an interruption (SystemExit from a scheduler's requeue, Ctrl-C) writes nothing, so the next
        launch resumes from the epoch checkpoint. The only place a done marker is taken back: no other writer
        is at work while the lock is held."""
        with self.lock(wait) as held:
            if not held:
                yield Claim(self, resolved, held=False, done=False)
                return
            if self.done:
                why = self.damage(verify)
                if why is None:
                    yield Claim(self, resolved, held=True, done=True)
                    return
                self.reopen(why)
            self.start(resolved)
            claim = Claim(self, resolved, held=True, done=False)
            try:
                yield claim
            except Exception:
                if not claim.settled:
                    claim.fail(traceback.format_exc())
                raise
            # an interruption (BaseException) keeps running.json: `status` calls the run stale once its process is gone
            if not claim.settled:  # handed back unworked: not running here
                self.file(RUNNING).unlink(missing_ok=True)

    def heartbeat(self) -> None:
        """Touch running.json so `status` on another host sees the job is alive."""
        self.file(RUNNING).touch(exist_ok=True)

    def epoch_done(self, row: dict[str, Any], model: str | None = None) -> None:
        """A training epoch of this run ended (of its own model, or of the helper model `model`): heartbeat,
        and the row to the epoch listeners."""
        self.heartbeat()
        for listener in self.epoch_listeners:
            listener(row, model)

    def fail(self, message: str) -> None:
        """Record a failure: error.txt with the traceback, and no done marker."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.file(ERROR), message)
        self.file(RUNNING).unlink(missing_ok=True)
