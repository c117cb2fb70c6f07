"""Launchers for conf/cluster/ presets: submitit_local, several jobs at a time, all of them run.

Both launchers run the whole sweep inside one ``launch()`` call, in rounds of
``at_once`` jobs (:class:`RoundsLauncher`), instead of leaving the rounds to
``hydra.sweeper.max_batch_size``. Why: Hydra's BasicSweeper raises as soon as a
batch holds a failed job, so with several batches one failed job would stop every
later batch from running. With one batch, every job runs; the failed one leaves
its error.txt (and no done marker) in the store, and the sweep still exits
non-zero once the sweeper reads the failed JobReturn at the end.

:class:`LocalGpuLauncher` (local_gpus): stock ``submitit_local`` gives every job
of a sweep the same ``CUDA_VISIBLE_DEVICES`` (GPUs ``0..gpus_per_node-1``), so all
jobs land on GPU 0. This one spreads them: the GPUs are those of the launching
shell (its ``CUDA_VISIBLE_DEVICES``, else every GPU torch sees), cut into slots of
``gpus_per_node`` GPUs; a round is one job per slot, and job ``k`` sees only slot
``k mod (number of slots)``.

:class:`LocalCpuLauncher` (local_cpu): rounds of ``os.cpu_count() // cpus_per_task``
jobs, each hidden from every GPU and told (RARESPUR_THREADS) to use
``cpus_per_task`` torch threads, so that the jobs of a round share the cores
instead of each spinning an all-core thread pool.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Sequence

from hydra.core.utils import JobReturn

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher

log = logging.getLogger(__name__)


def visible_gpus() -> list[str]:
    """GPU ids of this process: CUDA_VISIBLE_DEVICES when set, else 0..(torch's device count - 1)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


class RoundsLauncher(LocalLauncher):
    """``submitit_local`` that runs a sweep's jobs ``at_once`` at a time, inside one ``launch()``.

    The sweeper hands over all jobs as one batch (no ``max_batch_size``), so a
    failed job does not keep the later rounds from running: the sweeper only looks
    at the JobReturns, and raises for the failed one, after the last round.
    Subclasses set ``at_once`` (and ``name``, for the log) in ``__init__``.
    """

    name = "local"
    at_once = 1

    def rounds_note(self) -> str:
        """What a round is, for the log line at the start of the sweep."""
        return ""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Run the jobs in rounds of ``at_once``; a failed job (a FAILED JobReturn) does not stop the next rounds."""
        n = max(1, int(self.at_once))
        log.info("%s: %d job(s) at a time%s", self.name, n, self.rounds_note())
        returns: list[JobReturn] = []
        for start in range(0, len(job_overrides), n):
            returns += super().launch(job_overrides[start : start + n], initial_job_idx + start)
        return returns


class LocalGpuLauncher(RoundsLauncher):
    """``submitit_local`` that gives every job its own GPU(s) and runs one job per GPU slot at a time."""

    name = "local_gpus"

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
        self.at_once = len(self.slots)

    def rounds_note(self) -> str:
        return f", one per GPU slot {self.slots}"

    def __call__(
        self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str, singleton_state: Any
    ) -> JobReturn:
        # runs inside the job process, before anything touches CUDA
        gpus = ",".join(self.slots[job_num % len(self.slots)])
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
        print(f"local_gpus: job {job_num} runs on GPU {gpus} (CUDA_VISIBLE_DEVICES={gpus})", flush=True)
        return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)


class LocalCpuLauncher(RoundsLauncher):
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
        self.at_once = max(1, (os.cpu_count() or 1) // self.cpus_per_task)

    def rounds_note(self) -> str:
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
