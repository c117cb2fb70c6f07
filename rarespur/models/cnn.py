"""The paper's "CNN" (original ``CNN002``, the TRADES small CNN).

Four unpadded 3x3 convolutions in two pairs, each pair followed by a 2x2 max
pool, then a 200-200-classes classifier with dropout 0.5 after the first
fully connected layer. On 28x28 inputs the spatial sizes go
28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4, so the classifier sees 64*4*4 = 1024
features and the network has 312,202 parameters on MNIST.

The original hard-codes 1024 features; here the size is computed from the
input shape so the same architecture also runs on e.g. 3x32x32 (1600
features). No input normalization, as in the original.

Submodule names (``feature_extractor.conv1`` ... ``classifier.fc3``) follow
the original so state dicts match.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .registry import register_model


def _cnn_feature_size(h: int, w: int) -> tuple[int, int]:
    """Spatial size after conv-conv-pool-conv-conv-pool with valid 3x3 convs and floor 2x2 pools."""

    def side(s: int) -> int:
        s = (s - 4) // 2  # two valid 3x3 convs, then a 2x2 max pool
        return (s - 4) // 2

    return side(h), side(w)


class SmallCNN(nn.Module):
    """Conv(32)-Conv(32)-Pool-Conv(64)-Conv(64)-Pool-FC(200)-Dropout-FC(200)-FC(classes).

    Initialization as in the original: convolutions Kaiming-normal (fan-in)
    with zero bias, the first two linear layers PyTorch default, and the
    last linear layer all zeros, so every class starts with logit 0.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, drop: float = 0.5) -> None:
        super().__init__()
        c, h, w = input_shape
        fh, fw = _cnn_feature_size(h, w)
        if fh < 1 or fw < 1:
            raise ValueError(f"cnn002 needs images of at least 16x16, got input_shape {tuple(input_shape)}")
        self.input_shape = (c, h, w)
        self.num_features = 64 * fh * fw

        self.feature_extractor = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(c, 32, 3)),
                    ("relu1", nn.ReLU(inplace=True)),
                    ("conv2", nn.Conv2d(32, 32, 3)),
                    ("relu2", nn.ReLU(inplace=True)),
                    ("maxpool1", nn.MaxPool2d(2, 2)),
                    ("conv3", nn.Conv2d(32, 64, 3)),
                    ("relu3", nn.ReLU(inplace=True)),
                    ("conv4", nn.Conv2d(64, 64, 3)),
                    ("relu4", nn.ReLU(inplace=True)),
                    ("maxpool2", nn.MaxPool2d(2, 2)),
                ]
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("fc1", nn.Linear(self.num_features, 200)),
                    ("relu1", nn.ReLU(inplace=True)),
                    ("drop", nn.Dropout(drop)),
                    ("fc2", nn.Linear(200, 200)),
                    ("relu2", nn.ReLU(inplace=True)),
                    ("fc3", nn.Linear(200, num_classes)),
                ]
            )
        )

        # Same order as the original (modules() is pre-order), so a seeded
        # build draws the same random numbers.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.zeros_(self.classifier.fc3.weight)
        nn.init.zeros_(self.classifier.fc3.bias)

    def get_repr(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened output of the convolutional part (the original's ``cnn_fet`` representation)."""
        return torch.flatten(self.feature_extractor(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.get_repr(x))


@register_model("cnn")
def build_cnn002(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Paper "CNN" (original ``CNN002``); 312,202 params on MNIST."""
    return SmallCNN(input_shape, num_classes)
