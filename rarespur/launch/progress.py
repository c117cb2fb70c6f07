"""A sweep's progress on one line: how many jobs are done, running, queued and failed, the rate, the ETA.

    local_cpu: 12/40 done, 2 running, 26 queued, 0 failed | 43.2 models/h | ETA 38 min

Used by the local pool launchers while they wait for their jobs (hydra_plugins.rarespur_launchers),
and by the SLURM launcher while it waits (hydra_plugins.rarespur_launchers.slurm).
Plain text on purpose: no dependency, readable in a log file.

:func:`progress_line` formats one line from counts; :class:`Progress` decides when to write it:

- on a terminal (``stream.isatty()``) the line is rewritten in place (``\\r``), at most every
  :attr:`Progress.tty_interval_s` seconds (unless ``force``);
- elsewhere (a log file, a pipe) a new plain line is written on the first update, then only when
  ``force`` is given, when ``every_s`` seconds have passed since the last line, or when
  done + failed moved by at least 5 % of ``total`` (and at least 1) since the last line;
- :meth:`Progress.close` always writes the final line and ends it with a newline.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Callable, Mapping, TextIO

STATES = ("done", "running", "queued", "failed", "stale", "missing", "corrupt")
"""The states a line shows, in this order (other keys of ``counts`` are ignored)."""


def format_duration(seconds: float) -> str:
    """``45 s``, ``38 min``, ``2.5 h``: seconds under 90 s, minutes under 90 min, else hours."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _line(total: int, counts: Mapping[str, int], elapsed_s: float, new_done: int, label: str) -> str:
    """progress_line, with the rate taken from `new_done` jobs done in `elapsed_s` seconds."""
    done, failed = int(counts.get("done", 0)), int(counts.get("failed", 0))
    parts = [f"{done}/{total} done"]
    for state in STATES[1:]:
        n = int(counts.get(state, 0))
        # "0 failed" is news too (when the caller counts failures); the other states only when non-zero
        if n or (state == "failed" and state in counts):
            parts.append(f"{n} {state}")
    remaining = max(0, total - done - failed)
    if new_done > 0 and elapsed_s > 0:
        rate = new_done / elapsed_s * 3600.0
        speed = f"{rate:.1f} models/h"
        eta = f"ETA {format_duration(remaining / rate * 3600.0)}"
    else:
        speed = "? models/h"
        eta = "ETA 0 s" if remaining == 0 else "ETA ?"
    return f"{label}: {', '.join(parts)} | {speed} | {eta}"


def progress_line(total: int, counts: Mapping[str, int], elapsed_s: float, label: str = "sweep") -> str:
    """One line: ``sweep: 12/40 done, 2 running, 26 queued, 0 failed | 43.2 models/h | ETA 38 min``.

    `counts` maps states (:data:`STATES`) to numbers of jobs. ``done`` is always shown, as done/total;
    ``failed`` whenever `counts` has the key (``0 failed`` included); the other states when non-zero,
    in the order of :data:`STATES`. The rate is done / `elapsed_s` (models per hour: give the time the
    done jobs took, e.g. since the sweep started); the ETA is (total - done - failed) / rate, as
    s / min / h, and ``ETA ?`` before the first done job (``ETA 0 s`` when nothing is left).
    :class:`Progress` counts only the jobs done since it was created.
    """
    return _line(total, counts, elapsed_s, int(counts.get("done", 0)), label)


class Progress:
    """Writes a sweep's :func:`progress_line` to `stream` (default: sys.stderr) while the caller waits.

    Call :meth:`update` as often as convenient (e.g. each poll of the jobs); it writes only when due:
    on a terminal the line is rewritten in place at most every :attr:`tty_interval_s` seconds; on a
    log file a new line is written on the first update, every `every_s` seconds, when done + failed
    changed by 5 % of `total` (at least 1) since the last line, or when `force` is true.
    :meth:`close` writes the final line, with a newline. The rate counts the jobs done since the
    first update (jobs done before it, e.g. by an earlier launch, are not the rate of this one),
    over the time since this Progress was created.
    """

    tty_interval_s = 0.25
    """On a terminal: the least time between two rewrites of the line (unless ``force``)."""
    step_fraction = 0.05
    """On a log file: a new line when done + failed moved by this fraction of ``total``."""
    clock: Callable[[], float] = staticmethod(time.monotonic)
    """Seconds, for elapsed times and throttling (tests replace it)."""

    def __init__(self, total: int, label: str = "sweep", stream: TextIO | None = None, every_s: float = 60.0) -> None:
        self.total = int(total)
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.every_s = float(every_s)
        self.started = self.clock()
        isatty = getattr(self.stream, "isatty", None)
        try:
            self.tty = bool(isatty()) if isatty is not None else False
        except (ValueError, OSError):  # a closed stream
            self.tty = False
        self._done_at_start: int | None = None
        self._last_at: float | None = None  # when the last line was written
        self._last_finished = 0  # done + failed in the last line
        self._last_width = 0  # length of the line now on the terminal

    def line(self, counts: Mapping[str, int]) -> str:
        """The line for `counts` now (rate over the jobs done since the first update)."""
        done = int(counts.get("done", 0))
        if self._done_at_start is None:
            self._done_at_start = done
        return _line(self.total, counts, self.clock() - self.started, done - self._done_at_start, self.label)

    def update(self, counts: Mapping[str, int], force: bool = False) -> None:
        """Write the line for `counts` if it is due (see the class); `force` writes it now."""
        now = self.clock()
        line = self.line(counts)
        finished = int(counts.get("done", 0)) + int(counts.get("failed", 0))
        if not force and self._last_at is not None:
            since = now - self._last_at
            if self.tty:
                if since < self.tty_interval_s:
                    return
            else:
                step = max(1, math.ceil(self.step_fraction * self.total))
                if since < self.every_s and abs(finished - self._last_finished) < step:
                    return
        self._write(line, end="")
        self._last_at, self._last_finished = now, finished

    def close(self, counts: Mapping[str, int]) -> None:
        """Write the final line for `counts`, ending with a newline."""
        self._write(self.line(counts), end="\n")
        self._last_at = self.clock()
        self._last_finished = int(counts.get("done", 0)) + int(counts.get("failed", 0))

    def _write(self, line: str, end: str) -> None:
        if self.tty:  # rewrite in place; pad over the rest of a longer previous line
            self.stream.write("\r" + line.ljust(self._last_width) + end)
            self._last_width = 0 if end else len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
