"""What the SLURM scheduler says: its limits, and the state of the tasks a sweep submitted.

Every query degrades to "unknown" (None or an empty mapping) when SLURM is absent
or does not answer, because the run store, not the scheduler, is the authority on
what is done: the scheduler only adds what the store cannot know (a task waiting
in the queue, a task that died before it could write a file).
"""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess
from typing import Iterable

QUERY_TIMEOUT_S = 30.0
# squeue's states of a task that has not ended, split by whether it holds resources yet
QUEUED_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "RESV_DEL_HOLD"})
RUNNING_STATES = frozenset({"RUNNING", "CONFIGURING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING"})


def _run(command: list[str]) -> str | None:
    """stdout of `command`, or None when it is not installed, fails or hangs."""
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def available() -> bool:
    """Whether a SLURM controller answers here."""
    return _run(["squeue", "-h", "-u", getpass.getuser(), "-o", "%i"]) is not None


def max_array_size() -> int | None:
    """The cluster's ``MaxArraySize`` (``scontrol show config``): an array may hold at most this many tasks."""
    out = _run(["scontrol", "show", "config"])
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out or "", re.MULTILINE)
    return int(match.group(1)) if match else None


def max_submit_jobs(qos: str | None = None) -> int | None:
    """The user's cap on jobs in the queue (``MaxSubmitJobs`` of their association, or ``MaxSubmitPU`` of
    `qos`), the smaller when both are set; None when neither is."""
    user = getpass.getuser()
    caps = _numbers(_run(["sacctmgr", "-nP", "show", "assoc", f"user={user}", "format=MaxSubmit"]))
    if qos:
        caps += _numbers(_run(["sacctmgr", "-nP", "show", "qos", qos, "format=MaxSubmitPU"]))
    return min(caps) if caps else None


def _numbers(out: str | None) -> list[int]:
    return [int(line) for line in (out or "").split() if line.strip().isdigit()]


def jobs_in_queue() -> int:
    """How many of the user's jobs (array tasks counted one by one) wait or run now."""
    out = _run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i"])
    return len((out or "").split())


def queue_states(task_ids: Iterable[str]) -> dict[str, str]:
    """``<job>_<task>`` -> squeue's state, for the given tasks that are still queued or running."""
    wanted = set(task_ids)
    if not wanted:
        return {}
    out = _run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"])
    states = {}
    for line in (out or "").splitlines():
        task_id, _, state = line.partition("|")
        if task_id in wanted:
            states[task_id] = state.strip()
    return states


def final_states(task_ids: Iterable[str]) -> dict[str, str]:
    """``<job>_<task>`` -> sacct's state (``COMPLETED``, ``FAILED``, ``CANCELLED``, ``TIMEOUT``...), for
    the given tasks the accounting database still knows."""
    wanted = set(task_ids)
    jobs = sorted({task.split("_")[0] for task in wanted})
    if not jobs:
        return {}
    out = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(jobs)])
    states = {}
    for line in (out or "").splitlines():
        task_id, _, state = line.partition("|")
        if task_id in wanted:
            states[task_id] = state.split()[0] if state.strip() else ""
    return states


def scheduled(state: str | None) -> str | None:
    """ "queued" or "running" for a task squeue still lists, None for one it does not."""
    if state in QUEUED_STATES:
        return "queued"
    if state in RUNNING_STATES:
        return "running"
    return None
