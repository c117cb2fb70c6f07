"""Which training images get the pattern, and the original code's dataset-name strings.

Compatibility rule (SPEC 1.2): one ``RandomState(seed)`` draws, for each target
class in turn, ``count`` indices without replacement from that class's indices
in training order. Labels never change; test sets are never poisoned here.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from rarespur.errors import ConfigError
from rarespur.patterns import Pattern


def choose_poison_indices(train_y: np.ndarray, count: int, targets: Sequence[int], seed: int) -> np.ndarray:
    """Indices (int64, in the order `choice` returns them) of the training images to poison."""
    if count < 0:
        raise ConfigError(f"poison.count must be >= 0, got {count}")
    rng = np.random.RandomState(seed)
    chosen = []
    for target in targets:
        candidates = np.where(train_y == target)[0]
        if count > len(candidates):
            raise ConfigError(
                f"poison.count={count} is larger than class {target}, which has {len(candidates)} "
                f"training images; use poison.count<={len(candidates)}"
            )
        chosen.append(rng.choice(candidates, size=count, replace=False).astype(np.int64))
    return np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64)


def poison_images(train_x: np.ndarray, indices: np.ndarray, pattern: Pattern, seed: int) -> np.ndarray:
    """A copy of `train_x` with `pattern` applied to the images at `indices`."""
    poisoned = train_x.copy()
    if len(indices):
        poisoned[indices] = pattern.apply(train_x[indices], seed)
    return poisoned


_NAME_RE = re.compile(
    r"^(?P<twoclass>twoclass)?(?P<dataset>mnist|fashion|cifar10)(?P<version>v[0-9a-z]+)?"
    r"-(?P<count>[0-9]+)-(?P<targets>[0-9](?:-[0-9])?)-(?P<seed>[0-9]+)$"
)


def parse_dataset_name(name: str) -> dict[str, Any] | None:
    """Split an original dataset string (``mnistv8-3-0-0``, ``twoclassmnistv20-5-0-1-2``).

    Returns the config values it stands for, or None when `name` is not such a
    string. As in the original, a missing version means v1 (S1).
    """
    match = _NAME_RE.match(name)
    if match is None:
        return None
    targets = [int(t) for t in match["targets"].split("-")]
    if bool(match["twoclass"]) != (len(targets) == 2):
        return None
    return {
        "dataset": match["dataset"],
        "pattern": match["version"] or "v1",
        "count": int(match["count"]),
        "target": targets if match["twoclass"] else targets[0],
        "seed": int(match["seed"]),
    }
