"""The training engine (docs/science.md#training): whole dataset as tensors on the device, batches by index.

One readable loop: shuffle with a seeded generator, take a batch by index,
augment or add noise on the tensor batch, let the objective compute the loss
(cross-entropy unless a method brings its own, see :mod:`rarespur.engine.objective`),
step, and at the end of the epoch step the milestone schedule, optionally
validate (early stopping restores the best epoch) and save a checkpoint to
resume from. There is no per-sample Python loading anywhere.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from rarespur.engine.checkpoint import (
    divergence,
    load_checkpoint,
    save_checkpoint,
    save_final_state,
    set_global_rng,
    training_state,
)
from rarespur.engine.objective import Objective
from rarespur.engine.settings import TrainSettings

log = logging.getLogger(__name__)

# (largest total epochs, milestones) from the original schedule; beyond the table: 60, 120.
_MILESTONE_TABLE = (
    (30, (15, 25)),
    (40, (20, 30)),
    (50, (25, 40)),
    (60, (30, 50)),
    (70, (40, 50, 60)),
    (80, (40, 60, 70)),
    (120, (50, 90, 110)),
    (140, (60, 100, 120)),
    (160, (40, 80, 120, 140)),
    (200, (80, 140, 180)),
)


def milestones(epochs: int) -> list[int]:
    """Epochs after which the learning rate is multiplied by 0.1, for a run of `epochs` epochs."""
    for limit, marks in _MILESTONE_TABLE:
        if epochs <= limit:
            return list(marks)
    return [60, 120]


def make_optimizer(params: Iterable, s: TrainSettings) -> torch.optim.Optimizer:
    """SGD or Adam with classic (coupled) L2 weight decay on all parameters (or parameter groups).

    Adam is torch's fused kernel where every parameter allows it (CPU and CUDA floats): one pass over each
    parameter in place of a dozen elementwise ones, the same update to float precision (benchmarks/bench_sih.py:
    a seventh of a SiH step on CPU)."""
    if s.optimizer == "sgd":
        return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    if s.optimizer == "adam":
        params = list(params)
        return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay, fused=_fusable(params) or None)
    raise ValueError(f"optimizer {s.optimizer!r} unknown; valid: sgd, adam")


def _fusable(params: list) -> bool:
    """Whether torch's fused Adam takes these parameters (or parameter groups): floats on the CPU or CUDA."""
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    return all(t.is_floating_point() and t.device.type in ("cpu", "cuda") for t in tensors)


Scheduler = torch.optim.lr_scheduler.MultiStepLR | torch.optim.lr_scheduler.ReduceLROnPlateau
SCHEDULES = ("milestones", "constant", "plateau")


def plateau_patience(early_stopping: int) -> int:
    """SiH's plateau schedule waits half as long as its early stopping, less one epoch (the authors'
    ``int(patience / 2) - 1``): 0 with patience 2 (their MLP VAE), 9 with patience 20 (their ResNet VAE)."""
    return max(early_stopping // 2 - 1, 0)


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    schedule: str = "milestones",
    monitor: str = "val_acc",
    patience: int = 0,
) -> Scheduler:
    """The milestone schedule for `epochs` epochs, one that never decays (`constant`), or (`plateau`) SiH's
    ReduceLROnPlateau: x0.1 once the monitored validation value has not improved for more than `patience`
    epochs.

    A constant schedule is still a scheduler, so checkpoints store and restore it like any other.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"lr_schedule {schedule!r} unknown; valid: {', '.join(SCHEDULES)}")
    if schedule == "plateau":
        mode = "max" if monitor == "val_acc" else "min"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=0.1, patience=patience, threshold=1e-5
        )
    marks = milestones(epochs) if schedule == "milestones" else []
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=marks, gamma=0.1)


def augment_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """`aug01`: random crop with `pad` px zero padding plus random horizontal flip, per image.

    Done as one gather on the whole batch: each image gets its own row and
    column index grid (shifted by the crop offset, reversed when flipped).
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=x.device)
    flip = torch.rand((n, 1), generator=generator, device=x.device) < 0.5
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = torch.where(flip, w - 1 - cols, cols) + dx
    rows = torch.arange(h, device=x.device).expand(n, h) + dy
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def quantize_uint8(x: torch.Tensor) -> torch.Tensor:
    """Round-trip through uint8 as torchvision's ``ToPILImage`` + ``ToTensor`` do: x * 255 in the batch's
    dtype, truncated (not rounded) to an integer, then / 255.

    The original's aug01 starts with ``ToPILImage``, so every training image it sees is a multiple of
    1/255 again; for the noise patterns (R1-R3) that drops the fraction of a level the noise added.
    Elementwise on the whole batch, on any device; images must be in [0, 1], as ours always are.
    """
    return torch.trunc(x * 255) / 255


