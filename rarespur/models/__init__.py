"""The model zoo: every architecture of the paper behind one ``build_model`` call.

Canonical (config) names, the names that resolve to them (case-insensitive),
and parameter counts with 10 classes (MNIST 1x28x28 / CIFAR 3x32x32):

==============  =============================  ===========  ==========================
canonical       also accepted                  paper name   parameters
==============  =============================  ===========  ==========================
``mlp1x256``    ``mlp``, ``small_mlp``         small MLP    203,530 / 789,258
``mlp2x256``    ``mlpv2``                      --           269,322 / 855,050
``mlp3x256``    ``largemlp``, ``paper_mlp``    MLP          335,114 / 920,842
``mlp3x512``    ``largemlpv2``, ``large_mlp``  large MLP    932,362 / 2,103,818
``cnn``         ``cnn002``                     CNN          312,202 / 427,978
``resnet20``    ``altResNet20Norm02``          ResNet20     269,722 (any image size)
``resnet32``    ``altResNet32Norm02``          ResNet32     464,154
``resnet110``   ``altResNet110Norm02``         ResNet110    1,727,962
``vgg16``       ``Vgg16Norm02``                Vgg16        134,301,514 (CIFAR)
``vae_mlp``     ``sih_mlp``                    --           (SiH's MLP VAE encoder + head)
``vae_conv``    ``sih_conv``                   --           (a convolutional VAE encoder + head)
``vae_resnet``  ``sih_resnet``                 --           13,273,482 (SiH's ResNet18 VAE + head, CIFAR)
==============  =============================  ===========  ==========================

The names live in :mod:`rarespur.config.names` (one table, no torch), which
also keeps the run store's keys on the original names. All models take float
tensors N x C x H x W with pixels in [0, 1].

To add an architecture: an entry in ``rarespur.config.names.MODELS``, a builder
``(input_shape, num_classes) -> nn.Module`` decorated with
``@register_model("name")`` in a module of this package (imported below), and
``conf/model/name.yaml``.
"""

from __future__ import annotations

from torch import nn

from rarespur.config.names import resolve_model_name

# Importing the family modules registers their builders.
from . import cnn, mlp, resnet, vae, vgg  # noqa: F401
from .registry import build_model, model_names, register_model

#: Sorted canonical model names (the values accepted in ``conf/model``).
MODEL_NAMES: tuple[str, ...] = model_names()


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (all of them, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "MODEL_NAMES",
    "build_model",
    "count_parameters",
    "model_names",
    "register_model",
    "resolve_model_name",
]
