"""Expand a sweep into its jobs without running them, exactly as ``run.py -m`` would.

Counting, ``status`` and ``--delete-incomplete`` must see the very jobs a
launch creates, so nothing here re-implements Hydra: the config search path
is the one ``run.py --config-dir sweeps`` builds, the job list is the
BasicSweeper's own product of ``hydra.sweeper.params`` and the command-line
overrides, and each job is composed by Hydra's config loader. A job's
run-store key is then the runner's: ``RunDir(results_dir, resolve(cfg)).key``.

Composing a job costs Hydra about 70 ms, too slow for grids of thousands, so
:meth:`Sweep.jobs` composes once per distinct set of config-group choices
(dataset, pattern, model, ...) and applies the remaining value overrides
with the loader's own override step, which is what a full composition does
after merging the defaults; :meth:`Sweep.compose` is the full, slow path the
tests check it against.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Sequence

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.core_plugins import basic_sweeper
from hydra._internal.defaults_list import Overrides
from hydra._internal.utils import create_config_search_path
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue

from rarespur.config.resolve import CONF_DIR, resolve
from rarespur.errors import MissingFileError
from rarespur.experiments import resolve_job
from rarespur.store.run_dir import RunDir

SWEEPS_DIR = CONF_DIR.parent / "sweeps"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
# rarespur's own (hydra_plugins.rarespur_sweeper): the basic sweeper's job list, launched in packs
SWEEPERS = (BASIC_SWEEPER, "hydra_plugins.rarespur_sweeper.RarespurSweeper")
PRIMARY = "config"  # run.py's config_name: what a sweep without a file starts from


@dataclass(frozen=True)
class Job:
    """One job of a sweep: its overrides (as Hydra launches it), resolved config and run directory."""

    overrides: tuple[str, ...]
    config: dict[str, Any]
    run: RunDir


def locate(sweep: str | Path) -> tuple[Path, str]:
    """(config dir, config name) of a sweep given as a name in sweeps/ or a path to a YAML file."""
    path = Path(sweep)
    if path.suffix == ".yaml" or path.parent != Path("."):
        path = path.expanduser().resolve()
        if not path.is_file():
            raise MissingFileError(f"sweep file {path} does not exist")
        return path.parent, path.stem
    if not (SWEEPS_DIR / f"{sweep}.yaml").is_file():
        names = ", ".join(sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml")))
        raise MissingFileError(f"no sweep named {sweep!r} in {SWEEPS_DIR}; valid names: {names}")
    return SWEEPS_DIR, str(sweep)


def _task_config(cfg: DictConfig) -> DictConfig:
    """`cfg` without its ``hydra`` node, as Hydra hands it to the task function."""
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _plain_set(override: Override) -> bool:
    """``key=value`` with a non-dict value: replaces exactly one node."""
    return not (
        override.is_add() or override.is_force_add() or override.is_delete() or isinstance(override.value(), dict)
    )


class Sweep:
    """The jobs of ``run.py -m [--config-dir DIR --config-name NAME] OVERRIDES``.

    `sweep` is a sweep file name in sweeps/ or a path to one; None means the
    plain ``run.py -m OVERRIDES`` sweep on conf/config.yaml.
    """

    def __init__(self, sweep: str | Path | None = None, overrides: Sequence[str] = ()):
        search_path = create_config_search_path(str(CONF_DIR))
        if sweep is None:
            self.config_name = PRIMARY
        else:
            config_dir, self.config_name = locate(sweep)
            search_path.prepend("command-line", f"file://{config_dir}")  # what --config-dir does
        self.loader = ConfigLoaderImpl(config_search_path=search_path)
        self.master = self.loader.load_configuration(self.config_name, list(overrides), RunMode.MULTIRUN)
        self._caches()

    @classmethod
    def of_loaded(cls, loader: ConfigLoaderImpl, master: DictConfig) -> Sweep:
        """The sweep a running multirun has loaded (its config loader and master config): what the sweeper
        plans with, so it resolves jobs exactly as its launcher will compose them."""
        sweep = cls.__new__(cls)
        sweep.config_name = master.hydra.job.config_name
        sweep.loader, sweep.master = loader, master
        sweep._caches()
        return sweep

    def _caches(self) -> None:
        self._parsed: dict[str, tuple[Override, bool]] = {}
        self._bases: dict[tuple[str, ...], DictConfig] = {}
        self._reused: dict[tuple[str, ...], tuple[tuple[str, ...], DictConfig]] = {}

    @cached_property
    def job_overrides(self) -> list[list[str]]:
        """Every job's override list, in launch order: BasicSweeper.sweep() up to the launch."""
        target = self.master.hydra.sweeper._target_
        if target not in SWEEPERS:
            raise ValueError(f"only Hydra's basic sweeper (or rarespur's) can be expanded, this sweep uses {target}")
        # Built here, not by Hydra's plugin loader, whose setup() would build the launcher too; the class
        # is looked up now because that loader's scan re-executes its module (a new class object).
        sweeper = basic_sweeper.BasicSweeper(max_batch_size=None, params=self.master.hydra.sweeper.params)
        arguments = sweeper._parse_config() + OmegaConf.to_container(self.master.hydra.overrides.task)
        parsed = OverridesParser.create(config_loader=self.loader).parse_overrides(arguments)
        return [job for batch in sweeper.split_arguments(parsed, None) for job in batch]

    def __len__(self) -> int:
        return len(self.job_overrides)

    def compose(self, job: Sequence[str]) -> DictConfig:
        """The config a job's task function gets, fully composed as the launcher does it (slow, exact)."""
        return _task_config(self.loader.load_sweep_config(self.master, list(job)))

    def jobs(self, results_dir: str | Path | None = None) -> Iterator[Job]:
        """Every job with its resolved config and run directory, in launch order.

        `results_dir` is where to look for the run directories; None means each
        job's own ``results_dir``, taken from the current directory like the runner does.
        """
        for job in self.job_overrides:
            resolved = self.resolved(job)
            where = results_dir if results_dir is not None else Path(resolved["results_dir"]).expanduser().resolve()
            yield Job(tuple(job), resolved, RunDir(where, resolved))

    def resolved(self, job: Sequence[str]) -> dict[str, Any]:
        """The job's resolved and checked config (:func:`rarespur.experiments.resolve_job`), fast; equal to
        resolving :meth:`compose`."""
        try:
            return resolve_job(self._container(job))[0]
        except ValueError as err:
            raise ValueError(f"job {' '.join(job)}: {err}") from err

    def resolved_here(self, job: Sequence[str]) -> dict[str, Any]:
        """:meth:`resolved` with ``results_dir`` made absolute from the current directory, as the runner does."""
        resolved = self.resolved(job)
        resolved["results_dir"] = str(Path(resolved["results_dir"]).expanduser().resolve())
        return resolved

    def check_composes(self, jobs: Sequence[Sequence[str]]) -> None:
        """Compose one job of each kind (the same config-group choices and keys), as Hydra's launch would: a
        job that cannot compose fails the sweep before any job starts, at one composition per kind."""
        seen = set()
        for job in jobs:
            kind = tuple(self._kind(line) for line in job)
            if kind not in seen:
                seen.add(kind)
                self.compose(job)

    def _kind(self, line: str) -> str:
        """A value override by its key alone; a config-group choice as it is."""
        override, is_value = self._classify(line)
        return override.key_or_group if is_value else line

    def _container(self, job: Sequence[str]) -> dict[str, Any]:
        """The job's config as a plain dict: compose once per set of group choices, then set values.

        The value overrides go through the loader's own override step, which is
        what a full composition does after merging the defaults. Jobs of one
        product that share their group choices set the same keys, so plain value
        sets (no ``+``, ``++``, ``~`` or dict merge) may reuse the previous job's
        copy: they overwrite all it changed. Anything else gets a fresh copy.
        """
        groups: list[str] = []
        values: list[Override] = []
        for line in job:
            override, is_value = self._classify(line)
            if is_value:
                values.append(override)
            else:
                groups.append(line)
        choice = tuple(groups)
        if choice not in self._bases:
            self._bases[choice] = self.compose(groups)
        keys = tuple(v.key_or_group for v in values)
        if all(_plain_set(v) for v in values):
            if self._reused.get(choice, (None,))[0] != keys:
                self._reused[choice] = (keys, copy.deepcopy(self._bases[choice]))
            cfg = self._reused[choice][1]
        else:
            cfg = copy.deepcopy(self._bases[choice])
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        try:
            return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        except MissingMandatoryValue:
            return resolve(cfg)  # raises its message naming every missing value

    def _classify(self, line: str) -> tuple[Override, bool]:
        """An override and whether it only sets a value (Hydra's own rule; ``hydra.*`` counts as a choice)."""
        if line not in self._parsed:
            override = OverridesParser.create().parse_override(line)
            is_value = bool(Overrides(self._repo, [override]).config_overrides)
            self._parsed[line] = override, is_value and not override.key_or_group.startswith("hydra.")
        return self._parsed[line]

    @cached_property
    def _repo(self) -> Any:
        """The config repository with the sweep's search path, as composition sees it."""
        task = OmegaConf.to_container(self.master.hydra.overrides.task)
        return self.loader._parse_overrides_and_create_caching_repo(self.config_name, task)[1]


def expand(
    sweeps: Sequence[str | Path] | None = None,
    overrides: Sequence[str] = (),
    results_dir: str | Path | None = None,
) -> list[Job]:
    """The jobs of one or more sweeps (the same overrides for each), one per run directory.

    Several sweep files can make up one study (e.g. mnist_arch + fashion_arch);
    a run directory shared by two jobs is listed once.
    """
    unique: dict[str, Job] = {}
    for sweep in sweeps or [None]:
        for job in Sweep(sweep, overrides).jobs(results_dir):
            unique.setdefault(job.run.key, job)
    return list(unique.values())
