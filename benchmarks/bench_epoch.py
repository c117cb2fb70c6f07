"""Seconds per training epoch: our engine vs a baseline that mimics the original implementation.

The baseline is what the original code does in one epoch: a per-sample
Dataset of tensors (image, label, sample weight) behind a torch DataLoader
(batch 128, shuffled, ``num_workers=4`` as in the original), ``.item()`` on
loss and accuracy every batch, then the test set through a DataLoader of
batch 32 (the original evaluates ``tst_ds`` after every epoch). A second
baseline keeps only the training loop with ``num_workers=0``, the most
favorable reading of the original. Ours keeps the whole dataset as one
tensor on the device and batches by index (rarespur.engine.loop.train_model) and
scores once at the end, not per epoch. All train with SGD on the same data,
side by side in one process; the script prints each ratio. benchmarks/all.py
also times every architecture of the paper grid (against the train loop only),
for its GPU-hours projection.

    python benchmarks/bench_epoch.py --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from common import EPOCH_KEY, Row, Timer, grid_models, load_images, markdown_table, max_peak, tensors
from torch.utils.data import DataLoader, Dataset

from rarespur.data.image_data import ImageData
from rarespur.engine.loop import TrainSettings, make_optimizer, train_model
from rarespur.models import build_model

BENCHMARK = "epoch"
FULL, LOOP_ONLY, OURS = "original, full epoch", "original, train loop only", "rarespur engine"


class PerSampleDataset(Dataset):
    """The original's CustomTensorDataset: one Python call per training example."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.tensors = (x, y, torch.ones(len(x)))

    def __getitem__(self, index: int):
        return tuple(t[index] for t in self.tensors)

    def __len__(self) -> int:
        return len(self.tensors[0])


def baseline_epochs(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    test: tuple[torch.Tensor, torch.Tensor],
    settings: TrainSettings,
    device: torch.device,
    workers: int,
    per_epoch_eval: bool,
) -> Timer:
    """The original's epochs on CPU-held data; the timer covers the epochs, not building the loaders."""
    optimizer = make_optimizer(model.parameters(), settings)
    loader = DataLoader(PerSampleDataset(x, y), batch_size=settings.batch_size, shuffle=True, num_workers=workers)
    test_loader = DataLoader(PerSampleDataset(*test), batch_size=32, shuffle=False, num_workers=workers)
    with Timer(device) as timer:
        for _ in range(settings.epochs):
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
    return timer


def ours_epochs(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, settings: TrainSettings, device: torch.device
) -> Timer:
    """train_model's epochs on the data moved to the device once (the move is not timed, as a job does it once)."""
    x, y = x.to(device), y.to(device)
    with Timer(device) as timer:
        train_model(model, x, y, settings)
    return timer


def epoch_rows(
    data: ImageData, models: list[str], epochs: int, repeats: int, device: torch.device, workers: int
) -> list[Row]:
    """Seconds per epoch, best of `repeats` alternating rounds: the first of `models` against both baselines, the
    others against the train loop only."""
    # the original asks for 4 workers whatever the machine; torch warns when there are fewer cores
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    x, y = tensors(data.train_x, data.train_y, torch.device("cpu"))
    test = tensors(data.test_x, data.test_y, torch.device("cpu"))
    h, w, c = data.image_shape
    settings = TrainSettings(epochs=epochs, batch_size=128, optimizer="sgd", lr=0.01)
    runs = {
        FULL: lambda m: baseline_epochs(m, x, y, test, settings, device, workers, True),
        LOOP_ONLY: lambda m: baseline_epochs(m, x, y, test, settings, device, 0, False),
        OURS: lambda m: ours_epochs(m, x, y, settings, device),
    }
    cases = [(models[0], name) for name in runs] + [(model, name) for model in models[1:] for name in (LOOP_ONLY, OURS)]
    best = dict.fromkeys(cases, np.inf)
    peak: dict[tuple[str, str], int | None] = dict.fromkeys(cases)
    for _ in range(repeats):
        for model_name, name in cases:
            torch.manual_seed(0)
            timer = runs[name](build_model(model_name, (c, h, w), data.num_classes).to(device))
            best[(model_name, name)] = min(best[(model_name, name)], timer.seconds / epochs)
            peak[(model_name, name)] = max_peak(peak[(model_name, name)], timer.peak_bytes)
    rows = []
    for model_name in models:
        ours = best[(model_name, OURS)]
        baselines = [FULL, LOOP_ONLY] if model_name == models[0] else [LOOP_ONLY]
        for name in baselines:
            notes = {FULL: f"DataLoader, {workers} workers, per-epoch test eval", LOOP_ONLY: "0 workers, no eval"}
            rows.append(
                Row(
                    BENCHMARK,
                    f"{model_name}: engine vs {name}",
                    ours,
                    best[(model_name, name)],
                    unit="s/epoch",
                    note=f"{len(x):,} images, batch 128, SGD; baseline {notes[name]}",
                    peak_bytes=peak[(model_name, OURS)],
                    key=EPOCH_KEY + model_name if name == LOOP_ONLY else "",
                    images=len(x),
                )
            )
    return rows


def measure(device: str, quick: bool, data_root: str) -> list[Row]:
    """benchmarks/all.py's sizes. Quick: 512 MNIST training and 256 test images, 1 epoch, 1 round. Full: all 60,000
    training and 10,000 test images, 2 epochs, best of 2 rounds. Both: LargeMLP against both baselines, the grid's
    other architectures against the train loop only."""
    data = load_images("mnist", data_root, *((512, 256) if quick else (None, None)))
    models = ["mlp3x256", *(m for m in grid_models() if m != "mlp3x256")]
    epochs, repeats = (1, 1) if quick else (2, 2)
    return epoch_rows(data, models, epochs, repeats, torch.device(device), workers=4)


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
    data = load_images(args.dataset, args.data_root)
    print(
        f"{args.dataset} {args.model} batch 128, {len(data.train_y)} train images, device {args.device}, "
        f"torch threads {torch.get_num_threads()}, best of {args.repeats} x {args.epochs} epochs\n"
    )
    print(
        markdown_table(
            epoch_rows(data, [args.model], args.epochs, args.repeats, torch.device(args.device), args.workers)
        )
    )


if __name__ == "__main__":
    main()
