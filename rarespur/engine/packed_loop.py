"""The training engine for K models of one shape at once (the paper's grids, docs/science.md#paper-grids, in GPU-hours).

A small model trained alone leaves a GPU idle between tiny kernels. Here K models
that share the recipe (architecture, optimizer, lr schedule, epochs, batch size,
clipping, augmentation) are stacked (``torch.func.stack_module_state``) and one
``vmap(functional_call)`` runs all of them on a [K, B, ...] batch. Nothing is
shared that would change a model's numbers:

- each model has its own generator, seeded with its own ``train.model_seed``, and
  draws its shuffling, augmentation and input noise from it in the order
  :func:`rarespur.engine.loop.train_model` does, so it sees exactly the batches it would
  see alone;
- the clean training set is stored once; each model adds only its poisoned rows,
  swapped into its batches by index;
- the loss is the sum of the per-model mean cross-entropies, so each model's
  gradient is its own; SGD and Adam are element-wise, and coupled weight decay is
  added per model (its own strength), so the stacked optimizer steps each model
  exactly as its own optimizer would;
- batch norm keeps per-model running statistics (the stacked buffers are updated
  in place under vmap).

Dropout draws its masks from torch's global generator under vmap (a different
mask per model, but not the masks a model alone would draw), so sweeps do not
pack models with dropout (:func:`rarespur.launch.pack_plan.why_not_packed`).

Every epoch each model's state is written to its own checkpoint in the format of
:func:`rarespur.engine.loop.train_model`, so a killed pack resumes where it stopped (in
any grouping, or a model alone), and a model that diverges, or whose checkpoint
cannot be resumed, is marked failed while the others go on.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from rarespur.engine.checkpoint import (
    divergence,
    load_checkpoint,
    save_checkpoint,
    save_final_state,
    set_global_rng,
    training_state,
)
from rarespur.engine.loop import EpochCallback, augment_batch, make_optimizer, make_scheduler
from rarespur.engine.settings import TrainSettings

log = logging.getLogger(__name__)

# On a CPU the stacked weights, gradients and optimizer state of many models outgrow the caches that one
# model's fit in: measured on 2 cores (LargeMLP, Adam, 10,000 MNIST images; benchmarks/bench_pack.py), 8 at
# once train 1.2-1.4x faster per model than one alone, 128 at once 0.6-0.9x. So a CPU trains 8 at a time.
CPU_AT_ONCE = 8

# What may differ between the models of one pack: each model draws from its own generator (seed), and
# weight decay and input noise are applied per model. Every other setting is the pack's.
PER_MODEL_SETTINGS = ("seed", "weight_decay", "noise_sigma")


@dataclass
class PackMember:
    """One model of a pack: its settings, its poisoned rows and where its state goes."""

    settings: TrainSettings
    poison_index: torch.Tensor  # training positions (long) whose image this model sees poisoned
    poison_x: torch.Tensor  # those images, poisoned (m x C x H x W), in the order of `poison_index`
    checkpoint: Path | None = None  # resume state, written every `checkpoint_every` epochs
    final_state: Path | None = None  # the state after the last epoch, less the weights (incremental retraining)
    on_epoch: EpochCallback | None = None


@dataclass
class PackOutcome:
    """What became of one model: its history, or the error that stopped it (the others went on)."""

    history: list[dict] = field(default_factory=list)
    error: Exception | None = None


def shared_settings(members: list[PackMember]) -> TrainSettings:
    """The recipe the models share; ValueError naming the setting when they do not share one."""
    first = members[0].settings
    for member in members[1:]:
        for name in first.__dataclass_fields__:
            if name not in PER_MODEL_SETTINGS and getattr(member.settings, name) != getattr(first, name):
                raise ValueError(
                    f"models of one pack must share train setting {name!r} "
                    f"({getattr(first, name)!r} vs {getattr(member.settings, name)!r})"
                )
    if first.early_stopping or first.lr_schedule == "plateau":
        raise ValueError("early stopping and the plateau schedule watch validation data: they are not packed")
    return first


def _member_state(
    k: int,
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    member: PackMember,
    history: list[dict],
) -> dict:
    """Model k's state, as :func:`rarespur.engine.loop.train_model` writes it for a model trained alone."""
    weights = {name: t[k].detach().clone() for name, t in {**params, **buffers}.items()}
    packed = optimizer.state_dict()
    state = {
        i: {key: (v[k].clone() if torch.is_tensor(v) and v.dim() > 0 else copy.deepcopy(v)) for key, v in s.items()}
        for i, s in packed["state"].items()
    }
    groups = [{**g, "weight_decay": member.settings.weight_decay} for g in packed["param_groups"]]
    optimizer_state = {"state": state, "param_groups": groups}
    return training_state(weights, {}, optimizer_state, scheduler.state_dict(), generator, history)


