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
from collections.abc import Iterator, Mapping
from typing import Any

from omegaconf import DictConfig

from rarespur.config.names import import_target
from rarespur.config.resolve import resolve
from rarespur.config.schema import check_fields
from rarespur.errors import ConfigError
from rarespur.experiments.experiment import Experiment
from rarespur.methods.regularizers import objective_class


class _Registry(Mapping[str, Experiment]):
    """The package's experiments by module name, each imported when first looked up.

    A job imports only the experiment it runs: importing all of them would load Captum, scikit-learn,
    SciPy and Matplotlib into every ``train`` job (seconds of fixed cost per job, benchmarks/bench_job.py).
    Every module of the package but the shared ones below defines ``EXPERIMENT``.
    """

    SHARED = frozenset({"experiment", "steps", "deletion_steps"})

    def __init__(self) -> None:
        self._names = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in self.SHARED)
        self._loaded: dict[str, Experiment] = {}

    def __getitem__(self, name: str) -> Experiment:
        if name not in self._loaded:
            if name not in self._names:
                raise KeyError(name)
            experiment = getattr(importlib.import_module(f"{__name__}.{name}"), "EXPERIMENT", None)
            if not isinstance(experiment, Experiment):
                raise TypeError(f"rarespur/experiments/{name}.py defines no EXPERIMENT (an Experiment object)")
            self._loaded[name] = experiment
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


EXPERIMENTS: Mapping[str, Experiment] = _Registry()


def get_experiment(node: dict[str, Any]) -> Experiment:
    """The experiment a config's ``experiment`` node names: one of this package's, or the object its
    ``_target_`` (``module.ATTRIBUTE``) points at, for experiments kept outside the package."""
    name, target = node["name"], node.get("_target_")
    if target is None:
        if name not in EXPERIMENTS:
            raise ConfigError(f"experiment={name} unknown; valid experiments: {', '.join(sorted(EXPERIMENTS))}")
        return EXPERIMENTS[name]
    if name in EXPERIMENTS:
        raise ConfigError(
            f"experiment={name} is a built-in experiment, and experiment._target_={target!r} names another one; "
            "give your experiment a name of its own (its runs would be taken for the built-in's)"
        )
    experiment = import_target("experiment", node, "an Experiment object", "my_package.my_experiment.EXPERIMENT")
    if not isinstance(experiment, Experiment):
        raise ConfigError(f"experiment._target_={target!r} is not a rarespur.experiments.experiment.Experiment")
    return experiment


def clean_twin_baselined() -> frozenset[str]:
    """The experiment types whose poisoned runs are compared with their clean twin (for ``collect``)."""
    return frozenset(name for name, experiment in EXPERIMENTS.items() if experiment.clean_twin_baseline)


def resolve_job(cfg: DictConfig | dict[str, Any]) -> tuple[dict[str, Any], Experiment]:
    """The job's resolved config (:func:`rarespur.config.resolve.resolve`) with its plug-ins' own keys checked too.

    The common keys are checked by ``resolve``, which imports no torch; the regularizer's keys and the
    experiment's are declared by their classes, so they are checked here, where those are imported.
    """
    resolved = resolve(cfg)
    own = objective_class(resolved["regularizer"]).FIELDS
    check_fields(resolved, {f"regularizer.{key}": field for key, field in own.items()})
    experiment = get_experiment(resolved["experiment"])
    if "debias" in resolved:
        _check_debias(resolved, experiment)
    check_fields(resolved, experiment.own_fields(resolved))
    return resolved, experiment


def _check_debias(resolved: dict[str, Any], experiment: Experiment) -> None:
    """A debiasing method in the config is used, never ignored: experiment=debias trains with it, and an
    experiment that builds on a trained model builds on the debias run of the same overrides (parent=debias)."""
    name, method = resolved["experiment"]["name"], resolved["debias"].get("name")
    if name != "debias" and not experiment.debiased_parent:
        able = ", ".join(sorted(n for n, e in EXPERIMENTS.items() if e.debiased_parent))
        raise ConfigError(
            f"debias={method} is set (by parent=debias or +debias), but experiment={name} cannot build on a debiased "
            f"model; train one with experiment=debias, or build on one with parent=debias in: {able}"
        )
    own = objective_class(resolved["debias"], "debias").FIELDS
    check_fields(resolved, {f"debias.{key}": field for key, field in own.items()})
