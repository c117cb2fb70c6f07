"""rarespur's sweeper (``hydra/sweeper=rarespur``, the default of conf/config.yaml): Hydra's basic sweeper
with packs and a fast start.

- ``pack.size=K`` (K > 1): the sweep's jobs that may train together (:mod:`rarespur.launch.pack_plan`)
  are grouped into packs of at most K, each launched as one job; jobs already done are
  not launched. ``pack.chain=K`` (K > 1): the jobs that still launch one by one run K to a launcher job,
  in turn in one process. ``pack.size=1 pack.chain=1`` (the default) launches every job, as Hydra's basic
  sweeper does.
- Before launching, the basic sweeper composes every job once to check that it composes
  (about 70 ms a job: ten minutes for an 8,400-job grid before the first job starts). Here a
  job is composed once per distinct set of config-group choices and keys; the others differ
  only in values, which each job checks when it starts (as every job also does here).
- A launcher that submits to a scheduler (``launch_runs``: the SLURM presets' arrays,
  ``hydra_plugins.rarespur_launchers.slurm``) gets every launch with the run keys it runs, and is not
  handed jobs that are done or that the scheduler already holds from an earlier launch
  (:mod:`rarespur.launch.arrays`), so a relaunch submits nothing twice.
- A failed job makes the sweep raise once its batch has ended, and Hydra calls ``on_multirun_end`` only
  after a sweep that returns; the sweeper calls it itself before the failure propagates, so a callback
  that reports the end of a sweep (``notify=apprise``, :mod:`rarespur.launch.notify`) hears of failed ones.

The job list is the basic sweeper's own (``split_arguments``), so ``rarespur status`` and
``--delete-incomplete`` (:mod:`rarespur.launch.sweep`) see the very jobs a launch runs.
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


@dataclass
class RarespurSweeperConf:  # typing's Optional: OmegaConf's structured configs read it, not every `X | None`
    _target_: str = "hydra_plugins.rarespur_sweeper.RarespurSweeper"
    max_batch_size: Optional[int] = None  # noqa: UP045
    params: Optional[Dict[str, str]] = None  # noqa: UP045, UP006


ConfigStore.instance().store(group="hydra/sweeper", name="rarespur", node=RarespurSweeperConf, provider="rarespur")


class RarespurSweeper(BasicSweeper):
    """The basic sweeper's jobs, packed by ``pack.size`` and checked by one composition per kind of job."""

    def sweep(self, arguments: list[str]) -> Any:
        # here, not at import: Hydra imports every plugin at start-up
        from rarespur.errors import ConfigError
        from rarespur.launch.arrays import QueueView, held_by, unsubmitted
        from rarespur.launch.pack_plan import plan_packs
        from rarespur.launch.sweep import Sweep

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        started = time.perf_counter()
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        parsed = parser.parse_overrides(self._parse_config() + list(arguments))
        jobs = [job for batch in self.split_arguments(parsed, None) for job in batch]
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).expanduser().resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        expansion = Sweep.of_loaded(self.hydra_context.config_loader, self.config)
        size = int(OmegaConf.select(self.config, "pack.size", default=1) or 1)
        chain = int(OmegaConf.select(self.config, "pack.chain", default=1))
        for key, value in (("pack.size", size), ("pack.chain", chain)):
            if value < 1:
                raise ConfigError(f"{key}={value}: a launcher job runs at least one job; set {key} to 1 or more")
        # a launcher that submits to a scheduler (SLURM arrays) is told each launch's run keys, and is
        # not handed what is done or what the scheduler already holds from an earlier launch
        submits = hasattr(self.launcher, "launch_runs")
        queue = QueueView(strict=True) if submits else None
        runs: list = []
        if size > 1 or chain > 1:
            plan = plan_packs(jobs, expansion.resolved_here, size, sweep_dir / "packs", queue and held_by(queue), chain)
            log.info(plan.describe(size, chain))
            launches, runs = plan.launches, plan.runs
        else:
            expansion.check_composes(jobs)
            launches = jobs
            if queue is not None:
                launches, runs, left_out = unsubmitted(jobs, expansion.resolved_here, queue)
                for why, count in left_out.items():
                    log.info("%d job(s) %s: not submitted again", count, why)
        log.info("%d job(s) planned in %.1f s", len(launches), time.perf_counter() - started)
        try:
            return self._launch(launches, runs, submits)
        except Exception:
            # Hydra calls on_multirun_end only when sweep() returns, so a sweep with a failed job would end
            # unannounced (notify=apprise sends nothing): call it here, once, before the failure propagates.
            self.hydra_context.callbacks.on_multirun_end(
                config=self.config, config_name=self.config.hydra.job.config_name
            )
            raise

    def _launch(self, launches: list, runs: list, submits: bool) -> Any:
        """Launch the planned jobs; raises for a failed one once its batch (or every array) has ended."""
        assert self.launcher is not None
        if submits:
            results = self.launcher.launch_runs(launches, runs) if launches else []
            for result in results:
                _ = result.return_value  # raises for a failed job, once every array has ended
            return [results]
        self.overrides = list(self.split_overrides_to_chunks(launches, self.max_batch_size)) if launches else []
        returns = []
        initial_job_idx = 0
        for batch in self.overrides:
            results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
            for result in results:
                _ = result.return_value  # raises for a failed job, after the whole batch has run
            initial_job_idx += len(batch)
            returns.append(results)
        return returns
