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
import shlex
import time
from dataclasses import dataclass
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


class SlurmArrayLauncher(SlurmLauncher):
    """``submitit_slurm`` that submits a sweep as arrays the cluster accepts, records them, and may detach."""

    def __init__(self, **params: Any) -> None:
        own = {key: params.pop(key, None) for key in OWN_KEYS}
        super().__init__(**params)
        self.wait = True if own["wait"] is None else bool(own["wait"])
        self.max_array_size = own["max_array_size"]
        self.max_submit_jobs = own["max_submit_jobs"]
        self.progress_every_s = float(own["progress_every_s"] or 60.0)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Hydra's entry point (a sweeper that knows no run keys): submitted and waited for, unrecorded."""
        return self.launch_runs(job_overrides, [[] for _ in job_overrides], initial_job_idx)

    def launch_runs(
        self,
        job_overrides: Sequence[Sequence[str]],
        runs: Sequence[Sequence[tuple[str, str]]],
        initial_job_idx: int = 0,
    ) -> list[JobReturn]:
        """Submit `job_overrides` (with the (results_dir, run key) pairs each runs) as arrays; wait unless told not to."""
        from rarespur.launch import scheduler
        from rarespur.launch.arrays import describe_split, split_arrays

        assert self.config is not None
        started = time.perf_counter()
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).expanduser().resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        job_overrides, runs = list(job_overrides), list(runs)
        room = self._room(len(job_overrides))
        held_back = job_overrides[room:]
        job_overrides, runs = job_overrides[:room], runs[:room]
        cap = self.max_array_size or scheduler.max_array_size() or DEFAULT_MAX_ARRAY_SIZE
        parallelism = self.params.get("array_parallelism")
        plans = split_arrays(len(job_overrides), int(cap), parallelism)
        log.info("SLURM sweep in %s: %s", sweep_dir, describe_split(plans, parallelism, int(cap)))
        show_jobs(log, job_overrides, initial_job_idx)

        executor = make_executor(self._EXECUTOR, self.params)
        task = self._shared_task(sweep_dir)
        jobs: list[Any] = []
        array_ids: list[str] = []
        for plan in plans:
            after = array_ids[plan.after] if plan.after is not None else None
            chunk = range(plan.start, plan.stop)
            submitted = self._submit_array(
                executor,
                task, [job_overrides[i] for i in chunk], [runs[i] for i in chunk], initial_job_idx + plan.start,
                plan.throttle, after, sweep_dir,
            )  # fmt: skip
            array_ids.append(submitted[0].job_id.split("_")[0])
            jobs += submitted
            log.info(
                "array %s: jobs #%d-#%d, %d at once%s",
                array_ids[-1], initial_job_idx + plan.start, initial_job_idx + plan.stop - 1, plan.throttle,
                f", after array {after} ends" if after else "",
            )  # fmt: skip
        log.info(
            "all %d array(s) submitted in %.1f s: SLURM job id(s) %s",
            len(array_ids), time.perf_counter() - started, " ".join(array_ids),
        )  # fmt: skip
        if held_back:
            log.warning(
                "%d job(s) held back: the queue takes %d more of yours (MaxSubmitJobs). Run the same command again "
                "when it has room: jobs done, queued or running are not submitted again.",
                len(held_back), room,
            )  # fmt: skip
        log.info("follow the sweep with: %s", self.status_command(runs))
        if not self.wait:
            log.info("not waiting (hydra.launcher.wait=false): the jobs run on without this process")
            return [self._submitted_return(o, j.job_id) for o, j in zip(job_overrides, jobs)]
        self._watch(jobs, runs)
        return [job_return(job, overrides) for job, overrides in zip(jobs, job_overrides)]

    def _room(self, wanted: int) -> int:
        """How many jobs the queue takes now: all, unless the user's MaxSubmitJobs caps it."""
        from rarespur.launch import scheduler

        cap = self.max_submit_jobs or scheduler.max_submit_jobs(self.params.get("qos"))
        if not cap:
            return wanted
        return max(0, min(wanted, int(cap) - scheduler.jobs_in_queue()))

    def _shared_task(self, sweep_dir: Path) -> SharedLauncherTask:
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
        task: SharedLauncherTask,
        job_overrides: Sequence[Sequence[str]],
        runs: Sequence[Sequence[tuple[str, str]]],
        first_idx: int,
        throttle: int,
        after: str | None,
        sweep_dir: Path,
    ) -> list[Any]:
        from rarespur.launch.arrays import Submission, write_submission

        executor.update_parameters(
            slurm_array_parallelism=throttle, slurm_dependency=f"afterany:{after}" if after else None
        )
        params = [
            (list(overrides), "hydra.sweep.dir", first_idx + i, f"job_id_for_{first_idx + i}")
            for i, overrides in enumerate(job_overrides)
        ]
        jobs = executor.map_array(task, *zip(*params))
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
        stores = sorted({results_dir for job_runs in runs for results_dir, _ in job_runs}) or ["RESULTS_DIR"]
        words = ["python", "-m", "rarespur", "status", stores[0]]
        name = str(self.config.hydra.job.config_name)
        if name != "config":
            sources = [s for s in self.config.hydra.runtime.config_sources if s.provider == "command-line"]
            folder = Path(sources[0].path.removeprefix("file://")).resolve() if sources else None
            shipped = folder is None or folder == (CONF_DIR.parent / "sweeps").resolve()
            words += ["--sweep", name if shipped else str(folder / f"{name}.yaml")]
        words += list(self.config.hydra.overrides.task)
        return " ".join(shlex.quote(w) for w in words) + " --watch"

    def _watch(self, jobs: Sequence[Any], runs: Sequence[Sequence[tuple[str, str]]]) -> None:
        """Wait for every task to end, with one progress line (done / running / queued / failed, rate, ETA)."""
        from rarespur.launch.progress import Progress

        progress = Progress(sum(max(1, len(r)) for r in runs), "SLURM sweep", every_s=self.progress_every_s)
        while True:
            counts, ended = self._counts(jobs, runs)
            if ended:
                progress.close(counts)
                return
            progress.update(counts)
            time.sleep(POLL_S)

    def _counts(self, jobs: Sequence[Any], runs: Sequence[Sequence[tuple[str, str]]]) -> tuple[dict[str, int], bool]:
        """Models per state (the store for done, squeue for queued and running), and whether every task ended."""
        from rarespur.launch import scheduler
        from rarespur.store.run_dir import DONE

        queue = scheduler.queue_states(job.job_id for job in jobs)
        counts = {"done": 0, "running": 0, "queued": 0, "failed": 0}
        for job, job_runs in zip(jobs, runs):
            on_cluster = scheduler.scheduled(queue.get(job.job_id))
            for results_dir, key in job_runs or [("", "")]:
                if key and (Path(results_dir) / key / DONE).exists():
                    counts["done"] += 1
                elif on_cluster is not None:
                    counts[on_cluster] += 1
                elif job.done():
                    counts["failed"] += 1  # ended without its done marker
                else:
                    counts["queued"] += 1  # submitted, not yet in squeue's answer
        return counts, not queue and all(job.done() for job in jobs)

    def _submitted_return(self, overrides: Sequence[str], task_id: str) -> JobReturn:
        return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=f"SLURM task {task_id}")
