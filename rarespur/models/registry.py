"""The model registry: canonical names, aliases and the builders behind them.

Each family module (``mlp.py``, ``cnn.py``, ...) registers its builders with
:func:`register_model`; adding an architecture is one decorated function plus
one ``conf/model/*.yaml`` file. Names are matched case-insensitively so that
the original code's class names (``LargeMLP``, ``altResNet20Norm02``) and the
paper's wording (``large_mlp``) resolve to the same network.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

#: A builder takes the image shape (C, H, W) and the number of classes.
Builder = Callable[[tuple[int, int, int], int], nn.Module]

_BUILDERS: dict[str, Builder] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    """Normalise a user-given name for lookup (case and surrounding blanks do not matter)."""
    return name.strip().lower()


def register_model(name: str, aliases: tuple[str, ...] = ()) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder`` under canonical ``name`` plus ``aliases``.

    Canonical names are the config names (lowercase). A name or alias that is
    already taken raises, so two families cannot silently shadow each other.
    """
    canonical = _key(name)
    if canonical != name:
        raise ValueError(f"canonical model name must be lowercase without blanks, got {name!r}")

    def decorate(builder: Builder) -> Builder:
        for key in (canonical, *(_key(a) for a in aliases)):
            if key in _ALIASES:
                raise ValueError(f"model name {key!r} is already registered for {_ALIASES[key]!r}")
        _BUILDERS[canonical] = builder
        _ALIASES[canonical] = canonical
        for alias in aliases:
            _ALIASES[_key(alias)] = canonical
        return builder

    return decorate


def model_names() -> tuple[str, ...]:
    """The canonical model names, sorted."""
    return tuple(sorted(_BUILDERS))


def resolve_model_name(name: str) -> str:
    """Map a canonical name or alias (any case) to the canonical name.

    Raises ``ValueError`` naming every valid canonical name, so a typo in a
    config fails before any data is loaded.
    """
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string, got {type(name).__name__}: {name!r}")
    try:
        return _ALIASES[_key(name)]
    except KeyError:
        valid = ", ".join(model_names())
        raise ValueError(f"unknown model {name!r}; valid names: {valid}") from None


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
    normalisation happens inside ``forward`` so that patterns live in pixel
    space. The weights are drawn from torch's global generator, so seed it
    (``torch.manual_seed``) before calling for a reproducible initialisation.
    """
    canonical = resolve_model_name(name)
    shape = _check_shape(input_shape, num_classes)
    return _BUILDERS[canonical](shape, int(num_classes))
