"""Incremental retraining (docs/science.md#deletion): go on training the poisoned model on the cleaned set.

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

from dataclasses import replace
from typing import Any

from rarespur.engine.settings import TrainSettings

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
