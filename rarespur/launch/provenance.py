"""Where a run ran: its SLURM job and array task, the host, the job's log file and the code's commit.

A record says what was computed (config, metrics, library versions); this says where, so that a
surprising number leads back to the scheduler's accounting (``sacct -j``), to the log the job
printed, and to the exact code that produced it. The runner stores it in every record as
``ran_on.*`` (:func:`rarespur.launch.runner.commit`); it never fails a run: what cannot be found
is None.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import rarespur

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(rarespur.__file__).resolve().parent  # git looks here for the code's commit
GIT_TIMEOUT_S = 5.0  # a git call that takes longer (a hung network file system) is given up: no commit


def where_it_ran() -> dict[str, Any]:
    """Where this process runs, as JSON values (None: not known or not applicable).

    - ``host``: :func:`platform.node`;
    - ``slurm_job_id``, ``slurm_array_task``: SLURM_ARRAY_JOB_ID and SLURM_ARRAY_TASK_ID in an array
      job, else SLURM_JOB_ID and None (None, None outside SLURM);
    - ``log``: the stdout file of the submitit job this process runs in;
    - ``commit``, ``dirty``: ``git rev-parse HEAD`` of the code, and whether its work tree has
      uncommitted changes or untracked files; when the package is not in a git work tree (installed
      from an sdist or wheel), both are None and ``version`` is ``rarespur.__version__``.

    The environment is read on every call; git runs once per process (:func:`code_version`).
    """
    return {"host": platform.node(), **slurm_ids(), "log": job_log(), **code_version(PACKAGE_DIR)}


def slurm_ids() -> dict[str, str | None]:
    """The SLURM job (the array's job id for an array task) and array task of this process, as SLURM gives them."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job:
        return {"slurm_job_id": array_job, "slurm_array_task": os.environ.get("SLURM_ARRAY_TASK_ID")}
    return {"slurm_job_id": os.environ.get("SLURM_JOB_ID"), "slurm_array_task": None}


def job_log() -> str | None:
    """The stdout log file of the submitit job this process runs in; None outside one.

    submitit's executors export SUBMITIT_EXECUTOR (slurm, local) to the job, and its job runner sets
    SUBMITIT_FOLDER; only with both is submitit imported and asked."""
    if not (os.environ.get("SUBMITIT_EXECUTOR") and os.environ.get("SUBMITIT_FOLDER")):
        return None
    try:
        import submitit

        return str(submitit.JobEnvironment().paths.stdout)
    except Exception as err:  # no known environment, a variable missing: the run goes on without its log path
        log.debug("no submitit log path: %s", err)
        return None


@functools.cache
def code_version(directory: Path) -> dict[str, Any]:
    """``commit``, ``dirty`` and ``version`` of the code in `directory` (see :func:`where_it_ran`), once per
    process and directory.

    The directory must hold files git tracks: a package installed into a virtual environment that
    lives inside some other work tree is not that tree's code."""
    installed = {"commit": None, "dirty": None, "version": rarespur.__version__}
    try:
        commit = _git(directory, "rev-parse", "HEAD")
        if not _git(directory, "ls-files", "--", "."):
            return installed
        changes = _git(directory, "status", "--porcelain")
    except (OSError, subprocess.SubprocessError) as err:  # no git, not a work tree, too slow
        log.debug("no git commit for %s: %s", directory, err)
        return installed
    return {"commit": commit, "dirty": bool(changes), "version": None}


def _git(directory: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=directory, capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=True
    )
    return done.stdout.strip()
