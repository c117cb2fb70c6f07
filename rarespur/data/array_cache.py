"""Decoded datasets kept as ``.npy`` files under a key of their source files and memory-mapped when loaded again.

Decoding MNIST's gzip files costs a job most of a second, CIFAR-10's pickles more, an image folder's JPEGs
minutes, and every job of a sweep decodes the same files. The first load writes the arrays to
``$XDG_CACHE_HOME/rarespur/arrays/<dataset>-<key>-v<version>/``; later loads map them
(copy-on-write, so a job may still change its copy), read only the pages they touch (a
``data.train_limit`` job reads the first images only) and share those pages with every other job on the
node. The key covers the source files' paths, sizes and modification times (as the checksum cache of
:mod:`rarespur.data.fingerprint` does), so changed files are decoded again, and :data:`VERSION` is raised
whenever a loader decodes differently.
``RARESPUR_ARRAY_CACHE=0`` turns the cache off.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

from rarespur.data.image_data import ImageData

VERSION = 1
ARRAYS = ("train_x", "train_y", "test_x", "test_y", "train_bias", "test_bias")
CLASSES = "classes.json"  # written last: a folder without it is incomplete


def cache_root() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "rarespur" / "arrays"


def enabled() -> bool:
    return os.environ.get("RARESPUR_ARRAY_CACHE", "1") != "0"


def cached(name: str, key: str, decode: Callable[[], ImageData]) -> ImageData:
    """The dataset `name` from its arrays cached under `key`, or decoded by `decode` and cached (no key: not cached)."""
    if not key or not enabled():
        return decode()
    folder = cache_root() / f"{name}-{key}-v{VERSION}"
    data = _read(folder)
    if data is None:
        data = decode()
        _write(folder, data)
    return data


def _read(folder: Path) -> ImageData | None:
    """The mapped arrays, or None when the folder is missing, incomplete or damaged."""
    try:
        classes = tuple(json.loads((folder / CLASSES).read_text()))
        arrays = {
            field: np.load(folder / f"{field}.npy", mmap_mode="c") if (folder / f"{field}.npy").exists() else None
            for field in ARRAYS
        }
        return ImageData(classes=classes, **arrays)
    except (OSError, ValueError, TypeError):
        return None


def _write(folder: Path, data: ImageData) -> None:
    """Write the arrays into a private folder and rename it into place: jobs that decode the same data at once
    each write their own, and the first rename wins. A cache that cannot be written (a full or read-only disk)
    is skipped: the data is in memory already."""
    staging = folder.parent / f".{folder.name}.{uuid.uuid4().hex}"
    try:
        staging.mkdir(parents=True)
        for field in ARRAYS:
            array = getattr(data, field)
            if array is not None:
                np.save(staging / f"{field}.npy", np.ascontiguousarray(array))
        (staging / CLASSES).write_text(json.dumps(list(data.classes)))
        if folder.exists():  # damaged (else _read would have served it): replace it
            shutil.rmtree(folder, ignore_errors=True)
        os.rename(staging, folder)
    except OSError:
        pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
