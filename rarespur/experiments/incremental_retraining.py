"""``experiment=incremental_retraining`` (docs/science.md#deletion): make the poisoned model forget by training on.

Builds on the finished ``train`` run of the same config (its parent; with parent=debias the ``debias``
run), removes the poisoned images and continues training with the parent's optimizer state and
objective (a debiasing method's second network, decoder and per-sample state, and its stopping rule
on the parent's held-out split), ``deletion.mode``: ``paper`` at the final learning
rate, ``restart_lr`` with the schedule started again. The record has the
model after, ``before.*`` (the parent) and, with ``deletion.compare_exact``,
``exact.*`` (``experiment=retrain_exact`` of the same config) side by side.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rarespur.config.schema import Field
from rarespur.errors import MissingFileError
from rarespur.experiments.deletion_steps import DELETION_SUMMARY, DeletionStart, deletion_record, start_deletion
from rarespur.experiments.deletion_steps import requires as deletion_requires
from rarespur.experiments.experiment import Experiment
from rarespur.experiments.steps import (
    check_deletion_start,
    fit_and_store,
    run_objective,
    train_settings,
    training_record,
)
from rarespur.methods.deletion.retraining import MODES, continuation_settings, final_lr
from rarespur.store.run_dir import FINAL_STATE, HISTORY, MODEL, TABLES, RunDir

log = logging.getLogger(__name__)

OWN_KEYS = ("deletion",)
FIELDS = {
    "deletion.mode": Field(str, choices=MODES),
    "deletion.epochs": Field(int, low=1, nullable=True, null_means="parent epochs + 1"),
    "deletion.compare_exact": Field(bool),
}
HISTORY_TABLE = "retraining_history"


def parent_final_state(start: DeletionStart) -> dict[str, Any]:
    """The parent's state after its last epoch (optimizer, schedule, generators).

    A train run that reused an identical finished model keeps no state of its
    own: it lives in the run named by ``model_trained_in``.
    """
    trained_in = start.parent_path.parent / start.parent_record.get("model_trained_in", start.parent_path.name)
    path = trained_in / FINAL_STATE
    if not path.exists():
        dirs = sorted({str(start.parent_path), str(trained_in)})
        raise MissingFileError(
            f"the parent train run has no optimizer state ({path} is missing; runs finished before "
            f"{FINAL_STATE} was kept lack it). Delete {' and '.join(dirs)} and launch again: the parent "
            "is then retrained with its optimizer state"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def continuation_epochs(cfg: dict[str, Any]) -> int:
    """``deletion.epochs`` if set, else the original's count: parent epochs + 1."""
    epochs = cfg["deletion"]["epochs"]
    return cfg["epochs"] + 1 if epochs is None else epochs


def check(cfg: dict[str, Any]) -> None:
    check_deletion_start(cfg)


def requires(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    return deletion_requires(cfg, OWN_KEYS, cfg["deletion"]["compare_exact"])


def run(cfg: dict[str, Any], run_dir: RunDir, parents: list[Path]) -> dict[str, Any]:
    """Load the parent, continue on the cleaned set, score before / after / exact."""
    deletion = cfg["deletion"]
    start = start_deletion(cfg, parents[0])
    epochs = continuation_epochs(cfg)
    parent_state = parent_final_state(start)
    settings = continuation_settings(train_settings(cfg), deletion["mode"], epochs, final_lr(parent_state))
    log.info(
        "incremental retraining (%s): %d more epochs on %d images, lr %.3g (%s)",
        deletion["mode"],
        epochs,
        len(start.clean_y),
        settings.lr,
        settings.lr_schedule,
    )
    objective = run_objective(cfg)
    positions = torch.from_numpy(np.searchsorted(start.trained, start.keep))
    state = {**parent_state, "objective": objective.restrict_state(parent_state.get("objective", {}), positions)}
    fit = fit_and_store(
        cfg,
        run_dir,
        start.model,
        start.clean_x,
        start.clean_y,
        settings=settings,
        start_from=state,
        objective=objective,
        validation=start.validation,
    )
    history = fit.history
    run_dir.write_table(HISTORY_TABLE, [{**row, "epoch_total": cfg["epochs"] + row["epoch"]} for row in history])
    return {
        **deletion_record(start, start.model, OWN_KEYS, parents[1] if deletion["compare_exact"] else None),
        **fit.summary,
        "continuation_epochs": epochs,
        "lr_first": history[0]["lr"],
        "lr_last": history[-1]["lr"],
        **training_record(history, start.removed, start.device),
    }


EXPERIMENT = Experiment(
    run,
    check,
    requires,
    FIELDS,
    summary_keys=DELETION_SUMMARY,
    debiased_parent=True,
    artifacts=(MODEL, HISTORY, f"{TABLES}/{HISTORY_TABLE}.csv"),
)
