"""Files a run wrote for itself that may be damaged (a kill mid-copy, a full disk, a bad sector).

A resume checkpoint or a helper model that cannot be read is not an error of the run: it is set
aside (kept for inspection, renamed ``<name>.unreadable-<time>``) with a warning, and the run
carries on as if it had never been written, so no run can get stuck on a bad file.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

UNREADABLE = ".unreadable-"  # in the name of a file set aside


def set_aside(path: Path, why: str) -> Path:
    """Rename `path` out of the way (kept for inspection) and say so; returns the new path."""
    aside = path.with_name(f"{path.name}{UNREADABLE}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.replace(path, aside)
    log.warning("%s cannot be read (%s): set aside as %s, starting without it", path, why, aside.name)
    return aside


def load_or_set_aside(path: Path, map_location: str | torch.device = "cpu") -> Any | None:
    """``torch.load(path, weights_only=True)``, or None (and the file set aside) when it cannot be read."""
    if not path.exists():
        return None
    import torch  # here: the store's readers (status, collect, a relaunch's planning) need no torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except torch.OutOfMemoryError:
        raise  # the file may be fine: the device is full
    except OSError as err:
        if err.errno != errno.EINVAL:  # what torch raises on a truncated archive; EIO, ESTALE... are not the file's
            raise
        why = err
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        why = err  # truncated, emptied or overwritten
    set_aside(path, f"{type(why).__name__}: {str(why).splitlines()[0] if str(why) else 'no message'}")
    return None
