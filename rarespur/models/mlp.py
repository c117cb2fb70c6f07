"""Fully connected networks: the paper's small MLP, MLP and large MLP (plus MLPv2).

The original code fed MLPs NumPy arrays of shape N x H x W x C reshaped to
N x (H*W*C), i.e. flattened channels-last. Our data reach every model as
N x C x H x W tensors, so the MLPs permute back to channels-last before
flattening; that keeps input column ``(h*W + w)*C + c`` on pixel (h, w, c)
and makes weights interchangeable with the original's.

Layer attribute names (``hidden``, ``hidden2``, ``hidden3``, ``fc``) follow
the original so state dicts carry the same keys. Initialization is PyTorch's
default for ``nn.Linear``, as in the original.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .registry import register_model


def flatten_channels_last(x: torch.Tensor) -> torch.Tensor:
    """N x C x H x W -> N x (H*W*C) in channels-last order (the original's NHWC layout)."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)


class MLP(nn.Module):
    """ReLU MLP over the channels-last flattened image.

    ``hidden_sizes`` gives the width of each hidden layer; the first is named
    ``hidden``, later ones ``hidden2``, ``hidden3``, ... and the output ``fc``.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, hidden_sizes: Sequence[int]) -> None:
        super().__init__()
        if not hidden_sizes:
            raise ValueError("an MLP needs at least one hidden layer")
        c, h, w = input_shape
        self.input_shape = (c, h, w)
        self.hidden_names: list[str] = []
        width = c * h * w
        # Created in input-to-output order so the default init draws from the
        # global generator in the same sequence as the original classes.
        for i, size in enumerate(hidden_sizes):
            name = "hidden" if i == 0 else f"hidden{i + 1}"
            setattr(self, name, nn.Linear(width, size))
            self.hidden_names.append(name)
            width = size
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"expected input N x {self.input_shape}, got {tuple(x.shape)}")
        x = flatten_channels_last(x)
        for name in self.hidden_names:
            x = torch.relu(getattr(self, name)(x))
        return self.fc(x)


@register_model("mlp1x256")
def build_mlp(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Paper "small MLP" (original ``MLP``): in -> 256 -> classes."""
    return MLP(input_shape, num_classes, (256,))


@register_model("mlp2x256")
def build_mlpv2(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Original ``MLPv2``: in -> 256 -> 256 -> classes (no name in the paper)."""
    return MLP(input_shape, num_classes, (256, 256))


@register_model("mlp3x256")
def build_largemlp(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Paper "MLP" (original ``LargeMLP``): in -> 256 -> 256 -> 256 -> classes; 335,114 params on MNIST."""
    return MLP(input_shape, num_classes, (256, 256, 256))


@register_model("mlp3x512")
def build_largemlpv2(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Paper "large MLP" (original ``LargeMLPv2``): in -> 512 -> 512 -> 512 -> classes; 932,362 on MNIST."""
    return MLP(input_shape, num_classes, (512, 512, 512))
