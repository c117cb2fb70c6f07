"""Types and valid ranges of config keys, checked when a config is resolved.

Each part of the config owns its fields: the common keys are declared in :mod:`rarespur.config.resolve`, an
experiment's own keys next to the experiment. A bad value fails with the key, the value and what is
valid, before any run directory exists: in ``run.py``, in sweep expansion and in ``status``. Floats
are cast here, so ``train.grad_clip=0`` and ``train.grad_clip=0.0`` are one run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rarespur.errors import ConfigError


@dataclass(frozen=True)
class Field:
    kind: type  # int, float, bool or str
    low: float | None = None  # smallest valid value (inclusive unless low_open)
    high: float | None = None  # largest valid value (inclusive)
    low_open: bool = False
    nullable: bool = False
    choices: tuple[Any, ...] | None = None
    null_means: str = ""  # what null stands for, for the message
    also: tuple[str, ...] = ()  # words valid besides values of `kind` (influence.scale=auto)
    what: str = ""  # the valid values in words, where the bounds alone say too little ("a positive number of images")
    many: bool = False  # a non-empty list of such values (detect.patch_sizes=[1,3,5])

    def valid(self) -> str:
        """What is valid, in words."""
        if self.choices is not None:
            text = "one of " + ", ".join(map(str, self.choices))
        elif self.kind is bool:
            text = "true or false"
        elif self.what:
            text = self.what
        else:
            name = {int: "an integer", float: "a finite number", str: "a string"}[self.kind]
            bounds = []
            if self.low is not None:
                bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
            if self.high is not None:
                bounds.append(f"<= {self.high:g}")
            text = f"{' and '.join(bounds)} ({name})" if bounds else name
        if self.also:
            text += "".join(f", or {word}" for word in self.also)
        if self.nullable:
            text += f", or null{' (' + self.null_means + ')' if self.null_means else ''}"
        return text

    def cast(self, key: str, value: Any) -> Any:
        """`value` as this field's type, or a ConfigError naming the key, the value and what is valid."""
        if self.many:
            if not isinstance(value, (list, tuple)) or not value:
                raise ConfigError(f"{key} must be a non-empty list of values {self.valid()}, got {value!r}")
            one = Field(**{**self.__dict__, "many": False})
            return [one.cast(key, item) for item in value]
        if value is None and self.nullable:
            return None
        if isinstance(value, str) and value in self.also:
            return value
        if self.kind is bool or isinstance(value, bool):
            ok = self.kind is bool and isinstance(value, bool)
        elif self.kind is float:
            ok = isinstance(value, (int, float)) and math.isfinite(value)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, self.kind)
        if ok and self.choices is not None:
            ok = value in self.choices
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value <= self.high
        if not ok and self.choices is not None:
            raise ConfigError(f"{key}={value!r} unknown; valid: {', '.join(map(str, self.choices))}")
        if not ok:
            raise ConfigError(f"{key} must be {self.valid()}, got {value!r}")
        return value


def check_fields(cfg: dict[str, Any], fields: dict[str, Field]) -> None:
    """Cast and check every dotted key of `fields` that `cfg` has, in place."""
    for dotted, field in fields.items():
        *parents, leaf = dotted.split(".")
        node = cfg
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            node[leaf] = field.cast(dotted, node[leaf])


# Shorthands for the usual kinds of setting.
def positive_int() -> Field:
    return Field(int, low=1, what="a positive integer")


def count() -> Field:
    return Field(int, low=0, what="a non-negative integer")


def non_negative() -> Field:
    return Field(float, low=0)


def positive() -> Field:
    return Field(float, low=0, low_open=True)
