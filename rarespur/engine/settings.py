"""The training loop's settings, resolved from config: a module of its own so objectives can change them
(:meth:`rarespur.engine.objective.Objective.adjust`) without importing the loop."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainSettings:
    """Everything the loop needs besides model and data, resolved from config."""

    epochs: int = 70
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    augment: str = "none"
    noise_sigma: float = 0.0
    seed: int = 0
    # milestones (docs/science.md#training) | constant (continuing at an already decayed lr) | plateau (x0.1 when the
    # monitored validation value did not improve, SiH's ReduceLROnPlateau; needs validation data)
    lr_schedule: str = "milestones"
    early_stopping: int = 0  # with validation data: stop after this many epochs without a better one (0 = never)
    monitor: str = "val_acc"  # what early stopping and the plateau schedule watch: val_acc (higher) or val_loss
