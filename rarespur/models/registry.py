"""The model registry: the builders behind the canonical names of :mod:`rarespur.config.names`.

Each family module (``mlp.py``, ``cnn.py``, ...) registers its builders with
:func:`register_model`; adding an architecture is one decorated function, one
entry in ``rarespur.config.names.MODELS`` and one ``conf/model/*.yaml`` file.
Any accepted spelling (``LargeMLP``, ``paper_mlp``, ``mlp3x256``) builds the same network.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from rarespur.config.names import MODELS, resolve_model_name

#: A builder takes the image shape (C, H, W) and the number of classes.
Builder = Callable[[tuple[int, int, int], int], nn.Module]

_BUILDERS: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder`` under the canonical ``name`` of :data:`rarespur.config.names.MODELS`.

    Aliases live in that table only, so there is one place that says what a model is called.
    """
    if name not in MODELS:
        raise ValueError(f"model {name!r} has no entry in rarespur.config.names.MODELS; add one there first")

    def decorate(builder: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILDERS[name] = builder
        return builder

    return decorate


def model_names() -> tuple[str, ...]:
    """The canonical model names, sorted."""
    return tuple(sorted(_BUILDERS))


def _check_shape(input_shape: tuple[int, int, int], num_classes: int) -> tuple[int, int, int]:
    """Validate (C, H, W) and the class count; return the shape as plain ints."""
    try:
        shape = tuple(int(s) for s in input_shape)
    except TypeError:
        raise ValueError(f"input_shape must be (C, H, W), got {input_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be three positive ints (C, H, W), got {input_shape!r}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
    return shape  # type: ignore[return-value]


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build the network called ``name`` for images of ``input_shape`` = (C, H, W).

    Every model takes float tensors N x C x H x W with pixels in [0, 1]; any
    normalization happens inside ``forward`` so that patterns live in pixel
    space. The weights are drawn from torch's global generator, so seed it
    (``torch.manual_seed``) before calling for a reproducible initialization.
    """
    canonical = resolve_model_name(name)
    shape = _check_shape(input_shape, num_classes)
    return _BUILDERS[canonical](shape, int(num_classes))
