"""What the SLURM scheduler says: its limits, and the state of the tasks a sweep submitted.

Every query answers None ("unknown") when SLURM is absent or does not answer, never
an empty answer that would read as "nothing queued": the run store, not the scheduler,
is the authority on what is done, and the scheduler only adds what the store cannot
know (a task waiting in the queue, a task that died before it could write a file).
"""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess
from typing import Iterable

QUERY_TIMEOUT_S = 30.0
# squeue's states of a task that holds resources; any other state squeue lists is waiting (queued)
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


def jobs_in_queue() -> int | None:
    """How many of the user's jobs (array tasks counted one by one) wait or run now; None: squeue did not answer."""
    out = _run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i"])
    return None if out is None else len(out.split())


def queue_states(task_ids: Iterable[str]) -> dict[str, str] | None:
    """``<job>_<task>`` -> squeue's state, for the given tasks squeue still lists; None: squeue did not answer."""
    wanted = set(task_ids)
    if not wanted:
        return {}
    out = _run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"])
    if out is None:
        return None
    states = {}
    for line in out.splitlines():
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
    """How a task squeue still lists counts: "running" when it holds resources, "queued" in any other state
    (pending, requeued, held, suspended...); None for a task squeue does not list."""
    if state is None:
        return None
    return "running" if state in RUNNING_STATES else "queued"