def augment_batch(x: torch.Tensor, augment: str, generator: torch.Generator) -> torch.Tensor:
    """The training batch as `augment` (``train.augment``) transforms it.

    ``aug01``: crop and flip on the float images. ``aug01_pil``: the original's aug01, which quantizes
    to uint8 first (:func:`quantize_uint8`); crop, padding and flip commute with that, and both draw the
    same random numbers, so the two differ only in the quantization.
    """
    if augment == "none":
        return x
    if augment == "aug01_pil":
        x = quantize_uint8(x)
    return augment_crop_flip(x, generator)


EpochCallback = Callable[[dict], None]


def _continue_from(
    start_from: dict,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    s: TrainSettings,
) -> None:
    """Take over the objective's state (a debiasing method's second network and decoder), the optimizer
    state (momentum, Adam moments) and generators of a finished training.

    The learning rate is the settings' one, so the caller decides whether the
    continuation keeps the parent's final lr or starts the schedule again.
    """
    try:
        objective.load_state_dict(start_from.get("objective", {}))
        optimizer.load_state_dict(start_from["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise ValueError(
            f"the state to continue from does not match this model, objective or optimizer ({err})"
        ) from None
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = s.lr
    if start_from.get("device_type") == generator.device.type:
        generator.set_state(start_from["generator"])
        set_global_rng(start_from["global_rng"], generator.device)
    else:
        log.info("the state to continue from was written on %s: shuffling seeded afresh", start_from.get("device_type"))


class _Best:
    """Early stopping's memory: the best validation epoch so far, its monitored value and its weights."""

    def __init__(self, monitor: str = "val_acc") -> None:
        self.sign = 1.0 if monitor == "val_acc" else -1.0  # compared as sign * value, higher is better
        self.monitor = monitor
        self.epoch, self.value, self.weights = 0, -math.inf, None

    def update(self, epoch: int, row: dict, model: nn.Module, objective: Objective) -> None:
        value = self.sign * row[self.monitor]
        if value > self.value:
            self.epoch, self.value = epoch, value
            self.weights = copy.deepcopy({"model": model.state_dict(), "objective": objective.state_dict()})

    def restore(self, model: nn.Module, objective: Objective) -> None:
        model.load_state_dict(self.weights["model"])
        objective.load_state_dict(self.weights["objective"])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "value": self.value, "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.value, self.weights = state["epoch"], state.get("value", state.get("acc")), state["weights"]


@torch.inference_mode()
def _validate(
    model: nn.Module, objective: Objective, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048
) -> dict[str, float]:
    """The objective's validation loss and its classifier's accuracy on held-out data, in evaluation mode."""
    model.eval()
    objective.train(False)
    loss, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        loss += objective.validation_loss(model, xb, yb).sum()
        correct += (objective.predict(model, xb).argmax(1) == yb).sum()
    return {"val_loss": loss.item() / len(x), "val_acc": correct.item() / len(x)}


def train_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    s: TrainSettings,
    checkpoint: Path | None = None,
    on_epoch: EpochCallback | None = None,
    checkpoint_every: int = 1,
    final_state: Path | None = None,
    start_from: dict | None = None,
    objective: Objective | None = None,
    validation: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[dict]:
    """Train `model` in place on tensors `x` (N x C x H x W) and `y` already on the device.

    With `checkpoint`, state is saved every `checkpoint_every` epochs and a run that finds one
    continues from it (model, optimizer, schedule, shuffling and global generators), so a
    resumed run gives the same numbers as an uninterrupted one.
    With `final_state`, that state (less the weights, which the caller saves) is also written
    there after the last epoch, for experiments that continue training later (incremental
    retraining, docs/science.md#deletion).
    With `start_from` (such a final state; the model already holds its weights), training
    continues from its optimizer state and generators at learning rate ``s.lr`` with the
    schedule ``s.lr_schedule`` over ``s.epochs`` new epochs, numbered from 1.
    With `objective`, its step replaces plain cross-entropy (see :mod:`rarespur.engine.objective`).
    With `validation` = (x, y), every epoch is validated (val_loss, val_acc in its row); with
    ``s.early_stopping`` > 0 as well, training stops after that many epochs without a better
    ``s.monitor`` (validation accuracy, or the objective's validation loss) and the model (and
    objective) get the weights of the best epoch back; ``s.lr_schedule="plateau"`` decays on it too.
    Returns one dict per epoch: epoch, loss, acc, lr (+ the objective's metrics, + validation).
    """
    objective = objective if objective is not None else Objective()
    s = _checked(objective.adjust(s), validation)
    run = _setup(model, objective, y, s, start_from)
    if checkpoint is not None:
        _resume(run, checkpoint)
    for epoch in range(len(run.history) + 1, s.epochs + 1):
        if s.early_stopping and run.best.epoch and epoch - run.best.epoch > s.early_stopping:
            break  # a resumed run that had already stopped early
        row = _epoch(run, x, y, s, epoch)
        if validation is not None:
            row.update(_validate(model, objective, *validation))
            run.best.update(epoch, row, model, objective)
        _step_schedule(run.scheduler, row, s.monitor)
        run.history.append(row)
        if checkpoint is not None and epoch % checkpoint_every == 0:
            save_checkpoint(checkpoint, run.state())
        if on_epoch is not None:
            on_epoch(row)
        if s.early_stopping and epoch - run.best.epoch >= s.early_stopping:
            log.info("early stopping after epoch %d: no better %s since epoch %d", epoch, s.monitor, run.best.epoch)
            break
    if s.early_stopping and run.best.weights is not None:
        run.best.restore(model, objective)
    objective.end_training()
    if final_state is not None:
        save_final_state(final_state, run.state())
    return run.history


def _checked(s: TrainSettings, validation: tuple[torch.Tensor, torch.Tensor] | None) -> TrainSettings:
    if (s.early_stopping or s.lr_schedule == "plateau") and validation is None:
        raise ValueError("early stopping and the plateau schedule need validation data: pass validation=(x, y)")
    if s.monitor not in ("val_acc", "val_loss"):
        raise ValueError(f"monitor {s.monitor!r} unknown; valid: val_acc, val_loss")
    return s


@dataclass
class _Run:
    """The loop's moving parts: what one epoch changes and a checkpoint holds."""

    model: nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    generator: torch.Generator
    history: list[dict] = field(default_factory=list)
    best: _Best = field(default_factory=_Best)

    def state(self) -> dict:
        return training_state(
            self.model.state_dict(),
            self.objective.state_dict(),
            self.optimizer.state_dict(),
            self.scheduler.state_dict(),
            self.generator,
            self.history,
            self.best.state_dict(),
        )


def _setup(model: nn.Module, objective: Objective, y: torch.Tensor, s: TrainSettings, start_from: dict | None) -> _Run:
    """The objective's modules on the device, the optimizer it wraps, the seeded generator and the schedule
    (continuing a finished training's optimizer and generators when `start_from` is given)."""
    device = y.device
    objective.setup(model, y)
    for module in objective.modules().values():
        module.to(device)
    optimizer = objective.wrap_optimizer(make_optimizer(objective.parameter_groups(model), s), len(y), s)
    generator = torch.Generator(device=device)
    generator.manual_seed(s.seed)
    if start_from is not None:
        _continue_from(start_from, objective, optimizer, generator, s)
    scheduler = make_scheduler(optimizer, s.epochs, s.lr_schedule, s.monitor, plateau_patience(s.early_stopping))
    return _Run(model, objective, optimizer, scheduler, generator, best=_Best(s.monitor))


def _resume(run: _Run, checkpoint: Path) -> None:
    """Take up the checkpoint's state, if there is one to resume from."""
    state = load_checkpoint(checkpoint, run.generator.device)
    if state is None:
        return
    try:
        run.model.load_state_dict(state["model"])
        run.objective.load_state_dict(state.get("objective", {}))
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.generator.set_state(state["generator"])
        set_global_rng(state["global_rng"], run.generator.device)
    except (RuntimeError, ValueError, KeyError) as err:
        raise ValueError(
            f"checkpoint {checkpoint} does not match this model/optimizer ({err}); delete it to train from scratch"
        ) from None
    run.history = state["history"]
    if state.get("best"):
        run.best.load_state_dict(state["best"])
    log.info("resuming from %s at epoch %d", checkpoint, len(run.history) + 1)


def _epoch(run: _Run, x: torch.Tensor, y: torch.Tensor, s: TrainSettings, epoch: int) -> dict:
    """One pass over the shuffled training set; the epoch's row (a diverged loss raises TrainingDiverged)."""
    model, objective, optimizer, generator = run.model, run.objective, run.optimizer, run.generator
    device, n = x.device, len(x)
    model.train()
    objective.train()
    order = torch.randperm(n, generator=generator, device=device)
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    lr = optimizer.param_groups[0]["lr"]
    for start in range(0, n, s.batch_size):
        idx = order[start : start + s.batch_size]
        xb, yb = x[idx], y[idx]
        xb = augment_batch(xb, s.augment, generator)
        if s.noise_sigma > 0:
            xb = xb + s.noise_sigma * torch.randn(xb.shape, generator=generator, device=device)
        optimizer.zero_grad(set_to_none=True)
        out = objective.step(model, xb, yb, idx)
        out.loss.backward()
        if s.grad_clip > 0:
            nn.utils.clip_grad_value_(model.parameters(), s.grad_clip)
        optimizer.step()
        total_loss += out.loss.detach() * len(idx)
        correct += (out.logits.argmax(1) == yb).sum()
    row = {"epoch": epoch, "loss": total_loss.item() / n, "acc": correct.item() / n, "lr": lr, **objective.end_epoch()}
    diverged = divergence(row["loss"], epoch, lr)
    if diverged is not None:
        raise diverged
    return row


def _step_schedule(scheduler: Scheduler, row: dict, monitor: str) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(row[monitor])
    else:
        scheduler.step()
