"""VAE encoders with a classifier head: the networks of Signal is Harder (docs/science.md#signal-is-harder) and its
baselines.

An :class:`EncoderClassifier` classifies from its encoder's mean, so as a plain classifier (what
``experiment=train`` or the vanilla baseline trains, and what every score reads) it is deterministic;
SiH samples the latent during training and adds a decoder built by :meth:`EncoderClassifier.decoder`.

- ``vae_mlp`` (SiH's MLP VAE, any image size, 1 or 3 channels): encoder d -> 100 -> 100 with ReLU, then
  mean and log-variance layers 100 -> 100; decoder (over concatenated latents) -> 512 -> 1024 -> d with
  a sigmoid. On Colored MNIST (d = 2352) these are the sizes of the authors' ``module/mlp_vae.py``.
- ``vae_conv`` (color images whose sides divide by 8, e.g. CIFAR-10's 32x32): three stride-2 4x4
  convolutions (32, 64, 128 channels) and a 256-wide layer before mean and log-variance (latent 128);
  the decoder mirrors it with transposed convolutions and a sigmoid.

- ``vae_resnet`` (3x32x32 images: SiH's ``ResNet_VAE`` of ``module/resnet_vae.py``, their Corrupted CIFAR-10
  encoder): torchvision's ResNet18 with a 4x4 stride-2 first convolution and no max-pool (32 -> 16 -> 2x2x512),
  mean and log-variance over that 2x2 map (the authors' 2x2 convolutions, i.e. Linear 2048 -> 512; latent
  512); the decoder (their ``ResNet18Dec``) upsamples the concatenated latents with residual blocks of
  nearest-neighbour resize convolutions, 1 -> 2 -> 4 -> 8 -> 16 -> 32, and a sigmoid.

The classifier head is ReLU + Linear on the latent, as in SiH. Images are flattened channels-first,
as the authors' ``x.view(N, -1)``.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


class EncoderClassifier(nn.Module):
    """A VAE encoder (mean, log-variance) and a classifier head on its latent."""

    # The reconstruction loss that suits the family's images: SiH's BCE for MNIST-like images, MSE for
    # natural color images (docs/science.md#signal-is-harder).
    reconstruction = "bce"

    def __init__(self, features: nn.Module, width: int, latent: int, num_classes: int, input_shape: tuple) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.latent_dim = latent
        self.features = features
        self.fc_mean = nn.Linear(width, latent)
        self.fc_logvar = nn.Linear(width, latent)
        self.classifier = nn.Sequential(nn.ReLU(), nn.Linear(latent, num_classes))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"expected input N x {self.input_shape}, got {tuple(x.shape)}")
        h = self.features(x)
        return self.fc_mean(h), self.fc_logvar(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encode(x)[0])

    def decoder(self, latents: int) -> nn.Module:
        """A decoder of this family from `latents` concatenated latent units back to the image."""
        raise NotImplementedError


class MLPEncoderClassifier(EncoderClassifier):
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, hidden: int = 100, latent: int = 100):
        c, h, w = input_shape
        features = nn.Sequential(
            nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        super().__init__(features, hidden, latent, num_classes, input_shape)

    def decoder(self, latents: int) -> nn.Module:
        c, h, w = self.input_shape
        return nn.Sequential(
            nn.Linear(latents, 512),
            nn.ReLU(),
            nn.Linear(512, 1024),
            nn.ReLU(),
            nn.Linear(1024, c * h * w),
            nn.Sigmoid(),
            nn.Unflatten(1, (c, h, w)),
        )


class ConvEncoderClassifier(EncoderClassifier):
    reconstruction = "mse"

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, latent: int = 128) -> None:
        c, h, w = input_shape
        if h % 8 or w % 8:
            raise ValueError(f"vae_conv needs image sides that divide by 8 (e.g. 32x32), got {h}x{w}")
        features = nn.Sequential(
            nn.Conv2d(c, 32, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(64, 128, 4, 2, 1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(128 * (h // 8) * (w // 8), 256),
            nn.ReLU(),
        )
        super().__init__(features, 256, latent, num_classes, input_shape)

    def decoder(self, latents: int) -> nn.Module:
        c, h, w = self.input_shape
        return nn.Sequential(
            nn.Linear(latents, 128 * (h // 8) * (w // 8)),
            nn.ReLU(),
            nn.Unflatten(1, (128, h // 8, w // 8)),
            nn.ConvTranspose2d(128, 64, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(32, c, 4, 2, 1),
            nn.Sigmoid(),
        )


class ResizeConv2d(nn.Module):
    """Nearest-neighbour upsampling by `scale`, then a 3x3 convolution: the decoder's learnt upsampling."""

    def __init__(self, channels_in: int, channels_out: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.conv = nn.Conv2d(channels_in, channels_out, 3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=self.scale, mode="nearest"))


