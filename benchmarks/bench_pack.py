"""Models per hour: one job per process (today's sweeps) vs packs of K jobs in one process (``pack.size=K``).

LargeMLP on real MNIST, S3 with n = 10 at a different poison seed per model, the 70-epoch recipe cut to
``--epochs`` (and ``--train-limit`` images) for timing. Two tables, side by side in one run:

1. **Sweep**, the product end to end: ``run.py`` jobs (start-up, data, training, scoring, records),
   one process per job (as a sweep without packing runs them, e.g. one SLURM task each) vs one
   ``run.py -m ... pack.size=K`` sweep of K jobs. Models per hour and the ratio to one per process.
2. **Engine**, training alone: :func:`rarespur.engine.loop.train_model` on one model vs
   :func:`rarespur.engine.packed_loop.train_packed` on K (on a CPU 8 at a time, as sweeps train them;
   ``--all-at-once`` for all K), seconds per model, the ratio, and the device
   memory each added model costs (CUDA: measured peak; CPU: its parameters, gradients, optimizer
   state, poisoned rows and index row, activations not counted).

Then the projected training time of the MNIST + Fashion grids (docs/science.md#paper-grids: 26,640 jobs of 70 epochs
on 60,000 images, benchmarks/common.py's projection) on this device at the best measured pack gain, every model
timed as LargeMLP (benchmarks/all.py times each architecture).

    python benchmarks/bench_pack.py --data-root ../shared/data                       # CPU: K = 8, 32, 128
    python benchmarks/bench_pack.py --data-root ../shared/data --device cuda --train-limit 60000 --packs 1,8,32,64,128
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from common import (
    PACK_KEY,
    REPO,
    Row,
    Timer,
    grid_models,
    load_images,
    markdown_table,
    projected_grid_seconds,
    tensors,
)
from omegaconf import OmegaConf

from rarespur.data.patterns import build_pattern
from rarespur.data.poisoning import choose_poison_indices
from rarespur.engine.loop import train_model
from rarespur.engine.packed_loop import CPU_AT_ONCE, PackMember, train_packed
from rarespur.engine.scoring import to_tensor
from rarespur.engine.settings import TrainSettings
from rarespur.models import build_model

BENCHMARK = "pack"


@dataclass(frozen=True)
class PackSizes:
    """What one run of the benchmark trains: `processes` models alone for the baselines, then a pack of each
    size in `packs`; `all_at_once` trains all K at once on a CPU too."""

    data_root: str
    device: str
    epochs: int
    train_limit: int
    test_limit: int
    processes: int
    packs: tuple[int, ...]
    all_at_once: bool = False


def sweep_args(sizes: PackSizes, store: Path) -> list[str]:
    return [
        "dataset=mnist",
        f"data.root={sizes.data_root}",
        "model=mlp3x256",
        "optim=adam",
        "pattern=s3",
        "poison.count=10",
        f"epochs={sizes.epochs}",
        f"data.train_limit={sizes.train_limit}",
        f"data.test_limit={sizes.test_limit}",
        f"device={sizes.device}",
        "progress=false",
        f"results_dir={store}",
    ]


def run_quiet(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return time.perf_counter() - start


def sweep_rows(sizes: PackSizes) -> list[Row]:
    """Seconds per model of the product run end to end (run.py jobs, each sweep in a fresh store): one job per
    process against each pack size. The jobs run in subprocesses, so no GPU memory is read here."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "alone"
        alone = sum(
            run_quiet([sys.executable, "run.py", *sweep_args(sizes, store), f"poison.seed={seed}"])
            for seed in range(sizes.processes)
        )
        for k in sizes.packs:
            store = Path(tmp) / f"pack{k}"
            cmd = [sys.executable, "run.py", "-m", *sweep_args(sizes, store), f"poison.seed=range({k})"]
            cmd += [f"pack.size={k}", f"hydra.sweep.dir={Path(tmp) / f'sweep{k}'}"]
            seconds = run_quiet(cmd)
            rows.append(
                Row(
                    BENCHMARK,
                    f"run.py sweep, pack.size={k} vs one job per process",
                    seconds / k,
                    alone / sizes.processes,
                    unit="s/model",
                    note=f"end to end; {k * 3600 / seconds:,.0f} models/hour vs "
                    f"{sizes.processes * 3600 / alone:,.0f} ({sizes.processes} jobs one per process)",
                )
            )
    return rows


def engine_members(sizes: PackSizes, k: int, x: np.ndarray, y: np.ndarray, device: torch.device) -> list[PackMember]:
    pattern = build_pattern(OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "pattern" / "s3.yaml")))
    settings = TrainSettings(epochs=sizes.epochs, optimizer="adam", lr=0.01)
    members = []
    for seed in range(k):
        index = choose_poison_indices(y, 10, [0], seed)
        rows = to_tensor(pattern.apply(x[index], seed), device)
        members.append(PackMember(replace(settings, seed=0), torch.from_numpy(index).to(device), rows))
    return members


