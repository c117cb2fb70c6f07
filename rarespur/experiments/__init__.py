"""Experiment types: ``experiment=<name>`` selects one; each wires the pipeline pieces.

An experiment is a function ``(resolved_config, run_dir, parents) -> record``
that returns the metrics of its one-row result; the runner adds config, timing
and versions and commits the record. Its ``check`` runs first, before the run
directory exists, so a config that cannot work fails without leaving anything
behind. Its ``requires`` names the runs it builds on (as configs); the runner
makes sure they are done and hands their directories over as ``parents``, so
no experiment runs another job itself. Its ``fields`` give the types and valid
ranges of its own config keys, checked by :func:`resolve_job` with the common
ones, so a bad value fails in ``run.py``, sweep expansion and ``status`` alike.
Adding one = one module + one entry here + one YAML in conf/experiment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from rarespur.config import resolve
from rarespur.errors import ConfigError
from rarespur.experiments import (
    group_influence,
    incremental_retraining,
    mem_inference,
    retrain_exact,
    sensitivity,
    train,
)
from rarespur.experiments.common import check_train_config
from rarespur.schema import Field, check_fields
from rarespur.store import RunDir


def no_parents(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    return []


@dataclass(frozen=True)
class Experiment:
    run: Callable[[dict[str, Any], RunDir, list[Path]], dict[str, Any]]
    check: Callable[[dict[str, Any]], None] = check_train_config
    requires: Callable[[dict[str, Any]], list[dict[str, Any]]] = no_parents
    fields: dict[str, Field] = field(default_factory=dict)


EXPERIMENTS: dict[str, Experiment] = {
    "train": Experiment(train.run),
    "mem_inference": Experiment(mem_inference.run, mem_inference.check, fields=mem_inference.FIELDS),
    "group_influence": Experiment(
        group_influence.run, group_influence.check, group_influence.requires, group_influence.FIELDS
    ),
    "incremental_retraining": Experiment(
        incremental_retraining.run,
        incremental_retraining.check,
        incremental_retraining.requires,
        incremental_retraining.FIELDS,
    ),
    "retrain_exact": Experiment(retrain_exact.run, retrain_exact.check),
    "sensitivity": Experiment(sensitivity.run, sensitivity.check, sensitivity.requires, sensitivity.FIELDS),
}


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ConfigError(f"experiment={name} unknown; valid experiments: {', '.join(sorted(EXPERIMENTS))}")
    return EXPERIMENTS[name]


def resolve_job(cfg: DictConfig | dict[str, Any]) -> tuple[dict[str, Any], Experiment]:
    """The job's resolved config (:func:`rarespur.config.resolve`) with its experiment's own keys checked too."""
    resolved = resolve(cfg)
    experiment = get_experiment(resolved["experiment"]["name"])
    check_fields(resolved, experiment.fields)
    return resolved, experiment
