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

Then the projected wall time of the MNIST + Fashion grids (docs/science.md#paper-grids, about 22,000 runs of 70 epochs
on 60,000 images) on this device at the best measured pack size.

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
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from rarespur.data.loaders import load_dataset
from rarespur.data.patterns import build_pattern
from rarespur.data.poisoning import choose_poison_indices
from rarespur.engine.loop import train_model
from rarespur.engine.packed_loop import CPU_AT_ONCE, PackMember, train_packed
from rarespur.engine.scoring import to_tensor
from rarespur.engine.settings import TrainSettings
from rarespur.models import build_model

REPO = Path(__file__).resolve().parents[1]
GRID_RUNS = 22_000  # MNIST + Fashion score, architecture and variant grids (docs/science.md#paper-grids)
GRID_EPOCHS, GRID_IMAGES = 70, 60_000


def sweep_args(args: argparse.Namespace, store: Path) -> list[str]:
    return [
        "dataset=mnist",
        f"data.root={args.data_root}",
        "model=mlp3x256",
        "optim=adam",
        "pattern=s3",
        "poison.count=10",
        f"epochs={args.epochs}",
        f"data.train_limit={args.train_limit}",
        f"data.test_limit={args.test_limit}",
        f"device={args.device}",
        "progress=false",
        f"results_dir={store}",
    ]


def run_quiet(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return time.perf_counter() - start


def sweep_rows(args: argparse.Namespace, packs: list[int]) -> list[tuple[str, int, float]]:
    """(label, models, seconds) of the product run end to end, each in a fresh store."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "alone"
        seconds = sum(
            run_quiet([sys.executable, "run.py", *sweep_args(args, store), f"poison.seed={seed}"])
            for seed in range(args.processes)
        )
        rows.append(("one job per process", args.processes, seconds))
        for k in packs:
            store = Path(tmp) / f"pack{k}"
            seeds = f"poison.seed=range({k})"
            cmd = [sys.executable, "run.py", "-m", *sweep_args(args, store), seeds, f"pack.size={k}"]
            cmd.append(f"hydra.sweep.dir={Path(tmp) / f'sweep{k}'}")
            rows.append((f"pack.size={k}", k, run_quiet(cmd)))
    return rows


def engine_members(args: argparse.Namespace, k: int, x: np.ndarray, y: np.ndarray, device: torch.device):
    pattern = build_pattern(OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "pattern" / "s3.yaml")))
    settings = TrainSettings(epochs=args.epochs, optimizer="adam", lr=0.01)
    members = []
    for seed in range(k):
        index = choose_poison_indices(y, 10, [0], seed)
        rows = to_tensor(pattern.apply(x[index], seed), device)
        members.append(PackMember(replace(settings, seed=0), torch.from_numpy(index).to(device), rows))
    return members


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def engine_rows(args: argparse.Namespace, packs: list[int]) -> list[tuple[str, int, float, float | None]]:
    """(label, models, seconds, bytes per added model) of the training alone, in this process."""
    device = torch.device(args.device)
    data = load_dataset("mnist", root=args.data_root, limits=(args.train_limit, None))
    x_np, y_np = data.train_x, data.train_y
    x, y = to_tensor(x_np, device), torch.from_numpy(y_np).to(device)
    shape = (x.shape[1], x.shape[2], x.shape[3])
    rows = []
    warm = [build_model("mlp3x256", shape, 10).to(device) for _ in range(2)]  # first calls, lazy set-up: not timed
    train_model(warm[0], x[:256], y[:256], TrainSettings(epochs=1))
    train_packed(warm, x[:256], y[:256], engine_members(args, 2, x_np[:256], y_np[:256], device))
    seconds = 0.0
    for member in engine_members(args, args.processes, x_np, y_np, device):  # one after the other, as alone
        images = x.clone()
        images[member.poison_index] = member.poison_x
        torch.manual_seed(0)
        model = build_model("mlp3x256", shape, 10).to(device)
        synchronize(device)
        start = time.perf_counter()
        train_model(model, images, y, member.settings)
        synchronize(device)
        seconds += time.perf_counter() - start
    rows.append(("train_model, one model at a time", args.processes, seconds, None))
    del images
    for k in packs:
        members = engine_members(args, k, x_np, y_np, device)
        models = []
        for _ in range(k):
            torch.manual_seed(0)
            models.append(build_model("mlp3x256", shape, 10).to(device))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        synchronize(device)
        start = time.perf_counter()
        train_packed(models, x, y, members, at_once=k if args.all_at_once else None)
        synchronize(device)
        seconds = time.perf_counter() - start
        if device.type == "cuda":
            per_model = (torch.cuda.max_memory_allocated(device) - base) / k
        else:  # what each model keeps: weights, gradients, Adam's two moments, poisoned rows, index row
            params = sum(p.numel() for p in models[0].parameters()) * 4
            per_model = 4 * params + members[0].poison_x.numel() * 4 + len(x) * 8
        rows.append((f"train_packed, K={k}", k, seconds, per_model))
    return rows


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
    args.data_root = str(Path(args.data_root).resolve())
    packs = [int(k) for k in args.packs.split(",")]
    print(
        f"LargeMLP, MNIST {args.train_limit} training / {args.test_limit} test images, {args.epochs} epoch(s), "
        f"Adam, S3 n=10; device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n"
    )
    if not args.skip_sweep:
        rows = sweep_rows(args, packs)
        alone = rows[0][1] / rows[0][2]
        print(f"{'sweep (run.py, end to end)':34s} {'models':>7s} {'seconds':>9s} {'models/hour':>12s} {'ratio':>7s}")
        for label, models, seconds in rows:
            rate = models / seconds
            print(f"{label:34s} {models:7d} {seconds:9.1f} {rate * 3600:12.0f} {rate / alone:6.1f}x")
        print()
    rows = engine_rows(args, packs)
    alone_s = rows[0][2] / rows[0][1]
    print(f"{'engine (training only)':34s} {'models':>7s} {'s/model':>9s} {'ratio':>7s} {'MiB per added model':>20s}")
    for label, models, seconds, per_model in rows:
        memory = f"{per_model / 2**20:20.1f}" if per_model is not None else f"{'':20s}"
        print(f"{label:34s} {models:7d} {seconds / models:9.3f} {alone_s / (seconds / models):6.1f}x {memory}")
    best = min(seconds / models for _, models, seconds, _ in rows)
    scale = (GRID_EPOCHS / args.epochs) * (GRID_IMAGES / args.train_limit)
    hours = best * scale * GRID_RUNS / 3600
    print(
        f"\nprojected: {GRID_RUNS} runs x {GRID_EPOCHS} epochs x {GRID_IMAGES} images at the best rate here "
        f"({best:.3f} s per model for this cut) = {hours:,.0f} h of training on this device "
        f"({hours / 24:,.1f} days; one model at a time: {alone_s * scale * GRID_RUNS / 3600:,.0f} h)"
    )


if __name__ == "__main__":
    main()
