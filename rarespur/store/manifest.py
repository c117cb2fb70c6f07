"""Checksums of the files a finished run vouches for, so a damaged result is found, never served.

A run's ``done`` marker holds the manifest: for every file of the run directory, its size and
SHA-256 as written. Checking sizes is cheap (a stat per file), so ``status``, ``collect`` and the
skip-if-done check do it for every run; a file about to be used again (a reused clean model, a
parent's weights) is checked against its SHA-256 as well.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

CHUNK = 1 << 20


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def file_manifest(folder: Path, vouched: Callable[[str], bool]) -> dict[str, dict[str, int | str]]:
    """``{relative path: {"bytes": size, "sha256": hex}}`` of every file under `folder` whose relative
    path `vouched` accepts."""
    out: dict[str, dict[str, int | str]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if vouched(name):
            out[name] = {"bytes": path.stat().st_size, "sha256": sha256(path)}
    return out


def damage(folder: Path, manifest: dict[str, dict[str, int | str]], names: list[str] | None = None) -> str | None:
    """What is wrong with `folder` against its manifest (None: nothing): a missing file or one of
    another size; for the files in `names`, also one whose contents changed (SHA-256)."""
    for name, expected in manifest.items():
        path = folder / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return f"{name} is missing"
        if size != expected["bytes"]:
            return f"{name} has {size} bytes, {expected['bytes']} were written"
    for name in names or []:
        if name in manifest and sha256(folder / name) != manifest[name]["sha256"]:
            return f"{name} does not match the checksum it was written with"
    return None
