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
from torch import nn

from rarespur.train import EpochCallback, TrainSettings, train_model

log = logging.getLogger(__name__)

MODES = ("paper", "restart_lr")


def final_lr(state: dict[str, Any]) -> float:
    """The learning rate the parent's optimizer ended at (one value for all parameter groups)."""
    lrs = {float(group["lr"]) for group in state["optimizer"]["param_groups"]}
    if len(lrs) != 1:
        raise ValueError(f"the parent's optimizer has several learning rates {sorted(lrs)}; expected one")
    return lrs.pop()


def continuation_settings(settings: TrainSettings, mode: str, epochs: int, parent_lr: float) -> TrainSettings:
    """The parent's recipe for `epochs` more epochs, with the learning rate of `mode`."""
    settings = replace(settings, epochs=epochs)
    if mode == "paper":
        return replace(settings, lr=parent_lr, lr_schedule="constant")
    if mode == "restart_lr":
        return settings
    raise ValueError(f"deletion.mode={mode!r} unknown; valid: {', '.join(MODES)}")


def incremental_retrain(
    model: nn.Module,
    clean_x: torch.Tensor,
    clean_y: torch.Tensor,
    recipe: TrainSettings,
    parent_state: dict[str, Any],
    mode: str,
    epochs: int,
    checkpoint: Path | None = None,
    on_epoch: EpochCallback | None = None,
    checkpoint_every: int = 1,
) -> list[dict]:
    """Continue training `model` (the parent's weights) in place on the cleaned set from the parent's final
    optimizer state; returns the continuation's history.

    With `checkpoint`, an interrupted continuation resumes from its last epoch
    checkpoint (which then takes precedence over the parent's state).
    """
    settings = continuation_settings(recipe, mode, epochs, final_lr(parent_state))
    log.info(
        "incremental retraining (%s): %d more epochs on %d images, lr %.3g (%s)",
        mode,
        epochs,
        len(clean_y),
        settings.lr,
        settings.lr_schedule,
    )
    return train_model(
        model,
        clean_x,
        clean_y,
        settings,
        checkpoint=checkpoint,
        on_epoch=on_epoch,
        checkpoint_every=checkpoint_every,
        start_from=parent_state,
    )
