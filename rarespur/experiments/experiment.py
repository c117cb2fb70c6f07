"""What an experiment type is: the contract every module of :mod:`rarespur.experiments` fills in.

A module that defines ``EXPERIMENT = Experiment(...)`` is the experiment of its own name
(``experiment=<module name>``, with ``conf/experiment/<module name>.yaml``); nothing else lists it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rarespur.experiments.common import check_train_config
from rarespur.schema import Field
from rarespur.store import RunDir


def no_parents(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    return []


@dataclass(frozen=True)
class Experiment:
    # (resolved config, its run directory, the parents' run directories in `requires` order) -> record metrics
    run: Callable[[dict[str, Any], RunDir, list[Path]], dict[str, Any]]
    # fails on a config that cannot work, before the run directory exists (may load the data)
    check: Callable[[dict[str, Any]], None] = check_train_config
    # the configs of the runs this one builds on; the runner makes sure they are done first
    requires: Callable[[dict[str, Any]], list[dict[str, Any]]] = no_parents
    # types and valid ranges of the experiment's own config keys (dotted), checked when the config is resolved;
    # a function of the config where they depend on it (a method chosen in a config group has its own keys)
    fields: dict[str, Field] | Callable[[dict[str, Any]], dict[str, Field]] = field(default_factory=dict)
