"""The model zoo: every architecture of the paper behind one ``build_model`` call.

Canonical (config) names and the aliases that resolve to them, matched
case-insensitively:

=============  ==================================  ====================
canonical      aliases                             paper name
=============  ==================================  ====================
``mlp``        ``small_mlp``                       small MLP
``mlpv2``      --                                  --
``largemlp``   ``paper_mlp``                       MLP
``largemlpv2`` ``large_mlp``                       large MLP
``cnn002``     ``cnn``                             CNN
``resnet20``   ``altResNet20Norm02``               ResNet20
``resnet32``   ``altResNet32Norm02``               ResNet32
``resnet110``  ``altResNet110Norm02``              ResNet110
``vgg16``      ``Vgg16Norm02``                     Vgg16
=============  ==================================  ====================

The original code's class names are lowercase matches of the canonical
names or listed aliases (``LargeMLP`` -> ``largemlp``), so they work too.
All models take float tensors N x C x H x W with pixels in [0, 1].

To add an architecture: write a builder ``(input_shape, num_classes) ->
nn.Module`` in a module of this package, decorate it with
``@register_model("name", aliases=(...))``, import the module below, and add
``conf/model/name.yaml``.
"""
from __future__ import annotations

from torch import nn

# Importing the family modules registers their builders.
from . import cnn, mlp, resnet, vgg  # noqa: F401
from .registry import build_model, model_names, register_model, resolve_model_name

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
