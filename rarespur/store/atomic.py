"""Write-then-rename, the one way every file of the run store is written.

A reader (collect, status, a resumed job) must never see half a file, and
jobs that finish at the same moment (a SLURM array) may write the same name,
so each writer gets its own temporary file in the target's folder and
renames it over the target, which POSIX makes atomic.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TEMP_MARK = ".tmp"  # in every temporary name, so a later start can find those a killed writer left


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a unique temporary path beside `path`; on success rename it to `path`, else remove it.

    The temporary name keeps the suffix (np.savez appends ``.npz`` otherwise).
    """
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TEMP_MARK}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
