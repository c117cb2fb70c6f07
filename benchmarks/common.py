"""What every benchmark shares, one place per concept: the result row, timing a block on a device (with its peak
GPU memory), loading real data, and the paper grid the GPU-hours projection covers.

Each benchmark module exposes ``measure(device: str, quick: bool, data_root: str) -> list[Row]`` (see
benchmarks/all.py); its command line prints the same rows.
"""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Iterator

import numpy as np
import torch

if importlib.util.find_spec("rarespur") is None:  # not installed: this checkout's (an installed one, or the
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # PYTHONPATH --baseline sets, is kept)

from rarespur.data.image_data import ImageData  # noqa: E402
from rarespur.data.loaders import load_dataset  # noqa: E402
from rarespur.engine.scoring import to_tensor  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# The rows benchmarks/all.py's projection reads (Row.key): "epoch:<model>", seconds of one epoch of that model
# alone on Row.images training images; "pack", a row whose ratio is the per-model speed-up of training in a
# pack; "job", seconds a job costs beyond its epochs (start-up, data, scoring, records).
EPOCH_KEY, PACK_KEY, JOB_KEY = "epoch:", "pack", "job"


@dataclass(frozen=True)
class Row:
    """One measured case: ours (`seconds`) against its baseline, both in `unit` ("s/epoch", "s/model", "s").

    `peak_bytes` is ours' peak GPU memory in the case, where the case measured it in this process (None: not
    measured, a CPU run, or work done in a subprocess). `key` and `images` mark a row the grid projection reads.
    """

    benchmark: str
    case: str
    seconds: float
    baseline_seconds: float | None
    unit: str = "s"
    note: str = ""
    peak_bytes: int | None = None
    key: str = ""
    images: int | None = None

    @property
    def ratio(self) -> float | None:
        """How many times faster ours is than the baseline (None without a baseline)."""
        return None if self.baseline_seconds is None else self.baseline_seconds / self.seconds


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so a wall clock read after it measures the work, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak CUDA memory allocated inside a ``with`` block, in ``bytes`` (None off CUDA).

    torch keeps one peak per device, and reading a block's own peak needs a reset; blocks may still nest (a
    benchmark inside all.py's, a case inside a benchmark): before each reset the peak so far is handed to every
    open block, so an inner block never hides an outer block's peak.
    """

    _open: list[PeakMemory] = []

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bytes: int | None = None
        self._seen = 0

    def _hand_over(self) -> None:
        peak = torch.cuda.max_memory_allocated(self.device)
        for block in PeakMemory._open:
            block._seen = max(block._seen, peak)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            self._hand_over()
            torch.cuda.reset_peak_memory_stats(self.device)
            PeakMemory._open.append(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if self.device.type == "cuda":
            self._hand_over()
            PeakMemory._open.remove(self)
            self.bytes = self._seen


class Timer:
    """Wall seconds and peak GPU memory of a ``with`` block on `device`, queued CUDA work included."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = PeakMemory(device)
        self.seconds = 0.0
        self._start = 0.0

    @property
    def peak_bytes(self) -> int | None:
        return self.peak.bytes

    def __enter__(self) -> Timer:
        synchronize(self.device)
        self.peak.__enter__()
        self._start = time.perf_counter()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._start
        self.peak.__exit__(kind, err, tb)


def max_peak(*peaks: int | None) -> int | None:
    """The highest of some peaks, None when none was measured."""
    known = [p for p in peaks if p is not None]
    return max(known) if known else None


def load_images(
    name: str, data_root: str | Path, train: int | None = None, test: int | None = None, options: dict | None = None
) -> ImageData:
    """The real dataset `name` from `data_root` (never downloaded: a benchmark times the data it is given), its
    first `train` / `test` images."""
    return load_dataset(name, root=Path(data_root).expanduser(), options=options, limits=(train, test))


