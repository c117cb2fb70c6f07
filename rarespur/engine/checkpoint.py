"""The one checkpoint format of both loops, and the one check that stops a diverged model.

A model trained alone (:mod:`rarespur.engine.loop`) and a model of a pack
(:mod:`rarespur.engine.packed_loop`) write the same nine keys, so a killed pack
resumes in any grouping, or a model alone, and exactly where it stood: weights,
the objective's own modules, optimizer, schedule, shuffling generator, torch's
global generators (dropout), the device they belong to, the history so far and
early stopping's best epoch.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from rarespur.errors import TrainingDiverged
from rarespur.store.atomic import atomic_path
from rarespur.store.damaged import load_or_set_aside

NO_BEST = {"epoch": 0, "value": -math.inf, "weights": None}  # early stopping's memory when nothing is watched


def global_rng(device: torch.device) -> dict[str, torch.Tensor]:
    """torch's global generator(s): dropout draws from them, so a resume must restore them."""
    rng = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def set_global_rng(rng: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(rng["cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)


def training_state(
    model: dict,
    objective: dict,
    optimizer: dict,
    scheduler: dict,
    generator: torch.Generator,
    history: list[dict],
    best: dict = NO_BEST,
) -> dict:
    """Everything a later run needs to go on exactly where this one stands (state dicts, as saved)."""
    device = generator.device
    return {
        "model": model,
        "objective": objective,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "generator": generator.get_state(),
        "global_rng": global_rng(device),
        "device_type": device.type,
        "history": history,
        "best": best,
    }


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def save_final_state(path: Path, state: dict) -> None:
    """The state after the last epoch, for experiments that continue training later (incremental
    retraining); the weights are the caller's model.pt, so they are not stored twice."""
    save_checkpoint(path, {k: v for k, v in state.items() if k not in ("model", "best")})


def load_checkpoint(path: Path, device: torch.device) -> dict | None:
    """The checkpoint at `path` (None: none, or unreadable and set aside); it must have been written on a
    device of this kind, since it holds that device's generator states."""
    state = load_or_set_aside(path)
    if state is not None and state.get("device_type") != device.type:
        raise ValueError(
            f"checkpoint {path} was written on {state.get('device_type')}, this run is on {device.type}; "
            f"relaunch with device={state.get('device_type')} or delete it to train from scratch"
        )
    return state


def divergence(loss: float, epoch: int, lr: float) -> TrainingDiverged | None:
    """The error of a model whose epoch loss is not finite (checked before its checkpoint is written, so a
    resume never starts from NaN weights); None when it is fine."""
    if math.isfinite(loss):
        return None
    return TrainingDiverged(
        f"training diverged: the loss is {loss} in epoch {epoch} (lr {lr:g}); lower train.lr (or set train.grad_clip)"
    )
