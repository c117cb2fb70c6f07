"""What a training step minimizes: the plug-in point of the training loop.

The loop in :mod:`rarespur.engine.loop` owns everything a method should not have to
write again (tensors on the device, batches by index, the per-model generator,
checkpoints and exact resume, early stopping, the heartbeat); an
:class:`Objective` owns the step's loss. Cross-entropy is the default. A
method that needs more (a decoder, a second network, an explanation penalty,
per-sample gradient clipping) subclasses :class:`Objective`, and its extra
modules, optimizer parameter groups, state and per-epoch metrics are trained,
checkpointed and resumed with the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer

from rarespur.config.schema import Field
from rarespur.engine.settings import TrainSettings


@dataclass
class StepOutput:
    loss: torch.Tensor  # the scalar the optimizer minimizes
    logits: torch.Tensor  # the classifier's logits on the batch, for the epoch's training accuracy


# What an objective may change about training besides the settings: a pack of models runs none of these.
_OWN_TRAINING = (
    "step",
    "setup",
    "wrap_optimizer",
    "modules",
    "parameter_groups",
    "end_epoch",
    "end_training",
    "state_dict",
    "predict",
    "summary",
)


class Objective:
    """Cross-entropy on the model's logits; subclasses change what a step computes.

    A regularizer of the config is an objective: ``conf/regularizer/<name>.yaml`` names its class in
    ``_target_`` and its other keys (but ``name``) are the constructor's arguments (see
    :mod:`rarespur.methods.regularizers`).
    """

    name = "cross_entropy"
    # Types and valid ranges of the regularizer's own keys (besides ``strength``, common to all), by key under
    # ``regularizer.``: checked when the config is resolved, so a bad value fails before any run directory.
    FIELDS: dict[str, Field] = {}

    @classmethod
    def why_not_packed(cls) -> str | None:
        """Why this objective cannot train in a pack of models (None: it can).

        The pack engine (:mod:`rarespur.engine.packed_loop`) runs cross-entropy with the settings
        :meth:`adjust` gives each model, so an objective that only adjusts settings packs
        without code of its own; one with its own step, modules or optimizer runs one per job.
        """
        own = [name for name in _OWN_TRAINING if getattr(cls, name) is not getattr(Objective, name)]
        return f"it has its own {', '.join(own)}, which the pack engine does not run" if own else None

    def adjust(self, settings: TrainSettings) -> TrainSettings:
        """The loop's settings as this objective trains with them (e.g. input noise, weight decay)."""
        return settings

    def check_model(self, model: nn.Module) -> None:
        """Fail (ConfigError) on a model this objective cannot train, before any run directory exists."""

    def setup(self, model: nn.Module, y: torch.Tensor) -> None:
        """Build what the method trains besides `model` (a second network, a decoder, per-sample state over
        the training labels `y`), before the loop collects :meth:`modules`. Called once per training, before
        a checkpoint is loaded, so anything drawn here from torch's generator is reproducible."""

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer, n: int, settings: TrainSettings) -> Optimizer:
        """The optimizer the loop steps: `optimizer` itself unless the method changes how gradients become
        updates (e.g. DP-SGD's per-sample clipping and noise); `n` is the number of training images."""
        return optimizer

    def end_training(self) -> None:
        """Called once after the last epoch (e.g. to take hooks off the model)."""

    def summary(self) -> dict[str, float]:
        """Fields for the run's record once training is over (e.g. the privacy budget spent)."""
        return {}

    def modules(self) -> dict[str, nn.Module]:
        """Extra modules trained with the model (moved to its device, in the optimizer and the checkpoint)."""
        return {}

    def parameter_groups(self, model: nn.Module) -> list[dict]:
        """The optimizer's parameter groups: the model's, then one group per extra module.

        A plain model keeps a single group, so optimizer states stored before objectives
        existed (incremental retraining continues from them) still load.
        """
        groups = [{"params": list(model.parameters())}]
        groups += [{"params": list(module.parameters())} for module in self.modules().values()]
        return groups

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> StepOutput:
        """The batch's loss; `index` holds the batch's positions in the training set (for per-sample state)."""
        logits = model(x)
        return StepOutput(F.cross_entropy(logits, y), logits)

    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The logits the method's classifier gives (what is validated and scored)."""
        return model(x)

    def validation_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample loss on held-out data (in evaluation mode): what ``monitor=val_loss`` early stopping and
        the plateau schedule watch. Cross-entropy of :meth:`predict` unless the method's own loss is the
        better criterion (SiH stops on its whole objective)."""
        return F.cross_entropy(self.predict(model, x), y, reduction="none")

    def end_epoch(self) -> dict[str, float]:
        """Extra metrics of the epoch just finished (they go into its history row); resets accumulators."""
        return {}

    def state_dict(self) -> dict:
        """Everything a resume needs besides model, optimizer and generators: the extra modules' weights
        and any state of the objective's own."""
        return {name: module.state_dict() for name, module in self.modules().items()}

    def load_state_dict(self, state: dict) -> None:
        for name, module in self.modules().items():
            module.load_state_dict(state[name])

    def restrict_state(self, state: dict, positions: torch.Tensor) -> dict:
        """`state` (:meth:`state_dict`) for going on with a subset of the training samples it was kept for:
        `positions` index them (a deletion continues without the removed images). Per-sample state keeps the
        entries of those positions; the rest is shared by all samples and stays."""
        return state

    def train(self, mode: bool = True) -> None:
        """Put the extra modules in training (or evaluation) mode along with the model."""
        for module in self.modules().values():
            module.train(mode)
