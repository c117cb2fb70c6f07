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

VERSION = 2
ARRAYS = ("train_x", "train_y", "test_x", "test_y", "train_bias", "test_bias")
MANIFEST = "manifest.json"  # classes and the arrays present, written last: a folder without it is incomplete


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
    """The mapped arrays the manifest lists, or None when the folder is missing, incomplete or damaged."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        arrays = {field: np.load(folder / f"{field}.npy", mmap_mode="c") for field in manifest["arrays"]}
        return ImageData(classes=tuple(manifest["classes"]), **arrays)
    except Exception:  # noqa: BLE001  any damage (a cut file, an odd manifest) means: decode it again
        return None


def _write(folder: Path, data: ImageData) -> None:
    """Write the arrays into a private folder and rename it into place. Jobs that decode the same data at once
    each write their own; the first rename wins and the others discard theirs, so a folder that serves is never
    removed. A damaged folder is first renamed aside (atomically), then replaced. A cache that cannot be
    written (a full or read-only disk) is skipped: the data is in memory already."""
    staging = folder.parent / f".{folder.name}.{uuid.uuid4().hex}"
    try:
        staging.mkdir(parents=True)
        fields = [field for field in ARRAYS if getattr(data, field) is not None]
        for field in fields:
            np.save(staging / f"{field}.npy", np.ascontiguousarray(getattr(data, field)))
        (staging / MANIFEST).write_text(json.dumps({"classes": list(data.classes), "arrays": fields}))
        _place(staging, folder)
    except OSError:
        pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _place(staging: Path, folder: Path) -> None:
    try:
        os.rename(staging, folder)
        return
    except OSError:
        if _read(folder) is not None:  # another job's copy is in place and sound
            return
    aside = folder.parent / f".{folder.name}.damaged.{uuid.uuid4().hex}"
    try:
        os.rename(folder, aside)
        os.rename(staging, folder)
    except OSError:  # another job moved or replaced it meanwhile
        pass
    finally:
        shutil.rmtree(aside, ignore_errors=True)
