"""A clean dataset in memory: what every loader of :mod:`rarespur.data.loaders` returns and every step after reads.

A module of its own so datasets made from another one (:mod:`rarespur.data.colored_mnist`) build on it
without importing the loaders that call them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageData:
    """A clean dataset: channels-last float32 images in [0, 1] and int64 labels in file order."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]
    # Per image, the class of a bias attribute where the dataset has one (Colored MNIST: the color), so
    # accuracy can be split into bias-aligned (bias == label) and bias-conflicting images; else None.
    train_bias: np.ndarray | None = None
    test_bias: np.ndarray | None = None

    def __post_init__(self) -> None:
        """Catch inconsistent arrays here, where they are made, not later inside training."""
        for split, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
            if x.ndim != 4 or len(x) != len(y):
                raise ValueError(
                    f"{split} images must be N x H x W x C with one label each: got {x.shape} and {y.shape}"
                )
            if len(y) and (y.min() < 0 or y.max() >= len(self.classes)):
                raise ValueError(f"{split} labels must lie in 0..{len(self.classes) - 1}, got {y.min()}..{y.max()}")
        for split, bias, y in (("train", self.train_bias, self.train_y), ("test", self.test_bias, self.test_y)):
            if bias is not None and len(bias) != len(y):
                raise ValueError(f"{split} bias labels must be one per image: got {len(bias)} for {len(y)} images")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ValueError(f"train images are {self.train_x.shape[1:]} but test images are {self.test_x.shape[1:]}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        h, w, c = self.train_x.shape[1:]
        return h, w, c

    @property
    def num_classes(self) -> int:
        return len(self.classes)
