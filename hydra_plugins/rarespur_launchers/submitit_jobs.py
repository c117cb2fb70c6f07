"""What rarespur's launchers (the local pool and the SLURM arrays) share: the submitit executor built as
hydra-submitit-launcher builds it, a short job list for the log, and a job's JobReturn even when it died."""

import logging
from typing import Any, Sequence

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf

from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

JOBS_SHOWN = 5  # launcher jobs listed one per line at the start of a sweep; the rest are counted


def make_executor(executor_name: str, params: dict[str, Any]) -> Any:
    """submitit's executor (``local`` or ``slurm``) with the launcher's parameters, as
    ``BaseSubmititLauncher.launch`` maps them: its own keys plain, the others prefixed with the executor's name."""
    import submitit  # here: Hydra imports every plugin at start-up

    init_keys = {"max_num_timeout", "submitit_folder"}
    init = {f"{executor_name}_max_num_timeout": params["max_num_timeout"]} if "max_num_timeout" in params else {}
    executor = submitit.AutoExecutor(cluster=executor_name, folder=params["submitit_folder"], **init)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(
        **{k if k in base else f"{executor_name}_{k}": v for k, v in params.items() if k not in init_keys}
    )
    return executor


def show_jobs(log: logging.Logger, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> None:
    """The first few jobs, one line each, then how many more: a 10,000-job grid does not fill the log."""
    for i, overrides in enumerate(job_overrides[:JOBS_SHOWN]):
        log.info("\t#%d : %s", initial_job_idx + i, " ".join(filter_overrides(overrides)))
    if len(job_overrides) > JOBS_SHOWN:
        log.info("\t... and %d more job(s)", len(job_overrides) - JOBS_SHOWN)


def job_return(job: Any, overrides: Sequence[str], wait: bool = True) -> JobReturn:
    """The job's JobReturn; a job that died before writing one (killed, timed out, out of memory, scancel) gives
    a FAILED one that names its log, so the sweep reports it with the others instead of stopping. With
    `wait` false the job is known to have ended: a missing result is a failure at once (submitit would wait
    for it forever where sacct cannot tell it ended)."""
    try:
        if not wait and not job.paths.result_pickle.exists():
            raise RuntimeError("no result file")
        return job.results()[0]
    except Exception as err:  # submitit's UncompletedJobError, FailedJobError, an unreadable result file
        why = RuntimeError(f"job {job.job_id} ended without a result ({err}); log {job.paths.stdout}")
        return JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=why)
