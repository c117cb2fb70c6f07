"""Launchers for conf/cluster/ presets: submitit_local with one GPU per job.

Stock ``submitit_local`` gives every job of a sweep the same
``CUDA_VISIBLE_DEVICES`` (GPUs ``0..gpus_per_node-1``), so all jobs land on
GPU 0. :class:`LocalGpuLauncher` spreads them: the GPUs are those of the
launching shell (its ``CUDA_VISIBLE_DEVICES``, else every GPU torch sees),
cut into slots of ``gpus_per_node`` GPUs; the sweep runs in rounds of one job
per slot, and job ``k`` sees only slot ``k mod (number of slots)``.
"""
from __future__ import annotations

import logging
import os
from typing import Any, List, Sequence

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


class LocalGpuLauncher(LocalLauncher):
    """``submitit_local`` that gives every job its own GPU(s) and runs one job per GPU slot at a time."""

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

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Run the jobs in rounds of len(slots): at most one job per GPU slot at a time."""
        log.info("local_gpus: %d job(s) at a time, one per GPU slot %s", len(self.slots), self.slots)
        n = len(self.slots)
        returns: List[JobReturn] = []
        for start in range(0, len(job_overrides), n):
            returns += super().launch(job_overrides[start : start + n], initial_job_idx + start)
        return returns

    def __call__(
        self, sweep_overrides: List[str], job_dir_key: str, job_num: int, job_id: str, singleton_state: Any
    ) -> JobReturn:
        # runs inside the job process, before anything touches CUDA
        gpus = ",".join(self.slots[job_num % len(self.slots)])
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
        print(f"local_gpus: job {job_num} runs on GPU {gpus} (CUDA_VISIBLE_DEVICES={gpus})", flush=True)
        return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
