"""``hydra/launcher=rarespur_slurm`` (the conf/cluster/slurm_* presets): submitit_slurm for sweeps of any size.

Stock ``submitit_slurm`` submits a whole sweep as one ``--array=0-N%P``, which a cluster with
SLURM's default ``MaxArraySize`` (1001) refuses for any sweep of more than 1,001 jobs, and then
keeps the launching process alive, silent, until the last job ends. This launcher:

- cuts the sweep into arrays that fit (``max_array_size``, default: the cluster's ``MaxArraySize``)
  and keeps ``array_parallelism`` a bound on the whole sweep (:mod:`rarespur.launch.arrays`);
- submits every array before it waits for any, and no more jobs than the user's ``MaxSubmitJobs``
  leaves room for (the rest are named in one line: relaunch the same command to submit them);
- records which SLURM job and array task runs which run key (``.slurm/<job id>.json`` in the sweep
  and results directories), so ``python -m rarespur status`` shows queued and running tasks and a
  relaunch does not submit them twice (rarespur's sweeper leaves them out);
- with ``wait=false`` returns once everything is submitted, printing the job ids and the status
  command; otherwise shows one progress line while it waits.
"""

import logging
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus

from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from hydra_plugins.rarespur_launchers.submitit_jobs import job_return, make_executor, show_jobs

log = logging.getLogger(__name__)

DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's default, used when scontrol does not answer
POLL_S = 10.0  # how often a waiting launcher asks the store and the scheduler


@dataclass
class RarespurSlurmConf(SlurmQueueConf):  # typing's Optional: OmegaConf's structured configs read it
    _target_: str = "hydra_plugins.rarespur_launchers.slurm.SlurmArrayLauncher"
    wait: bool = True  # false: return once every array is submitted (follow with `python -m rarespur status`)
    max_array_size: Optional[int] = None  # noqa: UP045 -- tasks per array; None: the cluster's MaxArraySize
    max_submit_jobs: Optional[int] = None  # noqa: UP045 -- jobs in the queue at most; None: MaxSubmitJobs, if set
    progress_every_s: float = 60.0  # progress line interval when the log is not a terminal


ConfigStore.instance().store(group="hydra/launcher", name="rarespur_slurm", node=RarespurSlurmConf, provider="rarespur")

OWN_KEYS = ("wait", "max_array_size", "max_submit_jobs", "progress_every_s")


