"""Colored MNIST (``dataset=cmnist``): the benchmark of Learning from Failure and Signal is Harder
(docs/science.md#signal-is-harder).

Each digit class has one color. A training image of class c takes color c (bias-aligned), except a
``conflict_ratio`` fraction of each class, which is spread evenly over the nine other colors
(bias-conflicting). The test set is unbiased: every class's test images are split evenly over all ten
colors, its own included, so color carries no information about the label.

The facts follow the SiH authors' maker (mvandenhi/Signal-is-Harder, ``make_dataset.py`` and
``data/colored_mnist_protocol.py``, taken from LfF), so accuracies are comparable with the published
ones:

- the ten colors are their ``colors.th`` (below, in [0, 1]);
- the color is the class color plus one Gaussian RGB offset per image (std ``color_std``, their
  severity 4 = 0.005), clipped to [0, 1], times the gray digit (0..255), truncated to uint8: the
  background stays black and strokes keep their shading;
- colors are given in contiguous blocks in file order within each class, cut at
  ``round(n_class * cumsum(ratios))``: which images conflict is fixed by the ratio alone; the seed
  draws the color noise.

The color of each image is kept as its bias label (``ImageData.train_bias`` / ``test_bias``), so
accuracy can be split into bias-aligned and bias-conflicting images.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from rarespur.data.image_data import ImageData
from rarespur.errors import ConfigError

# colors.th of the SiH / LfF code, class 0..9, RGB in [0, 1].
COLORS = np.array(
    [
        [0.983682, 0.312519, 0.168575],
        [0.990530, 0.915605, 0.351512],
        [0.672964, 0.461070, 0.579808],
        [0.783252, 0.831556, 0.601329],
        [0.088016, 0.777963, 0.981808],
        [0.321393, 0.961055, 0.446450],
        [0.024616, 0.235650, 0.758666],
        [0.555247, 0.101580, 0.761763],
        [0.207723, 0.392949, 0.018702],
        [0.833658, 0.202409, 0.266943],
    ],
    dtype=np.float32,
)
TEST_ALIGNED_RATIO = 0.1  # one color in ten per class: unbiased


def color_labels(labels: np.ndarray, aligned_ratio: float, num_classes: int = 10) -> np.ndarray:
    """Each image's color class: per class, contiguous blocks in file order, own color `aligned_ratio`
    of the class and the rest split evenly over the other colors (the authors' ``make_attr_labels``)."""
    ratios = aligned_ratio * np.eye(num_classes) + (1 - aligned_ratio) / (num_classes - 1) * (1 - np.eye(num_classes))
    colors = np.zeros(len(labels), dtype=np.int64)
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        milestones = np.round(len(members) * np.cumsum(ratios[c]))
        colors[members] = np.searchsorted(milestones, np.arange(len(members)), side="right")
    return np.minimum(colors, num_classes - 1)


def colorize(gray: np.ndarray, colors: np.ndarray, color_std: float, rng: np.random.Generator) -> np.ndarray:
    """N x H x W x 1 gray images in [0, 1] -> N x H x W x 3 colored ones in [0, 1], as the authors' uint8."""
    shade = np.clip(COLORS[colors] + rng.standard_normal((len(colors), 3)).astype(np.float32) * color_std, 0, 1)
    raw = np.round(gray * 255)  # the idx file's bytes
    colored = np.floor(raw * shade[:, None, None, :]).astype(np.uint8)  # np.uint8 truncates, as theirs
    return colored.astype(np.float32) / np.float32(255)


def make_colored_mnist(
    mnist: ImageData, conflict_ratio: float = 0.01, color_std: float = 0.005, seed: int = 0
) -> ImageData:
    """Colored MNIST from MNIST (see the module docstring); the same arrays for the same arguments.

    `conflict_ratio` in [0, 1] and `color_std` >= 0 are checked with the config (``COMMON_FIELDS``); the
    defaults are conf/dataset/cmnist.yaml's."""
    if mnist.image_shape[2] != 1 or mnist.num_classes != len(COLORS):
        raise ConfigError("dataset=cmnist is built from MNIST's 10 gray classes; its base data do not fit")
    rng = np.random.default_rng(seed)
    train_bias = color_labels(mnist.train_y, 1.0 - conflict_ratio)
    test_bias = color_labels(mnist.test_y, TEST_ALIGNED_RATIO)
    return replace(
        mnist,
        train_x=colorize(mnist.train_x, train_bias, color_std, rng),
        test_x=colorize(mnist.test_x, test_bias, color_std, rng),
        train_bias=train_bias,
        test_bias=test_bias,
    )
