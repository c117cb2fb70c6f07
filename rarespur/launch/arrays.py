"""How a sweep becomes SLURM job arrays that a cluster with default limits accepts, and the record of them.

A cluster refuses an array of more than ``MaxArraySize`` tasks (1001 by default), so a
sweep of 8,400 jobs is cut into arrays of at most that many (:func:`split_arrays`).
``array_parallelism`` is a bound on the whole sweep, not on each array: the arrays are
laid in *lanes*, at most ``parallelism`` of them, whose throttles (``--array=...%p``)
add up to the bound. When there are more arrays than the bound allows lanes, an array
waits (``--dependency=afterany``) for the one before it in its lane, so no more than
``parallelism`` tasks ever run at once.

Every submitted array is written down as one JSON file (:class:`Submission`) in the
sweep directory and in each results directory it writes to (``.slurm/``), so that
``status`` and a relaunch know which SLURM job and array task runs which run key.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from rarespur.errors import SchedulerError, UserError
from rarespur.launch import scheduler
from rarespur.store.atomic import write_atomic
from rarespur.store.run_dir import RunDir

SUBMISSIONS = ".slurm"  # folder of a results (or sweep) directory holding one <job id>.json per array


@dataclass(frozen=True)
class ArrayPlan:
    """One array of a sweep: the launcher jobs it runs, ``throttle`` at once, after array ``after`` has ended."""

    jobs: range  # indices into the sweep's launcher jobs
    throttle: int
    after: int | None = None  # index of the array it waits for (afterany), None: starts at once

    @property
    def size(self) -> int:
        return len(self.jobs)


def split_arrays(n_jobs: int, max_array_size: int, parallelism: int | None) -> list[ArrayPlan]:
    """`n_jobs` in arrays of at most `max_array_size` tasks, at most `parallelism` (None: any number) running at once.

    The arrays share the bound evenly, so none of them holds slots the others could use:
    their number is a divisor of `parallelism` (each array then runs ``parallelism / arrays``
    at once) or, when even ``parallelism`` arrays of one running task each are too few to
    hold the jobs, a multiple of it (each lane of chained arrays then runs one task at a time).
    Jobs are dealt to the arrays in turn (job i to array i mod arrays), so each array gets a
    like share of the grid's long and short jobs and they end at about the same time.

    >>> [(a.size, a.throttle, a.after) for a in split_arrays(2500, 1001, 64)]
    [(625, 16, None), (625, 16, None), (625, 16, None), (625, 16, None)]
    >>> [(a.size, a.throttle, a.after) for a in split_arrays(7, 3, 2)]
    [(2, 1, None), (2, 1, None), (2, 1, 0), (1, 1, 1)]
    """
    if max_array_size < 1:
        raise ValueError(f"max_array_size must be at least 1, got {max_array_size}")
    if parallelism is not None and parallelism < 1:
        raise ValueError(f"parallelism must be at least 1 (or None: no bound), got {parallelism}")
    if n_jobs <= 0:
        return []
    fewest = -(-n_jobs // max_array_size)
    if parallelism is None:
        n_arrays, lanes = fewest, fewest
    elif fewest <= parallelism:
        n_arrays = next(k for k in range(fewest, parallelism + 1) if parallelism % k == 0)
        n_arrays = n_arrays if n_arrays <= n_jobs else fewest
        lanes = n_arrays
    else:
        n_arrays = min(-(-fewest // parallelism) * parallelism, n_jobs)
        lanes = parallelism
    plans = []
    for a in range(n_arrays):
        jobs = range(a, n_jobs, n_arrays)
        throttle = len(jobs) if parallelism is None else max(1, parallelism // lanes)
        plans.append(ArrayPlan(jobs, min(throttle, len(jobs)), a - lanes if a >= lanes else None))
    return plans


def describe_split(plans: Sequence[ArrayPlan], parallelism: int | None, max_array_size: int) -> str:
    """One line for the log: how the sweep was cut and chained."""
    n = sum(p.size for p in plans)
    chained = sum(p.after is not None for p in plans)
    sizes = sorted({p.size for p in plans})
    text = (
        f"{n} launcher job(s) in {len(plans)} array(s) of {'/'.join(map(str, sizes))} task(s) "
        f"(MaxArraySize {max_array_size})"
    )
    if parallelism:
        text += f", at most {parallelism} running at once: throttles {'+'.join(str(p.throttle) for p in plans[:8])}"
        text += "..." if len(plans) > 8 else ""
        if chained:
            text += f", {chained} array(s) wait for an earlier one (afterany)"
    return text


@dataclass(frozen=True)
class Submission:
    """One submitted array: SLURM's job id, and per array task its id, the run keys it runs and its log file."""

    job_id: str
    submitted: float
    sweep_dir: str
    task_ids: list[str]  # "<job>_<task>" (a lone job, which submitit submits as no array: "<job>")
    keys: list[list[str]]  # task index -> run keys (several for a pack)
    logs: list[str]  # task index -> its submitit log file

    def tasks(self) -> Iterator[tuple[str, str, str]]:
        """(run key, SLURM task id, log path) for every run of the array."""
        for task_id, keys, log in zip(self.task_ids, self.keys, self.logs):
            for key in keys:
                yield key, task_id, log


