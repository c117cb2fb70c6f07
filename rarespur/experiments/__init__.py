"""Experiment types: ``experiment=<name>`` selects one; each wires the pipeline pieces.

An experiment is a function ``(resolved_config, run_dir) -> record`` that
returns the metrics of its one-row result; the runner adds config, timing and
versions and commits the record. Adding one = one module + one entry here +
one YAML in conf/experiment.
"""
from __future__ import annotations

from typing import Any, Callable

from rarespur.experiments import group_influence, incremental_retraining, retrain_exact, sensitivity, train
from rarespur.experiments import mem_inference
from rarespur.store import RunDir

Experiment = Callable[[dict[str, Any], RunDir], dict[str, Any]]

EXPERIMENTS: dict[str, Experiment] = {
    "train": train.run,
    "mem_inference": mem_inference.run,
    "group_influence": group_influence.run,
    "incremental_retraining": incremental_retraining.run,
    "retrain_exact": retrain_exact.run,
    "sensitivity": sensitivity.run,
}


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment={name} unknown; valid experiments: {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name]
