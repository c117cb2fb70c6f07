"""Held-out splits of a training set: the biased validation split that debiasing stops early on
(docs/science.md#signal-is-harder)."""

from __future__ import annotations

import numpy as np


def validation_split(
    n: int, fraction: float, seed: int, keep: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: a seeded random `fraction` of the `n` training images is held out.

    Drawn from the training set itself, so the validation split is as biased as the data (the SiH
    protocol). Images in `keep` (the poisoned ones) always stay in training, so a run with n poisoned
    images trains on all n; the split depends on the seed alone otherwise, so a poisoned run and its
    clean baseline hold out the same images. Both index arrays are sorted.
    """
    held = np.random.default_rng(seed).permutation(n)[: int(round(fraction * n))]
    held = np.setdiff1d(held, keep if keep is not None else [])
    return np.setdiff1d(np.arange(n), held), held
