"""Experiment types: ``experiment=<name>`` selects one; each wires the pipeline pieces.

An experiment is an :class:`~rarespur.experiments.experiment.Experiment`
whose ``run(resolved_config, run_dir, parents)`` returns the metrics of its
one-row result; the runner adds config, timing and versions and commits the
record. Its ``check`` runs first, before the run
directory exists, so a config that cannot work fails without leaving anything
behind. Its ``requires`` names the runs it builds on (as configs); the runner
makes sure they are done and hands their directories over as ``parents``, so
no experiment runs another job itself. Its ``fields`` give the types and valid
ranges of its own config keys, checked by :func:`resolve_job` with the common
ones, so a bad value fails in ``run.py``, sweep expansion and ``status`` alike.
Adding one = one module here that defines ``EXPERIMENT`` (see
:mod:`rarespur.experiments.experiment`) + one YAML in conf/experiment, and, for
its own figures and tables, one module in :mod:`rarespur.report`.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from omegaconf import DictConfig

from rarespur.config import resolve
from rarespur.errors import ConfigError
from rarespur.experiments.experiment import Experiment
from rarespur.schema import check_fields


def _discover() -> dict[str, Experiment]:
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        experiment = getattr(importlib.import_module(f"{__name__}.{info.name}"), "EXPERIMENT", None)
        if isinstance(experiment, Experiment):
            found[info.name] = experiment
    return found


EXPERIMENTS: dict[str, Experiment] = _discover()


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ConfigError(f"experiment={name} unknown; valid experiments: {', '.join(sorted(EXPERIMENTS))}")
    return EXPERIMENTS[name]


def resolve_job(cfg: DictConfig | dict[str, Any]) -> tuple[dict[str, Any], Experiment]:
    """The job's resolved config (:func:`rarespur.config.resolve`) with its experiment's own keys checked too."""
    resolved = resolve(cfg)
    experiment = get_experiment(resolved["experiment"]["name"])
    check_fields(resolved, experiment.fields(resolved) if callable(experiment.fields) else experiment.fields)
    return resolved, experiment
