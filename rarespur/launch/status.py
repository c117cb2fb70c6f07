"""``python -m rarespur status``: how far a sweep has got, read from the run store's plain files.

A run directory's state follows from what :mod:`rarespur.store.run_dir` leaves in it:
the ``done`` marker means done (*corrupt* when a file it vouches for is missing
or has changed size, :func:`rarespur.store.run_dir.run_damage`); a ``running.json`` whose owner is still at
work means running; ``error.txt`` means failed; anything else was abandoned
(killed, preempted, the machine rebooted) and is *stale*. A job of the sweep
with no directory at all is missing. Relaunching the sweep reruns failed,
stale and missing jobs (a stale one resumes from its checkpoint), so failed
stale and corrupt are the "incomplete" ones that ``--delete-incomplete`` may remove
(a relaunch also reruns a corrupt one).

Whether the owner is at work: on the same host, its process must exist and
must have started before the job did (a pid reused after a reboot is not the
owner); on another host, which we cannot ask, the directory must have
changed within ``stale_after`` seconds (training checkpoints every epoch).

A sweep submitted to SLURM (:mod:`rarespur.launch.arrays`) also has the scheduler's view: a
job whose array task squeue still lists is *queued* (waiting for resources) or *running*,
whatever its directory says, unless the store says it is done. Once the scheduler has
forgotten a task, the store alone decides, as above. A failed or stale job that ran on SLURM
points to its task's log file.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, TextIO

from rarespur.config.resolve import identity
from rarespur.errors import MissingFileError
from rarespur.launch import scheduler
from rarespur.launch.arrays import Placement, QueueView
from rarespur.launch.progress import format_duration

if TYPE_CHECKING:
    from rarespur.launch.sweep import Job
from rarespur.store.run_dir import CONFIG, DONE, ERROR, RUNNING, TRAIN_STATE, flatten, run_damage

DONE_STATE, RUNNING_STATE, QUEUED, FAILED, STALE, CORRUPT, MISSING = (
    "done", "running", "queued", "failed", "stale", "corrupt", "missing"
)  # fmt: skip
STATES = (DONE_STATE, RUNNING_STATE, QUEUED, FAILED, STALE, CORRUPT, MISSING)
ACTIVE = (RUNNING_STATE, QUEUED)
INCOMPLETE = (FAILED, STALE, CORRUPT)
WATCH_EVERY_S = 30.0
STALE_AFTER_S = 1800.0  # longer than any epoch we run, so a live job elsewhere is never called stale
ERROR_LINES = 3
_MARKERS = (CONFIG, RUNNING, DONE, ERROR, TRAIN_STATE)
_PID_SLACK_S = 2.0  # /proc start times are coarse (boot time in whole seconds)


@dataclass(frozen=True)
class Entry:
    """One run directory (existing or not) and its state."""

    path: Path
    state: str
    config: dict[str, Any] | None  # resolved config: the sweep's, or the directory's config.json
    placement: Placement | None = None  # the SLURM array task it was last submitted as


def run_state(path: Path, stale_after: float = STALE_AFTER_S, now: float | None = None) -> str:
    """The state of the run directory `path` (see the module docstring)."""
    if not path.is_dir():
        return MISSING
    if (path / DONE).exists():
        return DONE_STATE if run_damage(path) is None else CORRUPT
    now = time.time() if now is None else now
    owner = _read_json(path / RUNNING)
    if owner is not None and _owner_alive(owner, path, stale_after, now):
        return RUNNING_STATE
    if (path / ERROR).exists():
        return FAILED
    if owner is None and now - _last_activity(path) < stale_after:
        return RUNNING_STATE  # being set up: start() writes config.json just before running.json
    return STALE


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _owner_alive(owner: dict[str, Any], path: Path, stale_after: float, now: float) -> bool:
    if owner.get("host") == platform.node():
        return _pid_alive(int(owner["pid"]), float(owner["started"]))
    return now - _last_activity(path) < stale_after


def _pid_alive(pid: int, started: float) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    born = _process_start(pid)
    return born is None or born <= started + _PID_SLACK_S


def _process_start(pid: int) -> float | None:
    """When process `pid` started (epoch seconds), from Linux's /proc; None where that is unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError):
        return None
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, counted after "pid (comm)"
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _last_activity(path: Path) -> float:
    times = [path.stat().st_mtime]
    for child in path.iterdir():
        try:
            times.append(child.stat().st_mtime)
        except FileNotFoundError:  # renamed or removed by the job meanwhile
            pass
    return max(times)