def engine_rows(sizes: PackSizes) -> list[Row]:
    """Seconds per model of the training alone, in this process: train_packed on K models against train_model on
    one at a time; the note gives the device memory each added model costs (CUDA: measured peak; CPU: its
    parameters, gradients, optimizer state, poisoned rows and index row, activations not counted)."""
    device = torch.device(sizes.device)
    data = load_images("mnist", sizes.data_root, train=sizes.train_limit)
    x_np, y_np = data.train_x, data.train_y
    x, y = tensors(x_np, y_np, device)
    shape = (x.shape[1], x.shape[2], x.shape[3])
    warm = [build_model("mlp3x256", shape, 10).to(device) for _ in range(2)]  # first calls, lazy set-up: not timed
    train_model(warm[0], x[:256], y[:256], TrainSettings(epochs=1))
    train_packed(warm, x[:256], y[:256], engine_members(sizes, 2, x_np[:256], y_np[:256], device))
    alone = 0.0
    for member in engine_members(sizes, sizes.processes, x_np, y_np, device):  # one after the other, as alone
        images = x.clone()
        images[member.poison_index] = member.poison_x
        torch.manual_seed(0)
        model = build_model("mlp3x256", shape, 10).to(device)
        with Timer(device) as timer:
            train_model(model, images, y, member.settings)
        alone += timer.seconds
    del images
    alone /= sizes.processes
    rows = []
    for k in sizes.packs:
        members = engine_members(sizes, k, x_np, y_np, device)
        models = []
        for _ in range(k):
            torch.manual_seed(0)
            models.append(build_model("mlp3x256", shape, 10).to(device))
        base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        with Timer(device) as timer:
            train_packed(models, x, y, members, at_once=k if sizes.all_at_once else None)
        if timer.peak_bytes is not None:
            per_model = (timer.peak_bytes - base) / k
        else:  # what each model keeps: weights, gradients, Adam's two moments, poisoned rows, index row
            params = sum(p.numel() for p in models[0].parameters()) * 4
            per_model = 4 * params + members[0].poison_x.numel() * 4 + len(x) * 8
        at_once = k if sizes.all_at_once or device.type == "cuda" else min(k, CPU_AT_ONCE)
        rows.append(
            Row(
                BENCHMARK,
                f"train_packed K={k} vs train_model one at a time",
                timer.seconds / k,
                alone,
                unit="s/model",
                note=f"training only, {at_once} at once, {len(x):,} images x {sizes.epochs} epoch(s); "
                f"{per_model / 2**20:.1f} MiB per added model",
                peak_bytes=timer.peak_bytes,
                key=PACK_KEY,
            )
        )
    return rows


def pack_rows(sizes: PackSizes, sweep: bool = True) -> list[Row]:
    """The sweep table (unless `sweep` is False), then the engine table."""
    return (sweep_rows(sizes) if sweep else []) + engine_rows(sizes)


def measure(device: str, quick: bool, data_root: str) -> list[Row]:
    """benchmarks/all.py's sizes, LargeMLP, Adam, 1 epoch. Quick: 256 training images, 1 model alone, packs of 2 and
    4, the engine only (a run.py launch alone takes longer than the whole quick budget; bench_job times launches).
    Full: all 60,000 training and 2,000 test images, 3 models alone, packs of 8, 32 and 128, sweep and engine."""
    data_root = str(Path(data_root).resolve())
    if quick:
        return pack_rows(PackSizes(data_root, device, 1, 256, 256, 1, (2, 4)), sweep=False)
    return pack_rows(PackSizes(data_root, device, 1, 60_000, 2_000, 3, (8, 32, 128)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("RARESPUR_DATA", "../shared/data"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-limit", type=int, default=10_000)
    parser.add_argument("--test-limit", type=int, default=2_000)
    parser.add_argument("--processes", type=int, default=3, help="models trained one at a time for the baselines")
    parser.add_argument("--packs", default="8,32,128", help="pack sizes K, comma-separated")
    parser.add_argument("--skip-sweep", action="store_true", help="only the engine table")
    parser.add_argument(
        "--all-at-once", action="store_true", help=f"engine: all K models at once on a CPU too (not {CPU_AT_ONCE})"
    )
    args = parser.parse_args()
    packs = tuple(int(k) for k in args.packs.split(","))
    sizes = PackSizes(
        str(Path(args.data_root).resolve()),
        args.device,
        args.epochs,
        args.train_limit,
        args.test_limit,
        args.processes,
        packs,
        args.all_at_once,
    )
    print(
        f"LargeMLP, MNIST {args.train_limit} training / {args.test_limit} test images, {args.epochs} epoch(s), "
        f"Adam, S3 n=10; device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n"
    )
    rows = pack_rows(sizes, sweep=not args.skip_sweep)
    print(markdown_table(rows))
    alone = rows[-1].baseline_seconds / args.epochs
    epoch_seconds = {model: (alone, args.train_limit) for model in grid_models()}
    gain = max([1.0, *(row.ratio for row in rows if row.key == PACK_KEY)])
    packed, one_at_a_time = (projected_grid_seconds(epoch_seconds, g, 0.0) / 3600 for g in (gain, 1.0))
    print(
        f"\nprojected training time of the MNIST + Fashion grids on this device, every model at LargeMLP's rate "
        f"({alone:.3f} s per epoch on {args.train_limit} images), packable jobs {gain:.2f}x faster in packs: "
        f"{packed:,.0f} h ({packed / 24:,.1f} days; one model at a time: {one_at_a_time:,.0f} h)"
    )


if __name__ == "__main__":
    main()
