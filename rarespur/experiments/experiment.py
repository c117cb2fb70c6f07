"""What an experiment type is: the contract every module of :mod:`rarespur.experiments` fills in.

A module that defines ``EXPERIMENT = Experiment(...)`` is the experiment of its own name
(``experiment=<module name>``, with ``conf/experiment/<module name>.yaml``); nothing else lists it.
An experiment kept outside the package names its object in its YAML
(``experiment: {name: toy, _target_: my_module.EXPERIMENT}``). Everything the launcher, the
packer, ``collect`` and the report need to know about a type is declared here, on its object, so
adding one is one module and one YAML (and, for its own figures, one report section).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rarespur.config.schema import Field
from rarespur.experiments.steps import check_train_config
from rarespur.store.run_dir import RunDir

# What the one-line summary after a run shows, when an experiment does not say otherwise.
SCORES = ("test_acc", "spurious_score", "spurious_test_acc", "baseline_score", "p_value")

Finish = Callable[[int, "dict[str, Any] | Exception"], None]
RunPack = Callable[[list[dict[str, Any]], list[RunDir], Finish], None]


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
    # a poisoned run's baseline is the same config with poison.count=0 (its own kind of run): `collect` fills
    # the baseline score and p-value of runs that finished before their clean twin
    clean_twin_baseline: bool = False
    # trains several configs of one pack together (pack.size): (configs, run dirs, finish(i, metrics or error));
    # None: every job runs alone
    run_pack: RunPack | None = None
    # record keys the one-line summary after a run shows
    summary_keys: tuple[str, ...] = SCORES
    # can build on a debiased model: with parent=debias (a `debias` node in the config) its parent is the debias
    # run of the same overrides instead of the train run, and any model it trains with the run's objective (not
    # its own, as XBL's) uses the debiasing method
    debiased_parent: bool = False
    # files every run of this type writes, besides the store's own (config, record, done): what a user or the
    # report may count on finding in its directory
    artifacts: tuple[str, ...] = ()

    def own_fields(self, cfg: dict[str, Any]) -> dict[str, Field]:
        return self.fields(cfg) if callable(self.fields) else self.fields