class SharedLauncherTask:
    """What each array task unpickles: the path of the launcher and Hydra's state, pickled once per sweep.

    The stock launcher pickles itself (the whole Hydra config and context) and Hydra's global state
    into every task's file: about 60 KB and 14 ms a task, two minutes for an 8,400-job grid. This
    stands in for it with a few bytes a task and loads the shared pickle when the task starts.
    """

    def __init__(self, shared: Path) -> None:
        self.shared = shared

    def __call__(self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str) -> JobReturn:
        import cloudpickle

        with open(self.shared, "rb") as file:
            launcher, singleton_state = cloudpickle.load(file)
        return launcher(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's requeue hook (time limit, preemption): run the same task again; it resumes from its checkpoint."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


@dataclass
class Submitted:
    """What one launch has submitted so far, and what waits for room in the queue (kept off the launcher,
    which every task unpickles)."""

    jobs: list[Any] = field(default_factory=list)  # submitit jobs, in launch order
    overrides: list[Sequence[str]] = field(default_factory=list)
    runs: list[Sequence[tuple[str, str]]] = field(default_factory=list)
    array_ids: list[str] = field(default_factory=list)  # the last batch's arrays (a next batch waits for them)
    pending: list[tuple[Sequence[str], Sequence[tuple[str, str]]]] = field(default_factory=list)
    next_idx: int = 0


class SlurmArrayLauncher(SlurmLauncher):
    """``submitit_slurm`` that submits a sweep as arrays the cluster accepts, records them, and may detach."""

    def __init__(self, **params: Any) -> None:
        defaults = RarespurSlurmConf()
        own = {key: params.pop(key, getattr(defaults, key)) for key in OWN_KEYS}
        super().__init__(**params)
        self.wait = bool(own["wait"])
        self.max_array_size, self.max_submit_jobs = own["max_array_size"], own["max_submit_jobs"]
        self.progress_every_s = float(own["progress_every_s"])
        _check_positive("max_array_size", self.max_array_size, "or null: the cluster's MaxArraySize")
        _check_positive("max_submit_jobs", self.max_submit_jobs, "or null: your MaxSubmitJobs, if any")
        _check_positive("array_parallelism", self.params.get("array_parallelism"), "tasks of the sweep at once")
        _check_positive("progress_every_s", self.progress_every_s, "seconds between progress lines in a log file")

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Hydra's entry point (a sweeper that knows no run keys): submitted and waited for, unrecorded."""
        return self.launch_runs(job_overrides, [[] for _ in job_overrides], initial_job_idx)

    def launch_runs(
        self,
        job_overrides: Sequence[Sequence[str]],
        runs: Sequence[Sequence[tuple[str, str]]],
        initial_job_idx: int = 0,
    ) -> list[JobReturn]:
        """Submit `job_overrides` (with the (results_dir, run key) pairs each runs) as arrays; wait unless told not to.

        Jobs the queue has no room for (MaxSubmitJobs) are submitted while waiting, as room frees up, each
        batch after the previous one (so ``array_parallelism`` still bounds the sweep); without waiting
        they are named, for a relaunch to submit.
        """
        assert self.config is not None
        started = time.perf_counter()
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).expanduser().resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        show_jobs(log, job_overrides, initial_job_idx)
        executor = make_executor(self._EXECUTOR, self.params)
        task = self._shared_task(sweep_dir)
        state = Submitted(pending=list(zip(job_overrides, runs)), next_idx=initial_job_idx)
        self._submit_room(state, executor, task, sweep_dir)
        log.info(
            "%d job(s) submitted in %.1f s: SLURM job id(s) %s",
            len(state.jobs), time.perf_counter() - started, " ".join(state.array_ids) or "none",
        )  # fmt: skip
        log.info("follow the sweep with: %s", self.status_command(runs))
        if not self.wait:
            if state.pending:
                log.warning(
                    "%d job(s) held back: your queue is full (MaxSubmitJobs). Run the same command again when it "
                    "has room: jobs done, queued or running are not submitted again.",
                    len(state.pending),
                )  # fmt: skip
            log.info("not waiting (hydra.launcher.wait=false): the jobs run on without this process")
            return [self._submitted_return(o, j.job_id) for o, j in zip(state.overrides, state.jobs)]
        self._watch(state, executor, task, sweep_dir, sum(max(1, len(r)) for r in runs))
        return [job_return(job, o, wait=False) for job, o in zip(state.jobs, state.overrides)]

    def _submit_room(self, state: Submitted, executor: Any, task: "SharedLauncherTask", sweep_dir: Path) -> None:
        """Submit as many pending jobs as the queue takes now, as arrays after the previous batch's."""
        from rarespur.launch import scheduler
        from rarespur.launch.arrays import describe_split, split_arrays

        room = self._room(len(state.pending))
        if room == 0:
            return
        batch, state.pending = state.pending[:room], state.pending[room:]
        cap = self.max_array_size or scheduler.max_array_size()
        if cap is None:
            cap = DEFAULT_MAX_ARRAY_SIZE
            log.warning("scontrol did not tell MaxArraySize: arrays of at most SLURM's default %d", cap)
        parallelism = self.params.get("array_parallelism")
        plans = split_arrays(len(batch), int(cap), parallelism)
        self._check_dependency(plans, state)
        log.info("SLURM sweep in %s: %s", sweep_dir, describe_split(plans, parallelism, int(cap)))
        previous, state.array_ids = state.array_ids, []
        for plan in plans:
            after = [state.array_ids[plan.after]] if plan.after is not None else previous
            chosen = [batch[i] for i in plan.jobs]
            jobs = self._submit_array(executor, task, chosen, state.next_idx, plan, after, sweep_dir)
            state.array_ids.append(jobs[0].job_id.split("_")[0])
            state.jobs += jobs
            state.overrides += [overrides for overrides, _ in chosen]
            state.runs += [job_runs for _, job_runs in chosen]
            log.info(
                "array %s: %d job(s), %d at once%s",
                state.array_ids[-1], plan.size, plan.throttle, f", after {' '.join(after)} end(s)" if after else "",
            )  # fmt: skip
            state.next_idx += plan.size

    def _check_dependency(self, plans: Sequence[Any], state: Submitted) -> None:
        """A dependency of the user's own would replace the one that chains the arrays: refuse, naming the fix."""
        from rarespur.errors import ConfigError

        own = (self.params.get("additional_parameters") or {}).get("dependency")
        if own and (state.array_ids or any(p.after is not None for p in plans)):
            raise ConfigError(
                f"hydra.launcher.additional_parameters.dependency={own}: this sweep's arrays wait for each other "
                "(--dependency=afterany) to keep array_parallelism a bound on the whole sweep; raise "
                "hydra.launcher.array_parallelism (or max_array_size) so that no array has to wait, or drop it"
            )

    def _room(self, wanted: int) -> int:
        """How many jobs the queue takes now: all, unless the user's MaxSubmitJobs caps it."""
        from rarespur.errors import SchedulerError
        from rarespur.launch import scheduler

        cap = self.max_submit_jobs or scheduler.max_submit_jobs(self.params.get("qos"))
        if not cap:
            return wanted
        queued = scheduler.jobs_in_queue()
        if queued is None:
            raise SchedulerError(f"squeue did not answer: cannot tell how many of MaxSubmitJobs={cap} are free")
        return max(0, min(wanted, int(cap) - queued))

    def _shared_task(self, sweep_dir: Path) -> "SharedLauncherTask":
        """Pickle this launcher and Hydra's state once, for every task of this launch."""
        import uuid

        import cloudpickle

        shared = sweep_dir / ".submitit" / f"launcher-{uuid.uuid4().hex[:12]}.pkl"
        shared.parent.mkdir(parents=True, exist_ok=True)
        with open(shared, "wb") as file:
            cloudpickle.dump((self, Singleton.get_state()), file)
        return SharedLauncherTask(shared)

    def _submit_array(
        self,
        executor: Any,
        task: "SharedLauncherTask",
        chosen: Sequence[tuple[Sequence[str], Sequence[tuple[str, str]]]],
        first_idx: int,
        plan: Any,
        after: Sequence[str],
        sweep_dir: Path,
    ) -> list[Any]:
        """Submit one array (its tasks numbered from `first_idx`) and record which task runs which run keys."""
        from rarespur.launch.arrays import Submission, write_submission

        executor.update_parameters(
            slurm_array_parallelism=plan.throttle, slurm_dependency=f"afterany:{':'.join(after)}" if after else None
        )
        params = [
            (list(overrides), "hydra.sweep.dir", first_idx + i, f"job_id_for_{first_idx + i}")
            for i, (overrides, _) in enumerate(chosen)
        ]
        jobs = executor.map_array(task, *zip(*params))
        runs = [job_runs for _, job_runs in chosen]
        submission = Submission(
            job_id=jobs[0].job_id.split("_")[0],
            submitted=time.time(),
            sweep_dir=str(sweep_dir),
            task_ids=[job.job_id for job in jobs],
            keys=[[key for _, key in job_runs] for job_runs in runs],
            logs=[str(job.paths.stdout) for job in jobs],
        )
        stores = sorted({results_dir for job_runs in runs for results_dir, _ in job_runs})
        write_submission(submission, [sweep_dir, *map(Path, stores)])
        return jobs

    def status_command(self, runs: Sequence[Sequence[tuple[str, str]]]) -> str:
        """The ``python -m rarespur status`` line that follows this sweep: its file and overrides, as launched."""
        from rarespur.config.resolve import CONF_DIR

        assert self.config is not None
        stores = sorted({results_dir for job_runs in runs for results_dir, _ in job_runs})
        words = ["python", "-m", "rarespur", "status", stores[0] if stores else str(self.config.results_dir)]
        name = str(self.config.hydra.job.config_name)
        if name != "config":
            sources = [s for s in self.config.hydra.runtime.config_sources if s.provider == "command-line"]
            folder = Path(sources[0].path.removeprefix("file://")).resolve() if sources else None
            shipped = folder is None or folder == (CONF_DIR.parent / "sweeps").resolve()
            words += ["--sweep", name if shipped else str(folder / f"{name}.yaml")]
        words += list(self.config.hydra.overrides.task)
        return " ".join(shlex.quote(w) for w in words) + " --watch"

    def _watch(self, state: Submitted, executor: Any, task: "SharedLauncherTask", sweep_dir: Path, total: int) -> None:
        """Wait for every task to end, submitting what was held back as room frees up, with one progress line."""
        from rarespur.launch.progress import Progress

        progress = Progress(total, "SLURM sweep", every_s=self.progress_every_s)
        gone: dict[str, int] = {}  # task id -> polls in a row squeue has not listed it (without its result)
        while True:
            if state.pending:
                self._submit_room(state, executor, task, sweep_dir)
            counts = self._counts(state, gone)
            if not state.pending and counts.get("running", 0) + counts.get("queued", 0) == 0:
                progress.close(counts)
                return
            progress.update(counts)
            time.sleep(POLL_S)

    def _counts(self, state: Submitted, gone: dict[str, int]) -> dict[str, int]:
        """Models per state: the store says done; squeue says queued or running; a task squeue no longer lists
        (two polls in a row, so a task between queue and start is not misread) ended: failed without its done
        marker. When squeue does not answer, submitit's own view of the task decides whether it ended."""
        from rarespur.launch import scheduler
        from rarespur.store.run_dir import DONE

        queue = scheduler.queue_states(job.job_id for job in state.jobs)
        counts = {"done": 0, "running": 0, "queued": len(state.pending), "failed": 0}
        for job, job_runs in zip(state.jobs, state.runs):
            listed = None if queue is None else scheduler.scheduled(queue.get(job.job_id))
            if queue is not None and listed is None:
                gone[job.job_id] = gone.get(job.job_id, 0) + 1
            else:
                gone.pop(job.job_id, None)
            ended = job.paths.result_pickle.exists() or (
                gone.get(job.job_id, 0) >= 2 if queue is not None else job.done()
            )
            for results_dir, key in job_runs or [("", "")]:
                if (Path(results_dir) / key / DONE).exists() if key else job.paths.result_pickle.exists():
                    counts["done"] += 1
                elif listed is not None:
                    counts[listed] += 1
                elif ended:
                    counts["failed"] += 1
                else:
                    counts["queued"] += 1  # submitted, not yet in squeue's answer
        return counts

    def _submitted_return(self, overrides: Sequence[str], task_id: str) -> JobReturn:
        return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=f"SLURM task {task_id}")


def _check_positive(key: str, value: Any, meaning: str) -> None:
    from rarespur.errors import ConfigError

    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
        raise ConfigError(f"hydra.launcher.{key}={value}: must be a positive number ({meaning})")