def survey(
    results_dir: str | Path,
    jobs: Sequence[Job] | None = None,
    stale_after: float = STALE_AFTER_S,
    queue: QueueView | None = None,
) -> list[Entry]:
    """The state of every job of a sweep (`jobs`), or of every run directory found when `jobs` is None;
    a job the SLURM scheduler still holds (`queue`, asked afresh when None) is queued or running, unless done."""
    now = time.time()
    if jobs is not None:
        found = [(job.run.path, job.config) for job in jobs]
    else:
        found = [(path, _read_json(path / CONFIG)) for path in run_dirs(results_dir)]
    queue = queue if queue is not None else QueueView()
    entries = []
    for path, config in found:
        state = run_state(path, stale_after, now)
        on_cluster, placement = queue.lookup(path.parent, path.name)
        if on_cluster is not None and state not in (DONE_STATE, CORRUPT):
            state = on_cluster
        entries.append(Entry(path, state, config, placement))
    return entries


def run_dirs(results_dir: str | Path) -> list[Path]:
    """Directories of `results_dir` that the run store made (they hold at least one of its files)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise MissingFileError(f"results directory {results_dir} does not exist; pass the run store (results_dir)")
    return [p for p in sorted(results_dir.iterdir()) if p.is_dir() and any((p / m).exists() for m in _MARKERS)]


def delete_incomplete(entries: Sequence[Entry], stale_after: float = STALE_AFTER_S) -> list[Path]:
    """Remove the failed, stale and corrupt run directories; each is checked again just before, so a job
    relaunched meanwhile (running now) or finished is kept."""
    deleted = []
    for entry in entries:
        if entry.state in INCOMPLETE and run_state(entry.path, stale_after) in INCOMPLETE:
            shutil.rmtree(entry.path)
            deleted.append(entry.path)
    return deleted


def _flat(config: dict[str, Any] | None) -> dict[str, Any]:
    return flatten(identity(config)) if config else {}


def _text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else str(value)


def table(entries: Sequence[Entry], by: Sequence[str] = (), with_missing: bool = True) -> str:
    """Counts per state, one row per combination of the `by` config keys (or one row, "all")."""
    shown = {entry.state for entry in entries}
    on_slurm = any(entry.placement is not None for entry in entries)
    states = [
        s
        for s in STATES
        if (s != MISSING or with_missing) and (s != CORRUPT or CORRUPT in shown) and (s != QUEUED or on_slurm)
    ]
    rows: dict[tuple[str, ...], Counter] = {}
    for entry in entries:
        flat = _flat(entry.config)
        group = tuple(_text(flat.get(key, "?")) for key in by) or ("all",)
        rows.setdefault(group, Counter())[entry.state] += 1
    header = [*(by or [""]), "total", *states]
    body = [[*group, str(sum(c.values())), *(str(c[s]) for s in states)] for group, c in sorted(rows.items())]
    if len(body) > 1:
        total = Counter(entry.state for entry in entries)
        body.append(["total", *[""] * (len(by) - 1), str(len(entries)), *(str(total[s]) for s in states)])
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    n_keys = max(len(by), 1)
    return "\n".join(
        "  ".join(cell.ljust(w) if i < n_keys else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in [header, *body]
    )


def describe(entries: Sequence[Entry]) -> dict[Path, str]:
    """A short label per entry: the config values that differ between the entries.

    A group that differs by name (``pattern.name``) shows as ``pattern=s1``, without
    the values its name implies (``pattern.height``...).
    """
    flats = {entry.path: _flat(entry.config) for entry in entries}
    keys = sorted({k for flat in flats.values() for k in flat})
    varying = [k for k in keys if len({_text(flat.get(k)) for flat in flats.values()}) > 1]
    named = {k.removesuffix(".name") for k in varying if k.endswith(".name")}
    shown = {}
    for k in varying:
        if k.endswith(".name"):
            shown[k] = k.removesuffix(".name")
        elif not any(k.startswith(f"{group}.") for group in named):
            shown[k] = k
    return {
        path: " ".join(f"{label}={_text(flat[k])}" for k, label in shown.items() if k in flat)
        for path, flat in flats.items()
    }


def problems(entries: Sequence[Entry], limit: int = 20) -> str:
    """The failed runs with the last lines of their error.txt, then the stale and corrupt ones, then the
    missing ones that SLURM was asked to run and no longer holds; each that ran on SLURM with its task and log."""
    labels = describe(entries)
    ended = [e for e in entries if e.placement is not None and e.state in (*INCOMPLETE, MISSING)]
    final = scheduler.final_states(e.placement.task_id for e in ended if e.placement is not None)
    lines = []
    for state in (*INCOMPLETE, MISSING):
        chosen = [e for e in entries if e.state == state and (state != MISSING or e.placement is not None)]
        if not chosen:
            continue
        lines.append(
            f"{state} ({len(chosen)}):" if state != MISSING else f"missing, submitted to SLURM ({len(chosen)}):"
        )
        for entry in chosen[: limit or None]:
            lines.append(f"  {entry.path}  {labels[entry.path]}".rstrip())
            if state == FAILED:
                lines += [f"    | {line}" for line in _tail(entry.path / ERROR)]
            elif state == CORRUPT:
                lines.append(f"    | {run_damage(entry.path)}; a relaunch runs it again")
            elif state == STALE:
                lines.append(f"    | {_abandoned(entry.path)}")
            if entry.placement is not None:
                how = final.get(entry.placement.task_id) or "no longer known to sacct"
                lines.append(f"    | SLURM task {entry.placement.task_id} ({how}), log {entry.placement.log}")
        if limit and len(chosen) > limit:
            lines.append(f"  ... and {len(chosen) - limit} more")
    return "\n".join(lines)


def pace(entries: Sequence[Entry], now: float | None = None) -> str:
    """Models per hour since the sweep was (last) submitted to SLURM, and the ETA of what is left; "" when the
    sweep has no submission record or nothing has finished since."""
    submitted = [e.placement.submitted for e in entries if e.placement is not None]
    if not submitted:
        return ""
    now = time.time() if now is None else now
    start = min(submitted)
    finished = sum(1 for e in entries if e.state == DONE_STATE and _done_at(e.path) >= start)
    left = sum(1 for e in entries if e.state in (*ACTIVE, MISSING, STALE))
    if not finished or now <= start:
        return f"submitted {format_duration(now - start)} ago, none finished since | ETA ?"
    if not left:  # over: the pace it went at, not one that falls as time passes
        now = max(_done_at(e.path) for e in entries if e.state == DONE_STATE)
    rate = finished / max(now - start, 1.0) * 3600.0
    eta = format_duration(left / rate * 3600.0) if left else "0 s"
    return (
        f"{finished} finished in the {format_duration(now - start)} since submission | {rate:.1f} models/h | ETA {eta}"
    )


def _done_at(path: Path) -> float:
    try:
        return (path / DONE).stat().st_mtime
    except OSError:
        return 0.0


def _tail(path: Path, n: int = ERROR_LINES) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ["(error.txt gone)"]
    return [line for line in text.splitlines() if line.strip()][-n:]


def _abandoned(path: Path) -> str:
    owner = _read_json(path / RUNNING)
    idle = time.time() - _last_activity(path)
    who = f"host {owner.get('host')} pid {owner.get('pid')}, " if owner else "no running.json, "
    return who + (f"last change {idle / 60:.0f} min ago" if idle < 3600 else f"last change {idle / 3600:.1f} h ago")


def report(
    results_dir: str | Path,
    jobs: Sequence[Job] | None = None,
    by: Sequence[str] = (),
    stale_after: float = STALE_AFTER_S,
    delete: bool = False,
    limit: int = 20,
    out: TextIO | None = None,
) -> list[Entry]:
    """Print the status table and the problems of a sweep (or of every run directory); optionally
    delete the incomplete ones. Returns the entries as surveyed (before any deletion)."""
    queue = QueueView()
    entries = survey(results_dir, jobs, stale_after, queue)
    write = partial(print, file=out)
    scope = f"{len(entries)} jobs of the sweep" if jobs is not None else f"{len(entries)} run directories"
    write(f"{results_dir}: {scope}")
    write(table(entries, by, with_missing=jobs is not None))
    if jobs is not None:
        others = len(set(run_dirs(results_dir)) - {e.path for e in entries}) if Path(results_dir).is_dir() else 0
        if others:
            write(f"({others} other run directories in {results_dir} are not jobs of this sweep)")
    if queue.unanswered:
        write(
            f"(squeue did not answer: jobs submitted to SLURM from {', '.join(queue.unanswered)} show as the store sees them)"
        )
    speed = pace(entries)
    if speed:
        write(speed)
    listing = problems(entries, limit)
    if listing:
        write(listing)
    if delete:
        deleted = delete_incomplete(entries, stale_after)
        write(f"deleted {len(deleted)} incomplete run directories" + "".join(f"\n  {p}" for p in deleted))
    return entries


def watch(
    results_dir: str | Path,
    jobs: Sequence[Job] | None = None,
    by: Sequence[str] = (),
    stale_after: float = STALE_AFTER_S,
    limit: int = 20,
    every_s: float = WATCH_EVERY_S,
    out: TextIO | None = None,
) -> list[Entry]:
    """:func:`report` again every `every_s` seconds (the screen cleared on a terminal) until no job of the
    sweep is queued or running; returns the last entries."""
    stream = out if out is not None else sys.stdout
    while True:
        if stream.isatty():
            stream.write("\033[H\033[2J")
        stream.write(
            time.strftime("%H:%M:%S ") + f"(refreshed every {every_s:.0f} s until nothing is queued or running)\n"
        )
        entries = report(results_dir, jobs, by, stale_after, False, limit, stream)
        stream.flush()
        if not any(e.state in ACTIVE for e in entries):
            return entries
        time.sleep(every_s)
