"""Seconds per training epoch: our engine vs a baseline that mimics the original implementation.

The baseline is what the original code does in one epoch: a per-sample
Dataset of tensors (image, label, sample weight) behind a torch DataLoader
(batch 128, shuffled, ``num_workers=4`` as in the original), ``.item()`` on
loss and accuracy every batch, then the test set through a DataLoader of
batch 32 (the original evaluates ``tst_ds`` after every epoch). A second
baseline row keeps only the training loop with ``num_workers=0``, the most
favorable reading of the original. Ours keeps the whole dataset as one
tensor on the device and batches by index (rarespur.engine.loop.train_model) and
scores once at the end, not per epoch. All train LargeMLP with SGD on the
same data, side by side in one process; the script prints the ratios.

    python benchmarks/bench_epoch.py --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from rarespur.data.loaders import load_dataset
from rarespur.engine.loop import TrainSettings, make_optimizer, train_model
from rarespur.engine.scoring import to_tensor
from rarespur.models import build_model


class PerSampleDataset(Dataset):
    """The original's CustomTensorDataset: one Python call per training example."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.tensors = (x, y, torch.ones(len(x)))

    def __getitem__(self, index: int):
        return tuple(t[index] for t in self.tensors)

    def __len__(self) -> int:
        return len(self.tensors[0])


def baseline_epochs(
    model, x, y, test, settings: TrainSettings, epochs: int, device: torch.device, workers: int, per_epoch_eval: bool
) -> float:
    optimizer = make_optimizer(model.parameters(), settings)
    loader = DataLoader(PerSampleDataset(x, y), batch_size=settings.batch_size, shuffle=True, num_workers=workers)
    test_loader = DataLoader(PerSampleDataset(*test), batch_size=32, shuffle=False, num_workers=workers)
    start = time.perf_counter()
    for _ in range(epochs):
        train_loss, train_acc = 0.0, 0.0
        for data in loader:
            model.train()
            xb, yb, _ = (d.to(device) for d in data)
            optimizer.zero_grad()
            outputs = model(xb)
            loss = F.cross_entropy(outputs, yb, reduction="none").mean()
            loss.backward()
            optimizer.step()
            train_loss += loss.item() * len(xb)
            train_acc += (outputs.argmax(dim=1) == yb).sum().float().item()
        if per_epoch_eval:
            model.eval()
            with torch.no_grad():
                for tx, ty, _ in test_loader:
                    outputs = model(tx.to(device))
                    train_loss += F.cross_entropy(outputs, ty.to(device), reduction="sum").item()
                    train_acc += (outputs.argmax(dim=1) == ty.to(device)).sum().float().item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / epochs


def ours_epochs(model, x, y, settings: TrainSettings, device: torch.device) -> float:
    x, y = x.to(device), y.to(device)
    start = time.perf_counter()
    train_model(model, x, y, settings)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / settings.epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--model", default="largemlp")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds; the best of each is kept")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers of the original baseline")
    args = parser.parse_args()
    # the original asks for 4 workers whatever the machine; torch warns when there are fewer cores
    warnings.filterwarnings("ignore", message="This DataLoader will create")

    device = torch.device(args.device)
    data = load_dataset(args.dataset, root=args.data_root)
    x = to_tensor(data.train_x, torch.device("cpu"))
    y = torch.from_numpy(data.train_y)
    test = (to_tensor(data.test_x, torch.device("cpu")), torch.from_numpy(data.test_y))
    h, w, c = data.image_shape
    settings = TrainSettings(epochs=args.epochs, batch_size=128, optimizer="sgd", lr=0.01)
    rows = {
        f"original (DataLoader, {args.workers} workers, per-epoch test eval)": lambda m: baseline_epochs(
            m, x, y, test, settings, args.epochs, device, args.workers, True
        ),
        "original train loop only (0 workers)": lambda m: baseline_epochs(
            m, x, y, test, settings, args.epochs, device, 0, False
        ),
        "rarespur engine (tensor batches)": lambda m: ours_epochs(m, x, y, settings, device),
    }
    best = dict.fromkeys(rows, np.inf)
    for _ in range(args.repeats):
        for name, run in rows.items():
            torch.manual_seed(0)
            best[name] = min(best[name], run(build_model(args.model, (c, h, w), data.num_classes).to(device)))
    ours = best["rarespur engine (tensor batches)"]
    print(
        f"{args.dataset} {args.model} batch 128, {len(x)} train images, device {device}, "
        f"torch threads {torch.get_num_threads()}, best of {args.repeats} x {args.epochs} epochs"
    )
    print(f"{'implementation':<62} {'s/epoch':>8} {'ratio':>7}")
    for name, seconds in best.items():
        print(f"{name:<62} {seconds:8.3f} {seconds / ours:6.2f}x")


if __name__ == "__main__":
    main()
