"""Which training images get the pattern.

Compatibility rule (the original's poisoning rule, docs/science.md#poisoning): one ``RandomState(seed)`` draws, for each
target class in turn, ``count`` indices without replacement from that class's indices
in training order. Labels never change; test sets are never poisoned here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rarespur.data.patterns import Pattern
from rarespur.errors import ConfigError


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
