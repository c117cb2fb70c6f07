"""One Hydra job from start to committed record: resolve, skip if done, run, record, report.

A job whose ``done`` marker exists, with the files it vouches for intact and the data it was
computed on unchanged, returns its stored record without retraining, so re-launching a sweep
only runs what is missing, failed or damaged.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

import rarespur
from rarespur.config.resolve import identity
from rarespur.errors import DataError
from rarespur.experiments import Experiment, resolve_job
from rarespur.experiments.steps import data_fingerprint_of
from rarespur.launch.provenance import where_it_ran
from rarespur.store.run_dir import DATA_FINGERPRINT, FINAL_STATE, MODEL, Claim, RunDir, flatten
from rarespur.tracking.loggers import logger_settings
from rarespur.tracking.session import tracked

log = logging.getLogger(__name__)

PARENT_FILES = (MODEL, FINAL_STATE)  # what a derived run loads from its parent: checked against their checksums


def versions() -> dict[str, str]:
    import numpy
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "rarespur": rarespur.__version__,
    }


def summary(record: dict[str, Any], experiment: Experiment) -> str:
    shown = {k: record[k] for k in experiment.summary_keys if isinstance(record.get(k), (int, float, str))}
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()]
    return f"run {record['run_id']} ({record['experiment.name']}): " + "  ".join(parts)


def match_threads_to_allocation() -> None:
    """Use as many intra-op threads as CPUs the scheduler gave the task, not as the node has.

    SLURM says so in SLURM_CPUS_PER_TASK; rarespur's local launchers in RARESPUR_THREADS.

    Several jobs on one node each spinning all-core OpenMP pools slow every one
    of them down many times over; OMP_NUM_THREADS, when set, is left to torch.
    """
    import torch

    cpus = os.environ.get("RARESPUR_THREADS") or os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(int(cpus))


def stored(run: RunDir, resolved: dict[str, Any], experiment: Experiment) -> dict[str, Any]:
    record = _same_data(run, resolved)
    log.info("already done, not retrained: %s", run.path)
    print(summary(record, experiment), "(stored)")
    return record


def run_job(cfg: DictConfig | dict[str, Any], verify: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run (or fetch) the job of `cfg`; returns its one-row record.

    The runs it builds on (the experiment's ``requires``) are run first, the same way, so a sweep
    can mix train and derived experiments; the run lock makes a job whose run another process is
    working on wait for it and return its record, instead of computing it twice. A stored run counts
    as done when the files its done marker vouches for have their sizes, and those in `verify` their
    checksums too; a damaged one is computed again.
    """
    resolved, experiment = resolve_job(cfg)
    resolved["results_dir"] = str(Path(resolved["results_dir"]).expanduser().resolve())
    run = RunDir(resolved["results_dir"], resolved)
    logger_settings(resolved)  # an unknown logger or its missing package fails before anything is written
    if run.done and run.damage(verify) is None:
        return stored(run, resolved, experiment)
    experiment.check(resolved)  # a config that cannot work fails here, before its run directory exists
    parents = [_parent(run, parent_cfg) for parent_cfg in experiment.requires(resolved)]
    with run.claim(resolved, verify) as claim:
        if claim.done:  # finished by another process while this one waited
            return stored(run, resolved, experiment)
        match_threads_to_allocation()
        where_it_ran()  # git runs now, as the job starts (cached), so ran_on.commit is the code that runs
        started = time.perf_counter()
        fingerprint = data_fingerprint_of(resolved)
        with tracked(run, resolved) as tracking:
            metrics = experiment.run(resolved, run, parents)
            record = commit(claim, experiment, metrics, fingerprint, time.perf_counter() - started)
            tracking.finish(record, run.path)
        return record


def _parent(run: RunDir, parent_cfg: dict[str, Any]) -> Path:
    """The directory of a run `run` builds on, done and intact (run first if it is not)."""
    parent = RunDir(run.path.parent, parent_cfg)
    if not parent.done:
        log.info(
            "run %s builds on %s (%s), which is not done yet: running it first",
            run.key,
            parent.key,
            parent_cfg["experiment"]["name"],
        )
    run_job(parent_cfg, verify=PARENT_FILES)  # done and intact: its stored record, at the cost of a checksum
    return parent.path


def _same_data(run: RunDir, resolved: dict[str, Any]) -> dict[str, Any]:
    """The stored record of `run`, unless the data it was computed on has changed since (then a DataError:
    the record would describe other images). Records from before fingerprints, and data that is not
    here to compare, are taken as they are."""
    record = run.read_record()
    stored = record.get(DATA_FINGERPRINT)
    if not stored:
        return record
    try:
        now = data_fingerprint_of(resolved)
    except DataError:
        return record
    if now and now != stored:
        raise DataError(
            f"the data of run {run.key} (dataset={resolved['dataset']['name']}) changed since it was stored "
            f"(fingerprint {stored}, now {now}): its record describes other images. Delete the run "
            f"(rm -r {run.path}) to compute it on the data as it is now, or give another results_dir"
        )
    return record


def commit(
    claim: Claim, experiment: Experiment, metrics: dict[str, Any], fingerprint: str, wall_time_s: float
) -> dict[str, Any]:
    """Commit the claimed run's record (config, metrics, timing, where it ran, versions) and done marker; print
    its summary."""
    run = claim.run
    record = {
        "run_id": run.key,
        **flatten(identity(claim.resolved)),
        **metrics,
        DATA_FINGERPRINT: fingerprint,
        "wall_time_s": wall_time_s,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **flatten({"ran_on": where_it_ran()}),
        **{f"version.{k}": v for k, v in versions().items()},
        "argv": " ".join(sys.argv[1:]),
    }
    claim.commit(record)
    print(summary(record, experiment))
    log.info("record written to %s", run.path)
    return record
