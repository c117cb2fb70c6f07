"""What every debiasing method shares: its training protocol and, where it has one, a biased model."""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import nn

from rarespur.config.schema import Field, count
from rarespur.engine.objective import Objective
from rarespur.engine.settings import TrainSettings
from rarespur.methods.debias.visualize import BiasSwap


class Debiaser(Objective):
    """A debiasing method: plain cross-entropy here (the vanilla baseline); subclasses add a biased model.

    The protocol keys say how the method is trained: ``val_fraction`` of the training set held out as a
    biased validation split (0 = train on everything, as the authors' vanilla and LfF runs), early stopping
    after ``early_stopping`` epochs without a better ``monitor`` value, and ``lr_schedule`` (SiH: plateau).
    """

    name = "vanilla"
    FIELDS: dict[str, Field] = {
        "val_fraction": Field(float, low=0, high=0.5),
        "early_stopping": count(),
        "monitor": Field(str, choices=("val_acc", "val_loss")),
        "lr_schedule": Field(str, choices=("constant", "plateau", "milestones")),
    }

    def __init__(
        self,
        val_fraction: float = 0.0,
        early_stopping: int = 0,
        monitor: str = "val_acc",
        lr_schedule: str = "constant",
    ) -> None:
        self.val_fraction = val_fraction
        self.early_stopping = early_stopping
        self.monitor = monitor
        self.lr_schedule = lr_schedule
        self.bias_model: nn.Module | None = None  # the method's biased classifier, if it trains one

    def needs_validation(self) -> bool:
        return bool(self.early_stopping) or self.lr_schedule == "plateau"

    def adjust(self, settings: TrainSettings) -> TrainSettings:
        return replace(settings, early_stopping=self.early_stopping, monitor=self.monitor, lr_schedule=self.lr_schedule)

    def modules(self) -> dict[str, nn.Module]:
        return {"bias_model": self.bias_model} if self.bias_model is not None else {}

    def bias_swap(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, per_class: int, seed: int
    ) -> BiasSwap | None:
        """What the learned bias looks like, for methods that can draw it (SiH decodes a moved bias latent);
        None for the others."""
        return None


def fresh_copy(model: nn.Module) -> nn.Module:
    """A network of `model`'s architecture with its own initialization, drawn from torch's generator."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for module in twin.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return twin
