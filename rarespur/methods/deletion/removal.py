"""Pure helpers the deletion methods share: parameters as one vector."""

from __future__ import annotations

import torch
from torch import nn


def flat_parameters(model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The model's parameters (or those of `state`, a state dict of it) as one flat CPU vector."""
    source = state if state is not None else dict(model.named_parameters())
    return torch.cat([source[name].detach().reshape(-1).double().cpu() for name, _ in model.named_parameters()])
