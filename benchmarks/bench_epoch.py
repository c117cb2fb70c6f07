"""Seconds per training epoch: our engine vs a baseline that mimics the original implementation.

The baseline is what the original code does: a per-sample Dataset of tensors
(returning image, label and sample weight), a torch DataLoader with batch 128
and shuffling, and a loop that calls ``.item()`` on loss and accuracy every
batch. Ours keeps the whole dataset as one tensor on the device and batches by
index (rarespur.train.train_model). Both train LargeMLP with SGD on the same
data, side by side in one process, and the script prints the ratio.

    python benchmarks/bench_epoch.py --data-root ../shared/data
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from rarespur.data import load_dataset
from rarespur.evaluate import to_tensor
from rarespur.models import build_model
from rarespur.train import TrainSettings, make_optimizer, train_model


class PerSampleDataset(Dataset):
    """The original's CustomTensorDataset: one Python call per training example."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.tensors = (x, y, torch.ones(len(x)))

    def __getitem__(self, index: int):
        return tuple(t[index] for t in self.tensors)

    def __len__(self) -> int:
        return len(self.tensors[0])


def baseline_epochs(model, x, y, settings: TrainSettings, epochs: int, device: torch.device) -> float:
    optimizer = make_optimizer(model, settings)
    loader = DataLoader(PerSampleDataset(x, y), batch_size=settings.batch_size, shuffle=True, num_workers=0)
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
    args = parser.parse_args()

    device = torch.device(args.device)
    data = load_dataset(args.dataset, root=args.data_root)
    x = to_tensor(data.train_x, torch.device("cpu"))
    y = torch.from_numpy(data.train_y)
    h, w, c = data.image_shape
    settings = TrainSettings(epochs=args.epochs, batch_size=128, optimizer="sgd", lr=0.01)
    best = {"baseline": np.inf, "ours": np.inf}
    for _ in range(args.repeats):
        torch.manual_seed(0)
        model = build_model(args.model, (c, h, w), data.num_classes).to(device)
        best["baseline"] = min(best["baseline"], baseline_epochs(model, x, y, settings, args.epochs, device))
        torch.manual_seed(0)
        model = build_model(args.model, (c, h, w), data.num_classes).to(device)
        best["ours"] = min(best["ours"], ours_epochs(model, x, y, settings, device))
    print(f"{args.dataset} {args.model} batch 128, {len(x)} images, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'implementation':<32} {'s/epoch':>8}")
    print(f"{'baseline (DataLoader, per-sample)':<32} {best['baseline']:8.3f}")
    print(f"{'rarespur engine (tensor batches)':<32} {best['ours']:8.3f}")
    print(f"speed-up: {best['baseline'] / best['ours']:.2f}x")


if __name__ == "__main__":
    main()
