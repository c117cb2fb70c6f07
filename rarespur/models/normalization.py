"""Pieces shared by several families: in-network input normalization."""

from __future__ import annotations

import torch
from torch import nn

#: Per-channel CIFAR-10 statistics used by the original ``*Norm02`` networks.
CIFAR_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR_STD: tuple[float, float, float] = (0.2023, 0.1994, 0.2010)


class Normalize(nn.Module):
    """Subtract a per-channel mean and divide by a per-channel std inside ``forward``.

    Data stay in [0, 1] pixel space (patterns are added there); the network
    itself standardizes. The statistics are kept as Python floats and turned
    into a tensor of the input's dtype and device on first use (then cached),
    which is what the original computes -- bit for bit in float32 and float64.
    Deliberately not buffers: they add no ``state_dict`` keys (checkpoints keep
    the original's key set), and ``model.float()`` / ``.double()`` / ``.half()``
    cannot round them through a lower precision.

    A 1-channel input broadcasts against 3-channel statistics into a 3-channel
    tensor -- the original behaves the same way on grayscale data.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean and std must have the same length, got {len(mean)} and {len(std)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._cache: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (x.dtype, x.device)
        if key not in self._cache:
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            self._cache[key] = (mean, std)
        return self._cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(x)
        return (x - mean) / std

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


def check_normalized_input(input_shape: tuple[int, int, int], family: str) -> None:
    """Check that an image shape suits a network with built-in 3-channel CIFAR normalization.

    Those networks (ResNets, VGG16) always have a 3-channel first conv, as in
    the original. RGB passes straight through; grayscale (C = 1) broadcasts to
    three channels in the normalization step, exactly as the original code did
    on MNIST. Any other channel count has no meaningful statistics, so it is
    refused with a clear message rather than failing inside ``forward``.
    """
    c = input_shape[0]
    if c not in (1, 3):
        raise ValueError(
            f"{family} normalizes with 3-channel CIFAR statistics and accepts 1- or 3-channel "
            f"images; got input_shape {tuple(input_shape)}"
        )
