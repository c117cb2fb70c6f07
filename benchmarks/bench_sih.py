"""Seconds per epoch of the debiasing methods on Colored MNIST: our engine vs the SiH authors' style of loop.

The baseline mimics the authors' ``train.py``: a per-sample Dataset behind a DataLoader (batch 256,
shuffled, ``drop_last``, ``num_workers=0``, the most favorable setting on a laptop), two Adam optimizers
(one per VAE) and ``.item()`` on the loss terms every batch. Ours is :func:`rarespur.engine.loop.train_model`
with the :class:`~rarespur.methods.debias.sih.SignalIsHarder` objective: the whole set as one tensor, batches by
index, one optimizer with a parameter group per module. Both compute the same loss on the same data and
model sizes, side by side in one process; vanilla and LfF epochs are timed for scale.

    python benchmarks/bench_sih.py --data-root ../shared/data [--epochs 2] [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader, Dataset

from rarespur.data.loaders import load_dataset
from rarespur.engine.loop import TrainSettings, train_model
from rarespur.engine.scoring import to_tensor
from rarespur.methods.debias.debiaser import Debiaser
from rarespur.methods.debias.lff import LearningFromFailure
from rarespur.methods.debias.sih import SignalIsHarder
from rarespur.models import build_model


class PerSample(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __getitem__(self, index: int):
        return self.x[index], self.y[index]

    def __len__(self) -> int:
        return len(self.x)


def authors_style_epochs(x: torch.Tensor, y: torch.Tensor, epochs: int, device: torch.device) -> float:
    """Seconds per epoch of a loop shaped like the authors' (their loss via our SiH terms, same math)."""
    torch.manual_seed(0)
    model = build_model("vae_mlp", tuple(x.shape[1:]), 10).to(device)
    sih = SignalIsHarder()
    sih.setup(model, y)
    sih.decoder.to(device)
    opt_s = torch.optim.Adam([*model.parameters(), *sih.decoder.parameters()], lr=1e-3)
    opt_b = torch.optim.Adam(sih.bias_model.parameters(), lr=1e-3)
    loader = DataLoader(PerSample(x.cpu(), y.cpu()), batch_size=256, shuffle=True, drop_last=True)
    start = time.perf_counter()
    for _ in range(epochs):
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            terms = sih.terms(model, xb, yb, sample=True)
            loss = terms["total"].mean()
            opt_s.zero_grad()
            opt_b.zero_grad()
            loss.backward()
            opt_s.step()
            opt_b.step()
            for key in ("loss_s", "loss_b", "rec", "kl"):
                terms[key].mean().item()
    return (time.perf_counter() - start) / epochs


def engine_epochs(objective, model_name: str, x, y, epochs: int) -> float:
    torch.manual_seed(0)
    model = build_model(model_name, tuple(x.shape[1:]), 10).to(x.device)
    settings = TrainSettings(epochs=epochs, batch_size=256, optimizer="adam", lr=1e-3, lr_schedule="constant")
    start = time.perf_counter()
    train_model(model, x, y, settings, objective=objective)
    return (time.perf_counter() - start) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    data = load_dataset("cmnist", args.data_root, options={"conflict_ratio": 0.01, "color_std": 0.005, "seed": 0})
    x, y = to_tensor(data.train_x[:54000], device), torch.from_numpy(data.train_y[:54000]).to(device)
    print(f"Colored MNIST (1 % conflicting), 54,000 training images, batch 256, {args.epochs} epochs, {device}")
    rows = [
        ("SiH, authors-style loop", authors_style_epochs(x, y, args.epochs, device)),
        ("SiH, rarespur engine", engine_epochs(SignalIsHarder(), "vae_mlp", x, y, args.epochs)),
        ("LfF, rarespur engine", engine_epochs(LearningFromFailure(), "vae_mlp", x, y, args.epochs)),
        ("vanilla, rarespur engine", engine_epochs(Debiaser(), "vae_mlp", x, y, args.epochs)),
    ]
    baseline = rows[0][1]
    print(f"{'':28s} {'s/epoch':>8s} {'speed-up vs authors-style SiH':>30s}")
    for name, seconds in rows:
        print(f"{name:28s} {seconds:8.2f} {baseline / seconds:29.2f}x")


if __name__ == "__main__":
    main()
