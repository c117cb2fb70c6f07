"""Regularizers are training objectives chosen in config: ``regularizer=<name>``.

``conf/regularizer/<name>.yaml`` holds ``_target_`` (the :class:`~rarespur.objective.Objective`
subclass, by import path), ``name`` and the regularizer's own keys, which the class takes as
constructor arguments. Every regularizer has one ``strength``, whatever it means for its kind (the
L2 lambda, the input-noise sigma, the label-smoothing epsilon), so sweeps and the report read the
same column for all of them. A new regularizer is one module and one YAML: nothing here lists them.
"""

from __future__ import annotations

import importlib
from typing import Any

from rarespur.errors import ConfigError
from rarespur.objective import Objective

# Keys of a regularizer's config that are not constructor arguments.
_META_KEYS = ("_target_", "name")


def objective_class(reg: dict[str, Any], group: str = "regularizer") -> type[Objective]:
    """The objective class a config of `group` (``regularizer``, ``debias``) names in ``_target_`` (plain
    cross-entropy without one)."""
    target = reg.get("_target_")
    if target is None:
        return Objective
    module_name, _, class_name = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(
            f"{group}._target_={target!r} ({group}={reg.get('name')}) cannot be imported ({err}); "
            "give the import path of an Objective subclass, e.g. rarespur.regularizers.classic.GaussianNoise"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise ConfigError(f"{group}._target_={target!r} is not a rarespur.objective.Objective subclass")
    return cls


def build_objective(reg: dict[str, Any], group: str = "regularizer") -> Objective:
    """The training objective of a resolved config of `group` (a ``regularizer`` or a ``debias`` method)."""
    cls = objective_class(reg, group)
    params = {k: v for k, v in reg.items() if k not in _META_KEYS}
    try:
        objective = cls(**params)
    except TypeError as err:
        raise ConfigError(f"{group}={reg.get('name')}: its settings {sorted(params)} do not fit ({err})") from None
    objective.name = reg.get("name", objective.name)
    return objective