def _stack_optimizer_states(states: list[dict], optimizer: torch.optim.Optimizer) -> None:
    """Load the members' optimizer states (one model each) into the stacked optimizer."""
    first = states[0]
    stacked = {
        i: {
            key: torch.stack([s["state"][i][key] for s in states]) if torch.is_tensor(v) and v.dim() > 0 else v
            for key, v in entry.items()
        }
        for i, entry in first["state"].items()
    }
    groups = [{**g, "weight_decay": 0.0} for g in first["param_groups"]]
    optimizer.load_state_dict({"state": stacked, "param_groups": groups})


def _resume_state(member: PackMember, model: nn.Module, device: torch.device) -> dict | None:
    """The member's checkpoint with its weights loaded into `model` (None: none to resume from);
    ValueError when it cannot be resumed here, which fails that member alone."""
    if member.checkpoint is None:
        return None
    state = load_checkpoint(member.checkpoint, device)
    if state is None:
        return None
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as err:
        raise ValueError(
            f"checkpoint {member.checkpoint} does not match this model ({err}); delete it to train from scratch"
        ) from None
    return state


def train_packed(
    models: list[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    members: list[PackMember],
    checkpoint_every: int = 1,
    progress: Callable[[str], None] | None = None,
    at_once: int | None = None,
) -> list[PackOutcome]:
    """Train `models` (one per member, same architecture, on the device of `x`) in place, `at_once` at a time
    (None: all of them on a GPU, :data:`CPU_AT_ONCE` on a CPU).

    `x` (N x C x H x W) and `y` are the clean training set; member k trains on it with the
    images at ``poison_index`` replaced by its ``poison_x``. Members whose checkpoints stand
    at different epochs are trained in one pack per epoch, one pack after the other.
    Returns one outcome per member, in order; `progress` gets one line per pack epoch.
    """
    if len(models) != len(members) or not members:
        raise ValueError(f"{len(models)} models for {len(members)} pack members")
    shared_settings(members)
    outcomes = [PackOutcome() for _ in members]
    states: list[dict | None] = [None] * len(members)
    by_epoch: dict[int, list[int]] = {}
    for k, (member, model) in enumerate(zip(members, models)):
        try:
            states[k] = _resume_state(member, model, x.device)
        except ValueError as err:
            outcomes[k].error = err
            continue
        by_epoch.setdefault(len(states[k]["history"]) if states[k] else 0, []).append(k)
    if at_once is None:
        at_once = len(members) if x.device.type == "cuda" else CPU_AT_ONCE
    for epoch in sorted(by_epoch):
        starting = by_epoch[epoch]
        for i in range(0, len(starting), at_once):
            ks = starting[i : i + at_once]
            results = _train_pack(
                [models[k] for k in ks],
                x,
                y,
                [members[k] for k in ks],
                [states[k] for k in ks],
                checkpoint_every,
                progress,
            )
            for k, outcome in zip(ks, results):
                outcomes[k] = outcome
    return outcomes


def _train_pack(
    models: list[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    members: list[PackMember],
    states: list[dict | None],
    checkpoint_every: int,
    progress: Callable[[str], None] | None,
) -> list[PackOutcome]:
    """Train models that start at the same epoch (from scratch, or from their checkpoints, whose weights they
    already hold)."""
    pack = _Pack.stack(models, members, x)
    if states[0] is not None:
        pack.resume(states)
    poison_slot, bank = _poison_slots(members, len(x), x)
    s = members[0].settings
    for epoch in range(len(pack.histories[0]) + 1, s.epochs + 1):
        losses, accs, lr = pack.epoch(x, y, poison_slot, bank)
        pack.end_epoch(epoch, losses, accs, lr, checkpoint_every)
        alive = pack.alive
        if progress is not None and alive:
            mean_loss = sum(losses[k] for k in alive) / len(alive)
            mean_acc = sum(accs[k] for k in alive) / len(alive)
            progress(
                f"pack of {len(models)}: epoch {epoch}/{s.epochs}  mean train_loss {mean_loss:.4f}  "
                f"mean train_acc {mean_acc:.4f}  lr {lr:.2g}  ({len(alive)} training)"
            )
        if not alive:
            break
    return pack.finish(models)


@dataclass
class _Pack:
    """The stacked models of one pack and everything their training changes, one entry per model."""

    members: list[PackMember]
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    template: nn.Module  # the architecture on the meta device: functional_call runs the stacked weights in it
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generators: list[torch.Generator]
    histories: list[list[dict]]
    outcomes: list[PackOutcome]
    alive: list[int]

    @classmethod
    def stack(cls, models: list[nn.Module], members: list[PackMember], x: torch.Tensor) -> _Pack:
        s = members[0].settings
        params, buffers = stack_module_state(models)
        optimizer = make_optimizer(list(params.values()), replace(s, weight_decay=0.0))  # decay is per model
        generators = []
        for member in members:
            generators.append(torch.Generator(device=x.device))
            generators[-1].manual_seed(member.settings.seed)
        return cls(
            members,
            params,
            buffers,
            copy.deepcopy(models[0]).to("meta"),
            optimizer,
            make_scheduler(optimizer, s.epochs, s.lr_schedule, s.monitor),
            generators,
            [[] for _ in members],
            [PackOutcome() for _ in members],
            list(range(len(models))),
        )

    def resume(self, states: list[dict]) -> None:
        """Take up the members' checkpoints (their weights are in the stacked models already)."""
        try:
            _stack_optimizer_states([st["optimizer"] for st in states], self.optimizer)
            self.scheduler.load_state_dict(states[0]["scheduler"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise ValueError(
                f"the checkpoints of this pack ({self.members[0].checkpoint}, ...) do not match this model/optimizer "
                f"({err}); delete them to train from scratch"
            ) from None
        for generator, state in zip(self.generators, states):
            generator.set_state(state["generator"])
        set_global_rng(states[0]["global_rng"], self.generators[0].device)
        self.histories = [list(st["history"]) for st in states]
        log.info("resuming a pack of %d at epoch %d", len(states), len(self.histories[0]) + 1)

    def epoch(
        self, x: torch.Tensor, y: torch.Tensor, poison_slot: torch.Tensor, bank: torch.Tensor
    ) -> tuple[list[float], list[float], float]:
        """One pass of every model over its own shuffled, poisoned training set: losses, accuracies, lr."""
        s, device, n, K = self.members[0].settings, x.device, len(x), len(self.members)
        batched = vmap(self._forward, randomness="different")
        decay = torch.tensor([m.settings.weight_decay for m in self.members], device=device, dtype=x.dtype)
        decayed = any(m.settings.weight_decay for m in self.members)
        noisy = [k for k, m in enumerate(self.members) if m.settings.noise_sigma > 0]
        self.template.train()  # the mode functional_call runs the stacked models in (batch norm, dropout)
        params_list = list(self.params.values())
        orders = torch.stack([torch.randperm(n, generator=g, device=device) for g in self.generators])
        total_loss = torch.zeros(K, device=device, dtype=x.dtype)
        correct = torch.zeros(K, device=device, dtype=torch.long)
        lr = self.optimizer.param_groups[0]["lr"]
        for start in range(0, n, s.batch_size):
            idx = orders[:, start : start + s.batch_size]
            xb = _member_batches(x, idx, poison_slot, bank)
            if s.augment != "none":
                xb = torch.stack([augment_batch(xb[k], s.augment, self.generators[k]) for k in range(K)])
            if noisy:
                xb = xb.clone()
                for k in noisy:
                    sigma = self.members[k].settings.noise_sigma
                    xb[k] = xb[k] + sigma * torch.randn(xb[k].shape, generator=self.generators[k], device=device)
            yb = y[idx]
            for p in params_list:
                p.grad = None
            logits = batched(self.params, self.buffers, xb)
            per_model = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view(K, -1).mean(1)
            per_model.sum().backward()
            if s.grad_clip > 0:
                nn.utils.clip_grad_value_(params_list, s.grad_clip)
            if decayed:
                for p in params_list:
                    if p.grad is not None:  # as the optimizers skip a parameter without a gradient
                        p.grad.add_(p.detach() * decay.view(-1, *([1] * (p.dim() - 1))))
            self.optimizer.step()
            total_loss += per_model.detach() * idx.shape[1]
            correct += (logits.argmax(-1) == yb).sum(1)
        self.scheduler.step()
        losses = [t / n for t in total_loss.tolist()]  # divided in double precision, as train_model does
        return losses, [c / n for c in correct.tolist()], lr

    def _forward(self, p: dict, b: dict, xb: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template, (p, b), (xb,))

    def end_epoch(self, epoch: int, losses: list[float], accs: list[float], lr: float, checkpoint_every: int) -> None:
        """Fail the models that diverged; the others get their row and checkpoint, then their callback (every
        checkpoint of the epoch is written before anything else may stop the pack)."""
        for k in list(self.alive):
            diverged = divergence(losses[k], epoch, lr)
            if diverged is not None:
                self.outcomes[k].error = diverged
                self.alive.remove(k)
                continue
            self.histories[k].append({"epoch": epoch, "loss": losses[k], "acc": accs[k], "lr": lr})
            if self.members[k].checkpoint is not None and epoch % checkpoint_every == 0:
                save_checkpoint(self.members[k].checkpoint, self.state(k))
        for k in self.alive:
            if self.members[k].on_epoch is not None:
                self.members[k].on_epoch(self.histories[k][-1])

    def state(self, k: int) -> dict:
        return _member_state(
            k,
            self.params,
            self.buffers,
            self.optimizer,
            self.scheduler,
            self.generators[k],
            self.members[k],
            self.histories[k],
        )

    def finish(self, models: list[nn.Module]) -> list[PackOutcome]:
        """The surviving models get their trained weights back, their history and final state."""
        for k in self.alive:
            with torch.no_grad():
                models[k].load_state_dict({name: t[k] for name, t in {**self.params, **self.buffers}.items()})
            self.outcomes[k].history = self.histories[k]
            if self.members[k].final_state is not None:
                save_final_state(self.members[k].final_state, self.state(k))
        return self.outcomes


def _poison_slots(members: list[PackMember], n: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each model's poisoned rows are: slot[k, i] is the row of `bank` that replaces image i for model
    k (0 = keep the clean image; row 0 of the bank is a placeholder, so the swap needs no branch)."""
    slot = torch.zeros((len(members), n), dtype=torch.long, device=x.device)
    rows = [torch.zeros((1, *x.shape[1:]), dtype=x.dtype, device=x.device)]
    offset = 1
    for k, member in enumerate(members):
        m = len(member.poison_index)
        if m:
            slot[k, member.poison_index.to(x.device)] = torch.arange(offset, offset + m, device=x.device)
            rows.append(member.poison_x.to(device=x.device, dtype=x.dtype))
            offset += m
    return slot, torch.cat(rows)


def _member_batches(x: torch.Tensor, idx: torch.Tensor, slot: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """[K, B, C, H, W]: model k's images at positions idx[k], its poisoned rows swapped in (no host sync)."""
    clean = x[idx]
    rows = slot.gather(1, idx)
    swapped = rows > 0
    return torch.where(swapped.view(*swapped.shape, 1, 1, 1), bank[rows], clean)