class UpBlock(nn.Module):
    """The decoder's residual block: conv-BN-ReLU at `channels`, then conv-BN to `channels // stride` (a resize
    convolution when `stride` is 2, which the shortcut matches)."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        out = channels // stride
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        if stride == 1:
            self.conv1 = nn.Conv2d(channels, out, 3, stride=1, padding=1, bias=False)
            self.shortcut = nn.Sequential()
        else:
            self.conv1 = ResizeConv2d(channels, out, stride)
            self.shortcut = nn.Sequential(ResizeConv2d(channels, out, stride), nn.BatchNorm2d(out))
        self.bn1 = nn.BatchNorm2d(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn2(self.conv2(x)))
        return torch.relu(self.bn1(self.conv1(h)) + self.shortcut(x))


class ResNetEncoderClassifier(EncoderClassifier):
    reconstruction = "mse"
    LOGVAR_MAX = 5.0  # the authors clamp it (a standard deviation of at most e^2.5 = 12.2): early KL terms explode

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, latent: int = 512) -> None:
        from torchvision.models import resnet18

        if tuple(input_shape) != (3, 32, 32):
            raise ValueError(f"vae_resnet takes 3x32x32 images (CIFAR-10), got {'x'.join(map(str, input_shape))}")
        trunk = resnet18()
        features = nn.Sequential(
            nn.Conv2d(3, 64, 4, stride=2, padding=1, bias=False),
            trunk.bn1,
            trunk.relu,
            trunk.layer1,
            trunk.layer2,
            trunk.layer3,
            trunk.layer4,
            nn.Flatten(),
        )
        super().__init__(features, 512 * 2 * 2, latent, num_classes, input_shape)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = super().encode(x)
        return mean, logvar.clamp(max=self.LOGVAR_MAX)

    def decoder(self, latents: int) -> nn.Module:
        blocks, channels = [], latents
        for _ in range(4):  # 1 -> 2 -> 4 -> 8 -> 16, halving the channels at each
            blocks += [UpBlock(channels, 1), UpBlock(channels, 2)]
            channels //= 2
        return nn.Sequential(
            nn.Unflatten(1, (latents, 1, 1)), *blocks, ResizeConv2d(channels, self.input_shape[0], 2), nn.Sigmoid()
        )


@register_model("vae_mlp")
def build_vae_mlp(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """SiH's MLP VAE encoder + classifier head; 266,610 parameters on Colored MNIST (3x28x28)."""
    return MLPEncoderClassifier(input_shape, num_classes)


@register_model("vae_conv")
def build_vae_conv(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """A convolutional VAE encoder + classifier head for color images such as CIFAR-10."""
    return ConvEncoderClassifier(input_shape, num_classes)


@register_model("vae_resnet")
def build_vae_resnet(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """SiH's ResNet18 VAE encoder + classifier head, for Corrupted CIFAR-10 (3x32x32)."""
    return ResNetEncoderClassifier(input_shape, num_classes)
