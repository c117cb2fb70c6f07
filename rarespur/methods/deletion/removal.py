"""Pure helpers the deletion methods share: which images remain, and parameters as one vector."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def kept_indices(n_train: int, removed: np.ndarray) -> np.ndarray:
    """All training indices but the removed ones, in their original order."""
    return np.setdiff1d(np.arange(n_train), removed)


def flat_parameters(model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The model's parameters (or those of `state`, a state dict of it) as one flat CPU vector."""
    source = state if state is not None else dict(model.named_parameters())
    return torch.cat([source[name].detach().reshape(-1).double().cpu() for name, _ in model.named_parameters()])
