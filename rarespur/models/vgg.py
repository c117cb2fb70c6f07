"""VGG16 (configuration D, no batch norm) with built-in CIFAR normalization.

Original name ``Vgg16Norm02``: torchvision's ImageNet VGG16 layout unchanged
-- thirteen 3x3 convolutions with five 2x2 max pools, an adaptive average
pool to 7x7, then 25088 -> 4096 -> 4096 -> classes with ReLU and dropout 0.5.
On 32x32 CIFAR images the last feature map is 1x1 and the adaptive pool
just replicates it 49 times.

Parameter count with 10 classes: 14,714,688 in the convolutions plus
102,764,544 + 16,781,312 + 40,970 in the classifier = 134,301,514.

Pooling: the original uses floor-mode pools, which shrink anything smaller
than 32x32 to nothing (28 -> 14 -> 7 -> 3 -> 1 -> 0) and crash. We keep floor
mode whenever both sides are >= 32, so results equal the original wherever
it runs, and switch to ceil mode only for smaller images
(28 -> 14 -> 7 -> 4 -> 2 -> 1), which lets VGG16 run on MNIST-sized inputs.

Submodule names and indices (``features.N``, ``classifier.N``) match the
original so state dicts match.
"""

from __future__ import annotations

import torch
from torch import nn

from .normalization import CIFAR_MEAN, CIFAR_STD, Normalize, check_normalized_input
from .registry import register_model

#: VGG configuration D: output channels of each conv, "M" for a 2x2 max pool.
VGG16_CONFIG: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


class VGG(nn.Module):
    """VGG feature stack + adaptive 7x7 pool + 3-layer classifier.

    Initialization as torchvision's (and the original's): convs Kaiming-normal
    (fan-out, ReLU gain) with zero bias; linear weights N(0, 0.01) with zero
    bias.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        config: tuple[int | str, ...] = VGG16_CONFIG,
    ) -> None:
        super().__init__()
        check_normalized_input(input_shape, "vgg16")
        _, h, w = input_shape
        n_pools = sum(1 for v in config if v == "M")
        ceil_mode = min(h, w) < 2**n_pools
        self.normalize = Normalize(CIFAR_MEAN, CIFAR_STD)
        self.features = _make_features(config, ceil_mode)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        last = [v for v in config if v != "M"][-1]
        self.classifier = nn.Sequential(
            nn.Linear(int(last) * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(4096, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def get_repr(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled, flattened 25088-d representation fed to the classifier."""
        x = self.avgpool(self.features(self.normalize(x)))
        return torch.flatten(x, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.get_repr(x))


def _make_features(config: tuple[int | str, ...], ceil_mode: bool) -> nn.Sequential:
    """Conv(3x3, pad 1)+ReLU for each int, MaxPool(2, 2) for each "M"; 3 input channels."""
    layers: list[nn.Module] = []
    in_channels = 3
    for v in config:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=ceil_mode))
        else:
            layers += [nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = int(v)
    return nn.Sequential(*layers)


@register_model("vgg16")
def build_vgg16(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """VGG16 configuration D without batch norm; 134,301,514 params with 10 classes."""
    return VGG(input_shape, num_classes)
