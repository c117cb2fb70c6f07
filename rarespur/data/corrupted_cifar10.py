"""Corrupted CIFAR-10 (``dataset=ccifar10``): the second benchmark of Learning from Failure and Signal is Harder.

Each CIFAR-10 class has one corruption (type0, the published runs: airplane snow, automobile frost, bird
fog, cat brightness, deer contrast, dog spatter, frog elastic, horse JPEG, ship pixelate, truck saturate).
A training image of class c gets corruption c (bias-aligned), except a ``conflict_ratio`` fraction of each
class, spread evenly over the nine other corruptions (bias-conflicting). The test set is unbiased: each
class's test images are split evenly over all ten corruptions. The corruption of each image is its bias
label (``ImageData.train_bias`` / ``test_bias``).

As the SiH authors' maker (mvandenhi/Signal-is-Harder ``make_dataset.py``, ``make_corrupted_cifar10``):

- corruptions are assigned by their ``make_attr_labels`` (:func:`rarespur.data.colored_mnist.color_labels`,
  the same function): per class, contiguous blocks in file order cut at ``round(n_class * cumsum(ratios))``;
  train aligned ratio ``1 - conflict_ratio``, test 0.1;
- the strength is CIFAR-10-C's level 5 (``dataset.severity``): their runs pass ``--severity 4`` and the
  maker calls the protocol with ``severity + 1``;
- images are uint8 32 x 32 x 3, corrupted from the uint8 originals and truncated back to uint8.

The corruptions are :mod:`rarespur.data.cifar_corruptions`. The source is the CIFAR-10 archive under
``data.root`` or, with ``dataset.path``, an image folder of CIFAR-10 (``train/<class>/*``, ``test/<class>/*``).

Corrupting 60,000 images takes minutes on a CPU, so each split is built once and kept in
``$XDG_CACHE_HOME/rarespur/ccifar10/`` (never in the data folder), named by a SHA-256 over everything that
fixes it: the clean uint8 images and labels, the corruption list, the level, the seed and the aligned ratio
(the test split does not depend on conflict_ratio, so a sweep over ratios corrupts it once).

``data.train_limit`` / ``data.test_limit`` cut the clean data BEFORE corrupting, and per class: the first
``N // 10`` images of each class in file order (the first ``N % 10`` classes one more; a class with fewer gives
all it has and the others fill its share), so a small run builds in seconds and keeps every class and the
protocol's per-class shares (an image folder lists its images class by class, so the first N images would be
one class).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from rarespur.data.cifar_corruptions import CORRUPTION_TYPES, SIZE, corrupt, require_extra
from rarespur.data.colored_mnist import TEST_ALIGNED_RATIO, color_labels
from rarespur.data.image_data import ImageData
from rarespur.data.splits import in_class_turns
from rarespur.errors import ConfigError
from rarespur.store.atomic import atomic_path

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the corruptions change, so old caches are not served


def cache_dir() -> Path:
    """Where the corrupted splits are kept: ``$XDG_CACHE_HOME/rarespur/ccifar10`` (default ``~/.cache``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "rarespur" / "ccifar10"


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float32 / 255 images back to their uint8 bytes (exact: they were made as uint8 / 255)."""
    return np.round(images * 255).astype(np.uint8)


def split_key(
    images: np.ndarray, labels: np.ndarray, names: tuple[str, ...], level: int, aligned: float, seed: int
) -> str:
    """SHA-256 (24 hex digits) of everything that fixes one corrupted split."""
    digest = hashlib.sha256(f"ccifar10 v{CACHE_VERSION}|{','.join(names)}|{level}|{aligned!r}|{seed}".encode())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()[:24]


def corrupt_split(
    images: np.ndarray, bias: np.ndarray, names: tuple[str, ...], level: int, seed: int, split: str
) -> np.ndarray:
    """Corrupt each uint8 image with corruption ``names[bias[i]]``, logging progress (every 10%, at least 500 images)."""
    require_extra()
    out = np.empty_like(images)
    start, step = time.monotonic(), max(500, len(images) // 10)
    for i, (image, b) in enumerate(zip(images, bias)):
        out[i] = corrupt(image, names[b], level, seed)
        if (i + 1) % step == 0 or i + 1 == len(images):
            spent = time.monotonic() - start
            left = spent / (i + 1) * (len(images) - i - 1)
            log.info(
                "ccifar10 %s: corrupted %d / %d images (%.0f s, about %.0f s left)",
                split,
                i + 1,
                len(images),
                spent,
                left,
            )
    return out


def cached_split(
    images: np.ndarray,
    labels: np.ndarray,
    bias: np.ndarray,
    names: tuple[str, ...],
    level: int,
    aligned: float,
    seed: int,
    split: str,
) -> np.ndarray:
    """The corrupted uint8 split from the cache, or corrupted now and stored there."""
    path = cache_dir() / f"{split}-{split_key(images, labels, names, level, aligned, seed)}.npy"
    if path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape == images.shape and cached.dtype == np.uint8:
                log.info("ccifar10 %s: %d corrupted images from %s", split, len(cached), path)
                return cached
        except (OSError, ValueError):
            pass
        log.warning("ccifar10 %s: unreadable cache %s, building it again", split, path)
    log.info("ccifar10 %s: corrupting %d images (level %d, %s); kept in %s", split, len(images), level, names, path)
    corrupted = corrupt_split(images, bias, names, level, seed, split)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            np.save(tmp, corrupted, allow_pickle=False)
    except OSError as err:  # a read-only cache: the data are still right, only rebuilt next time
        log.warning("ccifar10 %s: could not keep the corrupted images in %s (%s)", split, path, err)
    return corrupted


def make_corrupted_cifar10(
    cifar: ImageData,
    conflict_ratio: float = 0.01,
    severity: int = 5,
    corruptions: str = "type0",
    seed: int = 0,
    limits: tuple[int | None, int | None] = (None, None),
) -> ImageData:
    """Corrupted CIFAR-10 from clean CIFAR-10 (see the module docstring); the same arrays for the same arguments.

    `limits` keep the first (train, test) images per class before corrupting (:func:`in_class_turns`).
    The defaults are conf/dataset/ccifar10.yaml's."""
    if cifar.image_shape != (SIZE, SIZE, 3) or cifar.num_classes != 10:
        raise ConfigError(
            f"dataset=ccifar10 is built from CIFAR-10's 10 classes of {SIZE}x{SIZE} RGB images; its source has "
            f"{cifar.num_classes} classes of {cifar.image_shape}"
        )
    if corruptions not in CORRUPTION_TYPES:
        raise ConfigError(f"dataset.corruptions={corruptions} unknown; use one of {', '.join(CORRUPTION_TYPES)}")
    if not 0 <= conflict_ratio <= 1:
        raise ConfigError(f"dataset.conflict_ratio={conflict_ratio} must lie in [0, 1]")
    names = CORRUPTION_TYPES[corruptions]
    splits = {}
    for split, x, y, aligned, limit in (
        ("train", cifar.train_x, cifar.train_y, 1.0 - conflict_ratio, limits[0]),
        ("test", cifar.test_x, cifar.test_y, TEST_ALIGNED_RATIO, limits[1]),
    ):
        keep = np.sort(in_class_turns(y, limit))
        images, labels = to_uint8(x[keep]), y[keep]
        bias = color_labels(labels, aligned, cifar.num_classes)
        corrupted = cached_split(images, labels, bias, names, int(severity), aligned, int(seed), split)
        splits[split] = (corrupted.astype(np.float32) / np.float32(255), labels, bias)
    (train_x, train_y, train_bias), (test_x, test_y, test_bias) = splits["train"], splits["test"]
    return replace(
        cifar,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        train_bias=train_bias,
        test_bias=test_bias,
    )


def save_corruption_grid(
    images: np.ndarray, path: Path, corruptions: str = "type0", severity: int = 5, scale: int = 3
) -> Path:
    """A PNG of uint8 32 x 32 x 3 `images` (one per row): the clean image, then each corruption of the list in
    order (column j + 1 = class j's own corruption), enlarged `scale` times; for reports and closing notes."""
    from PIL import Image

    names = CORRUPTION_TYPES[corruptions]
    rows = [np.concatenate([image] + [corrupt(image, name, severity) for name in names], axis=1) for image in images]
    grid = np.concatenate(rows, axis=0).repeat(scale, axis=0).repeat(scale, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path
