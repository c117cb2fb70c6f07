"""Every benchmark in one command, one Markdown table: the command to run on a GPU machine, whose time is short.

    python benchmarks/all.py --device cuda [--out gpu.md]           # full sizes, about 10 minutes on one H100
    python benchmarks/all.py --device cpu --quick                   # the same code at tiny sizes, under a minute

The interface. Each benchmark module ``benchmarks/bench_<name>.py`` has

    def measure(device: str, quick: bool, data_root: str) -> list[common.Row]

``device`` is a torch device string ("cuda", "cpu"); ``data_root`` the folder of the real datasets (MNIST,
FashionMNIST; Colored MNIST is made from MNIST); ``quick=True`` asks for the smallest sizes that still run the same
code (all of them together in under a minute on 2 CPU cores), ``quick=False`` for the sizes this script runs on a
GPU (all of them together within 10 minutes on one H100). Each returned ``common.Row`` is one case, ours against
its baseline, measured in the same process on the same device:

    Row(benchmark: str, case: str, seconds: float, baseline_seconds: float | None, unit: str = "s",
        note: str = "", peak_bytes: int | None = None, key: str = "", images: int | None = None)
    Row.ratio -> float | None   # baseline_seconds / seconds: how many times faster ours is

``seconds`` and ``baseline_seconds`` are in ``unit`` ("s/epoch", "s/model", "s" for a whole run); ``peak_bytes`` is the peak GPU
memory of ours in that case where measured in this process (``common.Timer``). ``key`` marks the rows the
projection below reads: ``"epoch:<model>"`` (seconds of one epoch of that architecture trained alone, on
``images`` training images), ``"pack"`` (ratio: the per-model speed-up of training in a pack), ``"job"`` (seconds
one job costs beyond its epochs: start-up, data, scoring, records). A module without ``measure`` is reported as not
available; one whose ``measure`` raises gets a "failed: ..." row, the others still run, and the exit status is 1.

The sizes (each module's ``measure`` docstring says more):

- epoch: quick 512 MNIST images, 1 epoch; full all 60,000, 2 epochs, best of 2; LargeMLP against both baselines
  and every other architecture of the grid against the original's train loop.
- pack: quick 256 images, packs of 2 and 4, training only; full 60,000 images, packs of 8, 32 and 128, run.py
  sweeps end to end and training only.
- sih (bench_sih.measure) and job (bench_job.measure): their own modules' sizes.
- influence: quick 1,000 images, n=3 r=2 depth 10; full all 60,000 images, n=3 r=10 depth 2000.

The projected time of the full MNIST + Fashion grid (sweeps mnist_score, mnist_clip_sgd, mnist_clip_adam,
mnist_arch, fashion_arch: 26,640 jobs, expanded from sweeps/ as run.py -m would) on the measured device, one job
after another (common.projected_grid_seconds):

    hours = sum over (sweep, dataset, model) of jobs x (epochs x s_epoch(model) x 60,000 / measured images / gain
            + fixed) / 3600

with s_epoch from the "epoch:<model>" rows (MNIST and Fashion have the same size and shape), gain the best "pack"
ratio (at least 1: a slower pack would not be used) for the jobs a sweep packs (no dropout: not the CNN), 1 for
the others, and fixed the mean of the "job" rows' seconds (0, and said so, while no row has that key).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
from common import EPOCH_KEY, JOB_KEY, PACK_KEY, Row, Timer, cell, format_bytes, markdown_table, projected_grid_seconds

BENCHMARKS = ("epoch", "pack", "sih", "influence", "job")


@dataclass
class Outcome:
    """What one benchmark gave: its rows, or why there are none; its wall time and peak GPU memory."""

    name: str
    rows: list[Row] = field(default_factory=list)
    status: str = "ok"
    seconds: float = 0.0
    peak_bytes: int | None = None

    @property
    def failed(self) -> bool:
        return self.status.startswith("failed")


def run_benchmark(name: str, device: str, quick: bool, data_root: str) -> Outcome:
    """bench_<name>.measure(...) timed as a whole; an error becomes the outcome's status, not an exception, so
    one broken benchmark leaves the others their numbers."""
    outcome = Outcome(name)
    try:
        try:
            module = importlib.import_module(f"bench_{name}")
        except ModuleNotFoundError as err:
            if err.name != f"bench_{name}":
                raise
            outcome.status = f"not available (no benchmarks/bench_{name}.py)"
            return outcome
        if not hasattr(module, "measure"):
            outcome.status = "not available (no measure())"
            return outcome
        with Timer(torch.device(device)) as timer:
            outcome.rows = module.measure(device=device, quick=quick, data_root=data_root)
        outcome.seconds, outcome.peak_bytes = timer.seconds, timer.peak_bytes
    except Exception as err:  # any failure of one benchmark is reported, and the others still run
        traceback.print_exc()
        message = (str(err).strip().splitlines() or [""])[0][:200]
        outcome.status = f"failed: {type(err).__name__}: {message}"
    return outcome


def device_line(device: str) -> str:
    """The machine the numbers are from: the GPU's name, or the CPU's model and core count; torch and the date."""
    if torch.device(device).type == "cuda":
        machine = torch.cuda.get_device_name(torch.device(device))
    else:
        cpuinfo = Path("/proc/cpuinfo")
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = models[0] if models else platform.processor() or "unknown CPU"
        machine = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)"
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"device: {device} ({machine}); torch {torch.__version__}; {today}"


def projection_line(rows: list[Row]) -> str:
    """The projected time of the full MNIST + Fashion grid from the measured rows, with its formula and inputs."""
    epoch = {
        row.key.removeprefix(EPOCH_KEY): (row.seconds, row.images) for row in rows if row.key.startswith(EPOCH_KEY)
    }
    gains = [row.ratio for row in rows if row.key == PACK_KEY and row.ratio is not None]
    jobs = [row.seconds for row in rows if row.key == JOB_KEY]
    gain, fixed = max([1.0, *gains]), (sum(jobs) / len(jobs) if jobs else 0.0)
    try:
        hours = projected_grid_seconds(epoch, gain, fixed) / 3600
    except KeyError as missing:
        return f"projected full MNIST + Fashion grid: not available (no epoch time for model {missing})"
    fixed_text = f"{fixed:.2f} s per job (bench_job)" if jobs else f"0 (no row with key {JOB_KEY!r}: training only)"
    return (
        f"projected full MNIST + Fashion grid: {hours:,.1f} h ({hours / 24:,.2f} days) on this device, one job after "
        f"another = sum over (sweep, dataset, model) of jobs x (epochs x s_epoch(model) x 60,000 / measured images "
        f"/ gain + fixed); s_epoch from the epoch rows, gain {gain:.2f} (best pack ratio, at least 1) for the jobs "
        f"a sweep packs, fixed {fixed_text}"
    )


def report(outcomes: list[Outcome], device: str, quick: bool) -> str:
    """The Markdown of the whole run: header, one table of every case, the per-benchmark wall time and peak GPU
    memory, and the grid projection."""
    rows = [row for outcome in outcomes for row in outcome.rows]
    table = markdown_table(rows)
    for outcome in outcomes:
        if outcome.failed:
            table += f"\n| {outcome.name} | {cell(outcome.status)} | | | | | |"
    sizes = "quick sizes (code check, not a speed claim)" if quick else "full sizes"
    lines = [f"# Benchmarks, {sizes}", "", device_line(device), "", table, ""]
    lines += ["| benchmark | wall time | peak GPU memory | status |", "|---|---|---|---|"]
    for outcome in outcomes:
        lines.append(
            f"| {outcome.name} | {outcome.seconds:.1f} s | {format_bytes(outcome.peak_bytes)} | {cell(outcome.status)} |"
        )
    lines += ["", projection_line(rows)]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", required=True, help="cuda or cpu (any torch device string)")
    parser.add_argument("--quick", action="store_true", help="the smallest sizes: a check that every benchmark runs")
    parser.add_argument("--data-root", default=os.environ.get("RARESPUR_DATA", "../shared/data"))
    parser.add_argument(
        "--out", type=Path, default=None, help="also write the Markdown report to this file, after each benchmark"
    )
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {BENCHMARKS}")
    args = parser.parse_args()
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {', '.join(unknown)}; valid: {', '.join(BENCHMARKS)}")
    if args.quick and torch.device(args.device).type == "cpu":
        # on shared cores two torch threads spin against each other: tiny batches then take 50x longer
        torch.set_num_threads(1)
    data_root = str(Path(args.data_root).expanduser().resolve())
    outcomes = []
    for name in names:
        start = time.perf_counter()
        outcome = run_benchmark(name, args.device, args.quick, data_root)
        took = f" ({time.perf_counter() - start:.1f} s)" if outcome.rows or outcome.failed else ""
        print(f"{name}: {outcome.status}{took}", file=sys.stderr, flush=True)
        outcomes.append(outcome)
        if args.out is not None:  # after each benchmark: a run cut short on a lent machine keeps what it measured
            partial = args.out.with_name(args.out.name + ".partial")
            partial.write_text(report(outcomes, args.device, args.quick))
            os.replace(partial, args.out)  # whole or not at all, should the run be killed while writing
    print(report(outcomes, args.device, args.quick))
    return 1 if any(outcome.failed for outcome in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
