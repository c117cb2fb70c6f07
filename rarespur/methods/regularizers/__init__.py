"""Regularizers are training objectives chosen in config: ``regularizer=<name>``.

``conf/regularizer/<name>.yaml`` holds ``_target_`` (the :class:`~rarespur.engine.objective.Objective`
subclass, by import path), ``name`` and the regularizer's own keys, which the class takes as
constructor arguments. Every regularizer has one ``strength``, whatever it means for its kind (the
L2 lambda, the input-noise sigma, the label-smoothing epsilon), so sweeps and the report read the
same column for all of them. A new regularizer is one module and one YAML: nothing here lists them.
"""

from __future__ import annotations

from typing import Any

from rarespur.config.names import import_target
from rarespur.engine.objective import Objective
from rarespur.errors import ConfigError

# Keys of a regularizer's config that are not constructor arguments.
_META_KEYS = ("_target_", "name")


# Where the objectives lived before the package was grouped by role: configs stored by then name them so.
MOVED_MODULES = {
    "rarespur.objective.": "rarespur.engine.objective.",
    "rarespur.regularizers.": "rarespur.methods.regularizers.",
    "rarespur.debias.common.": "rarespur.methods.debias.debiaser.",
    "rarespur.debias.": "rarespur.methods.debias.",
}


def _moved(target: str) -> str:
    for old, new in MOVED_MODULES.items():
        if target.startswith(old):
            return new + target[len(old) :]
    return target


def objective_class(reg: dict[str, Any], group: str = "regularizer") -> type[Objective]:
    """The objective class a config of `group` (``regularizer``, ``debias``) names in ``_target_`` (plain
    cross-entropy without one)."""
    target = reg.get("_target_")
    if target is None:
        return Objective
    cls = import_target(
        group,
        {**reg, "_target_": _moved(str(target))},
        "an Objective subclass",
        "rarespur.methods.regularizers.classic.GaussianNoise",
    )
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise ConfigError(f"{group}._target_={target!r} is not a rarespur.engine.objective.Objective subclass")
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
