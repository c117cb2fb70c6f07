"""Incremental retraining (SPEC 1.9): go on training the poisoned model on the cleaned set.

The paper reloads model AND optimizer state of the finished 70-epoch run and
calls ``fit`` again with ``epochs=140`` and no scheduler. Its loop runs
``range(start_epoch, epochs + 1)`` with the reloaded ``start_epoch`` = 70 (the
last epoch it finished), so it trains 71 more epochs, at the final, already
decayed learning rate. We match that count: by default the continuation is
``epochs + 1`` epochs (71 for the 70-epoch recipe; the original numbers them
70..140, we number them 1..71 and give ``epoch_total`` = 71..141 in the table).

Modes:
- ``paper``: the parent's optimizer state (momentum / Adam moments) and its
  final learning rate, held constant.
- ``restart_lr``: the same optimizer state, but the learning rate starts again
  at the recipe's initial value with the milestone schedule of the continuation length.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from rarespur.deletion.common import DeletionStart
from rarespur.errors import MissingFileError
from rarespur.experiments.common import train_settings
from rarespur.experiments.train import FINAL_STATE
from rarespur.train import EpochCallback, TrainSettings, train_model

log = logging.getLogger(__name__)

MODES = ("paper", "restart_lr")


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


def final_lr(state: dict[str, Any]) -> float:
    """The learning rate the parent's optimizer ended at (one value for all parameter groups)."""
    lrs = {float(group["lr"]) for group in state["optimizer"]["param_groups"]}
    if len(lrs) != 1:
        raise ValueError(f"the parent's optimizer has several learning rates {sorted(lrs)}; expected one")
    return lrs.pop()


def continuation_settings(cfg: dict[str, Any], mode: str, epochs: int, parent_lr: float) -> TrainSettings:
    """The parent's recipe for `epochs` more epochs, with the learning rate of `mode`."""
    settings = replace(train_settings(cfg), epochs=epochs)
    if mode == "paper":
        return replace(settings, lr=parent_lr, lr_schedule="constant")
    if mode == "restart_lr":
        return settings
    raise ValueError(f"deletion.mode={mode!r} unknown; valid: {', '.join(MODES)}")


def incremental_retrain(
    start: DeletionStart,
    mode: str,
    epochs: int,
    checkpoint: Path | None = None,
    on_epoch: EpochCallback | None = None,
    checkpoint_every: int = 1,
) -> list[dict]:
    """Continue training ``start.model`` in place on the cleaned set; returns the continuation's history.

    With `checkpoint`, an interrupted continuation resumes from its last epoch
    checkpoint (which then takes precedence over the parent's state).
    """
    state = parent_final_state(start)
    settings = continuation_settings(start.cfg, mode, epochs, final_lr(state))
    log.info(
        "incremental retraining (%s): %d more epochs on %d images, lr %.3g (%s)",
        mode, epochs, len(start.clean_y), settings.lr, settings.lr_schedule,
    )
    return train_model(
        start.model,
        start.clean_x,
        start.clean_y,
        settings,
        checkpoint=checkpoint,
        on_epoch=on_epoch,
        checkpoint_every=checkpoint_every,
        start_from=state,
    )
