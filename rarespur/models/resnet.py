"""CIFAR ResNets (He et al. 2016, section 4.2): ResNet20/32/110.

Original names ``altResNet{20,32,110}Norm02`` (Y. Idelbayev's implementation
with in-network CIFAR normalization). A 3x3 stem with 16 channels, three
stages of basic blocks with 16/32/64 channels (the 2nd and 3rd stages start
with stride 2), global average pooling and one linear layer. Depth is
6n + 2 with n blocks per stage: n = 3, 5, 18 for ResNet20/32/110.

Shortcuts are "option A": when a block changes shape, the identity is
subsampled by 2 and zero-padded with extra channels, adding no parameters.
That is what pins the parameter counts to 269,722 / 464,154 / 1,727,962 on
CIFAR-10 (option B's 1x1 projections would add more).

Attribute names (``conv1``, ``bn1``, ``layer1..3``, ``linear``; blocks'
``conv1``, ``bn1``, ``conv2``, ``bn2``) follow the original, so state dicts
match.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .normalization import CIFAR_MEAN, CIFAR_STD, Normalize, check_normalized_input
from .registry import register_model


class PadShortcut(nn.Module):
    """Option-A shortcut: keep every second pixel, zero-pad channels on both sides.

    Used when a block halves the resolution and doubles the channels: the
    ``pad`` new channels on each side (``planes // 4``, so in + 2*pad = planes)
    carry zeros, so the shortcut needs no weights.
    """

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0.0)

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """Two 3x3 conv + batch-norm layers with a residual connection, ReLU after the sum."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            if in_planes + 2 * (planes // 4) != planes:
                raise ValueError(f"option-A shortcut cannot map {in_planes} to {planes} channels")
            self.shortcut = PadShortcut(planes // 4)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    """ResNet for small images with built-in CIFAR input normalization.

    The stem always has 3 input channels as in the original; grayscale input
    broadcasts to 3 channels in the normalization (see ``common.Normalize``).
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, num_blocks: tuple[int, int, int]) -> None:
        super().__init__()
        check_normalized_input(input_shape, f"resnet{6 * num_blocks[0] + 2}")
        self.normalize = Normalize(CIFAR_MEAN, CIFAR_STD)
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_stage(16, num_blocks[0], stride=1)
        self.layer2 = self._make_stage(32, num_blocks[1], stride=2)
        self.layer3 = self._make_stage(64, num_blocks[2], stride=2)
        self.linear = nn.Linear(64, num_classes)
        # Kaiming-normal (fan-in) on every conv and linear weight, visited in
        # the same post-order as the original's ``self.apply``; the linear
        # bias keeps PyTorch's default init, batch norms their 1/0 defaults.
        self.apply(_kaiming_init)

    def _make_stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    @property
    def gradcam_layer(self) -> nn.Module:
        """Where XBL's Grad-CAM looks: the last stage, after its residual sums (docs/science.md#detection-and-xbl)."""
        return self.layer3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer3(self.layer2(self.layer1(out)))
        # Average over the whole map; the original pools with a kernel equal
        # to the width, which is the same thing on square maps.
        out = F.avg_pool2d(out, tuple(out.shape[2:]))
        return self.linear(torch.flatten(out, 1))


def _kaiming_init(m: nn.Module) -> None:
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        nn.init.kaiming_normal_(m.weight)


@register_model("resnet20")
def build_resnet20(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """ResNet20, [3, 3, 3] blocks; 269,722 params on CIFAR-10."""
    return CifarResNet(input_shape, num_classes, (3, 3, 3))


@register_model("resnet32")
def build_resnet32(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """ResNet32, [5, 5, 5] blocks; 464,154 params on CIFAR-10."""
    return CifarResNet(input_shape, num_classes, (5, 5, 5))


@register_model("resnet110")
def build_resnet110(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """ResNet110, [18, 18, 18] blocks; 1,727,962 params on CIFAR-10."""
    return CifarResNet(input_shape, num_classes, (18, 18, 18))
