"""Which data a run trained on, as a checksum of the files its dataset's loader reads.

A run's key follows its config, not its data: an image folder changed in place, or MNIST files
replaced under the same data.root, would otherwise be answered with a record computed on other
images. The record keeps ``data_fingerprint``; a job whose stored run has another one stops
with a message instead of serving it (see :mod:`rarespur.launch.runner`).

Hashing a dataset's files takes a while (CIFAR-10 is 180 MB), so each file's SHA-256 is cached
under ``$XDG_CACHE_HOME/rarespur/file-sha256`` by (path, size, modification time): a sweep of
thousands of jobs reads each file once.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

from rarespur.data.loaders import data_files
from rarespur.store.atomic import write_atomic
from rarespur.store.manifest import CHUNK, sha256


def cache_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "rarespur" / "file-sha256"


def content_sha256(path: Path) -> str:
    """SHA-256 of what the loader reads from `path`: a ``.gz`` file's decompressed bytes, so MNIST as
    downloaded (.gz) and as torchvision unpacks it are the same data."""
    if path.suffix != ".gz":
        return sha256(path)
    digest = hashlib.sha256()
    with gzip.open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """:func:`content_sha256` of `path`, from the cache while its size and modification time are unchanged."""
    stat = path.stat()
    tag = f"content|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    entry = cache_dir() / hashlib.sha256(tag.encode()).hexdigest()[:32]
    try:
        return entry.read_text().strip()
    except OSError:
        pass
    digest = content_sha256(path)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(entry, digest)
    except OSError:  # a read-only home: no cache, the same answer
        pass
    return digest


def data_fingerprint(name: str, root: str | Path | None = None, path: str | Path | None = None) -> str:
    """16 hex digits over the dataset's files: their names (relative to their common folder, without
    ``.gz``) and contents; the same whatever the spelling of the folder's path."""
    files = [p.resolve() for p in data_files(name, root, path)]
    if not files:
        return ""
    base = Path(os.path.commonpath([p.parent for p in files]))
    digest = hashlib.sha256(name.encode())
    for p in files:
        digest.update(f"\n{p.relative_to(base).as_posix().removesuffix('.gz')}\t{file_sha256(p)}".encode())
    return digest.hexdigest()[:16]
