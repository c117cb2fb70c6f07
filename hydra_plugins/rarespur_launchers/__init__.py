"""Launchers for conf/cluster/ presets: submitit_local, several jobs at a time, all of them run.

Both launchers run the whole sweep inside one ``launch()`` call as a pool of slots
(:class:`PoolLauncher`): a job starts as soon as any slot is free, so a long job
holds one slot while the short ones go through the others (no round waits for its
slowest job). The sweep is one batch, not ``hydra.sweeper.max_batch_size`` batches,
because Hydra's BasicSweeper raises as soon as a batch holds a failed job: with
several batches one failed job would stop every later batch from running. With one
batch, every job runs; the failed one leaves its error.txt (and no done marker) in
the store, the launcher names every failed job and its log at the end, and the
sweep exits non-zero once the sweeper reads the failed JobReturns.

While it waits, the pool writes a progress line (:mod:`rarespur.launch.progress`) to
stderr: done, running, queued and failed jobs, the rate and the ETA.

:class:`LocalGpuLauncher` (local_gpus): stock ``submitit_local`` gives every job
of a sweep the same ``CUDA_VISIBLE_DEVICES`` (GPUs ``0..gpus_per_node-1``), so all
jobs land on GPU 0. This one spreads them: the GPUs are those of the launching
shell (its ``CUDA_VISIBLE_DEVICES``, else every GPU torch sees), cut into slots of
``gpus_per_node`` GPUs; a job runs on the slot that was free when it started.

:class:`LocalCpuLauncher` (local_cpu): a pool of ``os.cpu_count() // cpus_per_task``
slots, each job hidden from every GPU and told (RARESPUR_THREADS) to use
``cpus_per_task`` torch threads, so that the jobs running at once share the cores
instead of each spinning an all-core thread pool.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher
from hydra_plugins.rarespur_launchers.submitit_jobs import job_return, make_executor, show_jobs

log = logging.getLogger(__name__)


def visible_gpus() -> list[str]:
    """GPU ids of this process: CUDA_VISIBLE_DEVICES when set, else 0..(torch's device count - 1)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


class InSlot:
    """What the pool submits: `launcher`'s job, run in pool slot `slot`.

    In the job process it calls ``launcher.enter_slot(slot, job_num)`` (e.g. to set
    CUDA_VISIBLE_DEVICES, before anything touches CUDA), then the launcher's own
    ``__call__``. Picklable (submitit pickles it into the job folder); ``checkpoint``
    resubmits this very wrapper, so a requeued job keeps its slot.
    """

    def __init__(self, launcher: PoolLauncher, slot: int) -> None:
        self.launcher = launcher
        self.slot = slot

    def __call__(
        self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str, singleton_state: Any
    ) -> JobReturn:
        self.launcher.enter_slot(self.slot, job_num)
        return self.launcher(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Resubmit this wrapper (same launcher, same slot) with the same arguments, as the launcher's own does."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


class PoolLauncher(LocalLauncher):
    """``submitit_local`` that runs a sweep's jobs in a pool of slots, inside one ``launch()``.

    A job is submitted (``executor.submit``) as soon as a slot is free, in job order,
    and the pool polls its jobs every :attr:`poll_s` seconds. A job gives its slot back
    once it has written its result (its process may take a second or two more to exit,
    tearing torch down) and its JobReturn is read once ``job.done()``. The sweeper hands
    over all jobs as one batch (no ``max_batch_size``), so a failed job does not keep
    the others from running: the sweeper only looks at the JobReturns, returned in
    job order, and raises for a failed one after the last job.
    Subclasses set ``slots`` (one label per slot) and ``name`` (for the log) in
    ``__init__``, and may override :meth:`enter_slot`.
    """

    name = "local"
    slots: list[Any] = [None]
    poll_s = 0.2
    free_on_result = True  # give a slot back when its job's result is written, before its process has exited

    def pool_note(self) -> str:
        """What a slot is, for the log line at the start of the sweep."""
        return ""

    def enter_slot(self, slot: int, job_num: int) -> None:
        """Runs in the job process, before the job: take slot `slot` (e.g. its GPUs). Default: nothing."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Run the jobs, each as soon as a slot is free; a failed job (a FAILED JobReturn) does not stop the others."""
        from rarespur.launch.progress import Progress  # here: Hydra imports every plugin at start-up

        assert self.config is not None
        n_jobs, n_slots = len(job_overrides), max(1, len(self.slots))
        assert n_jobs > 0
        executor = make_executor(self._EXECUTOR, self.params)
        log.info("%s: %d job(s) at a time%s, each as soon as one is free", self.name, n_slots, self.pool_note())
        log.info("Submitit '%s' sweep output dir : %s", self._EXECUTOR, self.config.hydra.sweep.dir)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        show_jobs(log, job_overrides, initial_job_idx)

        singleton_state = Singleton.get_state()
        returns: list[JobReturn | None] = [None] * n_jobs
        logs: dict[int, Path] = {}  # job index -> its log file
        running: dict[int, tuple[Any, int]] = {}  # job index -> (submitit job, its slot)
        exiting: dict[int, Any] = {}  # job index -> submitit job that gave its slot back, its process still exiting
        free = list(range(n_slots))
        queued = 0  # index of the next job to submit
        progress = Progress(n_jobs, label=self.name)

        def counts() -> dict[str, int]:
            finished = [r for r in returns if r is not None]
            failed = sum(r.status != JobStatus.COMPLETED for r in finished)
            return {
                "done": len(finished) - failed,
                "running": len(running) + len(exiting),
                "queued": n_jobs - queued,
                "failed": failed,
            }

        try:
            while queued < n_jobs or running or exiting:
                while free and queued < n_jobs:  # fill every free slot, in job order
                    slot, idx = free.pop(0), queued
                    args = (list(job_overrides[idx]), "hydra.sweep.dir", initial_job_idx + idx, f"job_id_for_{idx}")
                    job = executor.submit(InSlot(self, slot), *args, singleton_state)
                    running[idx], logs[idx] = (job, slot), Path(job.paths.stdout)
                    queued += 1
                for idx, (job, slot) in list(running.items()):
                    # a CPU slot is free once the job has written its result (only its process's exit is left);
                    # a GPU slot once the process is gone, since until then it holds its GPU memory
                    if (self.free_on_result and job.paths.result_pickle.exists()) or job.done():
                        exiting[idx] = running.pop(idx)[0]
                        free.append(slot)
                for idx, job in list(exiting.items()):
                    if job.done():
                        returns[idx] = job_return(job, job_overrides[idx])
                        del exiting[idx]
                if queued < n_jobs or running or exiting:
                    progress.update(counts())
                    if not (free and queued < n_jobs):
                        time.sleep(self.poll_s)
        finally:  # also on Ctrl-C: the last counts, and the terminal's line ended
            progress.close(counts())

        failed = [i for i, r in enumerate(returns) if r is not None and r.status != JobStatus.COMPLETED]
        if failed:
            log.error("%s: %d of %d job(s) failed:", self.name, len(failed), n_jobs)
            for i in failed:
                overrides = " ".join(filter_overrides(job_overrides[i]))
                log.error("\t#%d : %s (log: %s)", initial_job_idx + i, overrides, logs[i])
        return [r for r in returns if r is not None]


class LocalGpuLauncher(PoolLauncher):
    """``submitit_local`` that gives every job its own GPU(s): one job per GPU slot at a time, on the slot it found free."""

    name = "local_gpus"
    free_on_result = False  # the old process keeps its GPU memory until it exits

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        per_job = int(self.params.get("gpus_per_node") or 1)
        gpus = visible_gpus()
        self.slots = [gpus[i : i + per_job] for i in range(0, len(gpus) - per_job + 1, per_job)]
        if not self.slots:
            raise RuntimeError(
                f"local_gpus: {per_job} GPU(s) per job but the GPUs visible here are {gpus or 'none'} "
                "(CUDA_VISIBLE_DEVICES, else torch.cuda.device_count()); use +cluster=local_cpu for CPU jobs"
            )

    def pool_note(self) -> str:
        return f", one per GPU slot {self.slots}"

    def enter_slot(self, slot: int, job_num: int) -> None:
        # runs inside the job process, before anything touches CUDA
        gpus = ",".join(self.slots[slot])
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
        print(f"local_gpus: job {job_num} runs on GPU {gpus} (CUDA_VISIBLE_DEVICES={gpus})", flush=True)


class LocalCpuLauncher(PoolLauncher):
    """``submitit_local`` for CPU jobs: ``max(1, os.cpu_count() // cpus_per_task)`` jobs at a time, no GPU.

    ``cpus_per_task`` (the launcher's stock submitit field, default 1 here) is how
    many cores one job may use: its torch thread count (through RARESPUR_THREADS,
    read by rarespur.launch.runner) and the divisor of the cores of this machine. Raise it
    to run fewer jobs at once, each with more threads.
    """

    name = "local_cpu"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.cpus_per_task = max(1, int(self.params.get("cpus_per_task") or 1))
        self.slots = list(range(max(1, (os.cpu_count() or 1) // self.cpus_per_task)))

    def pool_note(self) -> str:
        return f", {self.cpus_per_task} CPU(s) each, of {os.cpu_count()}"

    def __call__(
        self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str, singleton_state: Any
    ) -> JobReturn:
        # runs inside the job process, before the job imports torch or sets its thread count
        os.environ["RARESPUR_THREADS"] = str(self.cpus_per_task)
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        print(f"local_cpu: job {job_num} runs on CPU with RARESPUR_THREADS={self.cpus_per_task}", flush=True)
        ret = super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
        torch = sys.modules.get("torch")  # what the job really used (OMP_NUM_THREADS, when set, wins)
        if torch is not None:
            print(f"local_cpu: job {job_num} ran with {torch.get_num_threads()} torch thread(s)", flush=True)
        return ret
