"""Subsets of a dataset: the biased validation split that debiasing stops early on
(docs/science.md#signal-is-harder), and a head of the images that keeps every class."""

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


def in_class_turns(labels: np.ndarray, n: int | None = None) -> np.ndarray:
    """Indices of the first `n` images (all when None) taken from the classes in turns: the first image of every
    class, then the second of every class, ...

    An image folder lists its images class by class, so the first n images in file order would be one or two
    classes. In turns, each class gives n // classes of its first images in file order (deterministic: no
    seed), the remainder goes to the lowest class numbers, and a class with too few gives all it has while the
    others fill its share. The interleaved order is kept, so any head of the result is spread over the
    classes too; sort it for file order.
    """
    labels = np.asarray(labels)
    grouped = np.argsort(labels, kind="stable")  # by class, file order within a class
    sorted_labels = labels[grouped]
    turn = np.arange(len(grouped)) - np.searchsorted(sorted_labels, sorted_labels, side="left")
    return grouped[np.lexsort((sorted_labels, turn))][:n]