def tensors(x: np.ndarray, y: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """N x H x W x C images and their labels as N x C x H x W float and long tensors on `device`."""
    return to_tensor(x, device), torch.from_numpy(y).to(device)


# The full MNIST + Fashion grid (docs/science.md#paper-grids): score vs n with its clipping variants, and the
# architecture grids.
GRID_SWEEPS = ("mnist_score", "mnist_clip_sgd", "mnist_clip_adam", "mnist_arch", "fashion_arch")
TRAIN_IMAGES = {"mnist": 60_000, "fashion": 60_000}


@dataclass(frozen=True)
class GridGroup:
    """The jobs of one grid sweep that train one model on one dataset: how many, how long, and whether a sweep
    with ``pack.size`` packs them (rarespur.launch.pack_plan.why_not_packed)."""

    sweep: str
    dataset: str
    model: str
    jobs: int
    epochs: int
    images: int
    packed: bool


@functools.cache
def grid_groups() -> tuple[GridGroup, ...]:
    """The grid's jobs by (sweep, dataset, model), expanded from sweeps/ as ``run.py -m`` would."""
    from rarespur.launch.pack_plan import why_not_packed
    from rarespur.launch.sweep import Sweep

    groups = []
    for name in GRID_SWEEPS:
        sweep = Sweep(name)
        firsts: dict[tuple[str, str], list] = {}
        for job in sweep.job_overrides:
            choice = dict(line.split("=", 1) for line in job)
            firsts.setdefault((choice["dataset"], choice["model"]), [job, 0])[1] += 1
        for (dataset, model), (job, count) in firsts.items():
            resolved = sweep.resolved(job)
            limit = resolved["data"]["train_limit"]
            images = TRAIN_IMAGES[dataset] if limit is None else min(limit, TRAIN_IMAGES[dataset])
            packed = why_not_packed(resolved) is None
            groups.append(GridGroup(name, dataset, model, count, resolved["epochs"], images, packed))
    return tuple(groups)


def grid_models() -> list[str]:
    """The architectures the grid trains, in first-seen order."""
    return list(dict.fromkeys(group.model for group in grid_groups()))


def projected_grid_seconds(epoch_seconds: dict[str, tuple[float, int]], pack_gain: float, job_seconds: float) -> float:
    """Seconds to run the whole grid one job after another on this device:

        sum over groups of  jobs x (epochs x s_epoch(model) x images / measured images / gain + fixed)

    s_epoch(model) is `epoch_seconds[model]` = (seconds of one epoch alone, on that many images); gain is
    `pack_gain` for groups a sweep packs, 1 for the others; fixed is `job_seconds`.
    """
    total = 0.0
    for group in grid_groups():
        seconds, measured = epoch_seconds[group.model]
        gain = pack_gain if group.packed else 1.0
        total += group.jobs * (group.epochs * seconds * group.images / measured / gain + job_seconds)
    return total


def format_bytes(peak: int | None) -> str:
    """A peak in MiB, "n/a" where none was measured."""
    return "n/a" if peak is None else f"{peak / 2**20:,.0f} MiB"


def cell(text: str) -> str:
    """`text` made safe inside a Markdown table cell, where a bare | would end the cell."""
    return text.replace("|", r"\|")


def markdown_table(rows: list[Row]) -> str:
    """The rows as one Markdown table: benchmark, case, ours, baseline, ratio, peak GPU memory (ours), note."""
    lines = [
        "| benchmark | case | ours | baseline | ratio | peak GPU memory | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        baseline = "" if row.baseline_seconds is None else f"{row.baseline_seconds:.4g} {row.unit}"
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
        lines.append(
            f"| {row.benchmark} | {cell(row.case)} | {row.seconds:.4g} {row.unit} | {baseline} | {ratio} "
            f"| {format_bytes(row.peak_bytes)} | {cell(row.note)} |"
        )
    return "\n".join(lines)


@contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """`revision` checked out in a temporary git worktree (removed afterwards)."""
    folder = Path(tempfile.mkdtemp(prefix="bench-tree-"))
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(folder), revision], cwd=REPO, check=True, capture_output=True
    )
    try:
        yield folder
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(folder)], cwd=REPO, capture_output=True)