def write_submission(submission: Submission, folders: Sequence[Path]) -> None:
    """Record `submission` in each of `folders` (the sweep directory and the results directories)."""
    text = json.dumps(asdict(submission), indent=1)
    for folder in folders:
        (Path(folder) / SUBMISSIONS).mkdir(parents=True, exist_ok=True)
        write_atomic(Path(folder) / SUBMISSIONS / f"{submission.job_id}.json", text)


def read_submissions(folder: str | Path) -> list[Submission]:
    """Every array recorded in `folder` (a results or sweep directory), oldest first; unreadable files are skipped."""
    found = []
    for path in sorted((Path(folder) / SUBMISSIONS).glob("*.json")):
        try:
            found.append(Submission(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return sorted(found, key=lambda s: s.submitted)


@dataclass(frozen=True)
class Placement:
    """Where the scheduler was last asked to run a run key."""

    task_id: str  # "<job>_<task>"
    log: str
    submitted: float


def placements(folders: Sequence[str | Path]) -> dict[str, Placement]:
    """Run key -> its latest submission, over the records of `folders`."""
    latest: dict[str, Placement] = {}
    for folder in folders:
        for submission in read_submissions(folder):
            for key, task_id, log in submission.tasks():
                known = latest.get(key)
                if known is None or known.submitted <= submission.submitted:
                    latest[key] = Placement(task_id, log, submission.submitted)
    return latest


class QueueView:
    """The scheduler's view of the run keys of one or more results directories: which are queued or running.

    Built from the directories' submission records and one squeue call each, asked once.
    `strict` (a relaunch) refuses to guess when squeue does not answer, since guessing "nothing
    is queued" would submit every waiting job a second time; otherwise (status) the view is
    empty and :attr:`unanswered` names the directories it could not ask about.
    """

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.unanswered: list[str] = []
        self._known: dict[str, tuple[dict[str, Placement], dict[str, str]]] = {}

    def lookup(self, results_dir: str | Path, key: str) -> tuple[str | None, Placement | None]:
        """("queued" | "running" | None, the key's latest placement or None)."""
        folder = str(results_dir)
        if folder not in self._known:
            placed = placements([folder])
            states = scheduler.queue_states(p.task_id for p in placed.values())
            if states is None:
                if self.strict:
                    raise SchedulerError(
                        f"squeue did not answer, and {folder}/{SUBMISSIONS} records {len(placed)} run(s) submitted "
                        "earlier: cannot tell which still wait in the queue, so nothing is submitted (it could run "
                        "twice). Retry when squeue answers (check: squeue -u $USER)"
                    )
                self.unanswered.append(folder)
            self._known[folder] = placed, states or {}
        placed, states = self._known[folder]
        placement = placed.get(key)
        if placement is None:
            return None, None
        return scheduler.scheduled(states.get(placement.task_id)), placement

    def holds(self, results_dir: str | Path, key: str) -> bool:
        """Whether the scheduler still has this run key queued or running."""
        return self.lookup(results_dir, key)[0] is not None


def unsubmitted(
    jobs: Sequence[Sequence[str]], resolve: Callable[[Sequence[str]], dict[str, Any]], queue: QueueView
) -> tuple[list[list[str]], list[list[tuple[str, str]]], Counter]:
    """The jobs a (re)launch must submit, with their (results_dir, run key), and a count of those it leaves out:
    done runs (not corrupt ones: a relaunch runs those again) and runs the scheduler already holds. A job that
    does not resolve is submitted, to fail with its own message."""
    launches, runs, left_out = [], [], Counter()
    for job in jobs:
        try:
            resolved = resolve(job)
        except (UserError, ValueError):
            launches.append(list(job))
            runs.append([])
            continue
        run = RunDir(resolved["results_dir"], resolved)
        if finished(run):
            left_out["already done"] += 1
            continue
        if queue.holds(resolved["results_dir"], run.key):
            left_out["already queued or running on the cluster"] += 1
            continue
        launches.append(list(job))
        runs.append([(resolved["results_dir"], run.key)])
    return launches, runs, left_out


def finished(run: RunDir) -> bool:
    """Done and undamaged: nothing for a launch to do (a corrupt run is run again)."""
    return run.done and run.damage() is None


def held_by(queue: QueueView) -> Callable[[dict[str, Any]], bool]:
    """For :func:`rarespur.launch.pack_plan.plan_packs`: whether the scheduler already holds a resolved job."""

    def held(resolved: dict[str, Any]) -> bool:
        return queue.holds(resolved["results_dir"], RunDir(resolved["results_dir"], resolved).key)

    return held
