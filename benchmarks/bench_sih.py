"""Seconds per epoch of the debiasing methods on Colored MNIST: our engine vs the SiH authors' loop.

The baseline is the training loop of the authors' ``train.py`` (mvandenhi/Signal-is-Harder), written out
here with their math, so that it does not move when our engine does:

- data: their ``AttributeDataset`` keeps uint8 H x W x C images and converts each sample with
  ``ToTensor`` behind two index-wrapping datasets and a shuffled ``DataLoader`` (batch 256, ``drop_last``);
  we give it ``num_workers=0``, not their 1: on 2 cores a loader process takes a core from the matrix
  products, so 0 is the more favorable reading;
- model: per network ``z, logits, mean, logvar`` with ``Normal(mean, std + 1e-8).rsample()``; the signal
  model's decoder ends in a sigmoid and is scored with ``F.binary_cross_entropy``; their GCE module;
- step: two Adam optimizers (torch's default implementation), one backward pass, and per batch their
  ``np.isnan(...item())`` checks, ``evaluate_batch`` bookkeeping and ``.item()`` for the progress bar.

Ours is :func:`rarespur.engine.loop.train_model` with the :class:`~rarespur.methods.debias.sih.SignalIsHarder`
objective: the whole set as one float tensor, batches by index, one fused Adam over every module, BCE on
the decoder's logits. With the same initial weights, order and latent draws both give the same losses
(``tests/test_debias.py``). Vanilla and LfF epochs of our engine are timed for scale.

    python benchmarks/bench_sih.py --data-root ../shared/data [--epochs 2] [--device cuda] [--profile]
    python benchmarks/bench_sih.py --data-root ../shared/data --baseline 32728eb   # an older engine beside this one
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal
from torch.utils.data import DataLoader, Dataset, Sampler

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, Row, markdown_table, synchronize, worktree  # noqa: E402

from rarespur.data.loaders import load_dataset  # noqa: E402
from rarespur.engine.loop import TrainSettings, train_model  # noqa: E402
from rarespur.engine.scoring import to_tensor  # noqa: E402
from rarespur.methods.debias.debiaser import Debiaser, fresh_copy  # noqa: E402
from rarespur.methods.debias.lff import LearningFromFailure  # noqa: E402
from rarespur.methods.debias.sih import SignalIsHarder  # noqa: E402
from rarespur.models import build_model  # noqa: E402

BATCH, Q, REC_WEIGHT = 256, 0.7, 100.0


class AttributeDataset(Dataset):
    """Their dataset: uint8 images, ``ToTensor`` per sample (H x W x C -> C x H x W float / 255)."""

    def __init__(self, images: np.ndarray, attrs: torch.Tensor) -> None:
        self.data, self.attr = images, attrs

    def __len__(self) -> int:
        return len(self.attr)

    def __getitem__(self, index: int):
        image = torch.from_numpy(self.data[index]).permute(2, 0, 1).contiguous().float().div(255)
        return image, self.attr[index]


class IdxDataset(Dataset):
    """Their ``IdxDataset`` / ``IdxDataset2``: the sample with its index in front (twice wrapped)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return (index, *self.dataset[index])


class FixedOrder(Sampler):
    """The engine's shuffled order, so a test can give both loops the same batches."""

    def __init__(self, order: torch.Tensor) -> None:
        self.order = order.tolist()

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def authors_forward(model: nn.Module, x: torch.Tensor):
    """Their ``MLP_VAE.forward``: z, logits, mean, logvar."""
    mean, logvar = model.encode(x)
    z = Normal(mean, logvar.mul(0.5).exp_() + 1e-8).rsample()
    return z, model.classifier(z), mean, logvar


def generalized_ce(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Their ``GeneralizedCELoss`` (with its NaN checks)."""
    p = F.softmax(logits, dim=1)
    if np.isnan(p.mean().item()):
        raise NameError("GCE_p")
    yg = torch.gather(p, 1, torch.unsqueeze(label, 1))
    return F.cross_entropy(logits, label, reduction="none") * yg.squeeze().detach() ** Q


def evaluate_batch(logit: torch.Tensor, attr: torch.Tensor, loss: torch.Tensor):
    """Their per-batch metrics: accuracy and loss on bias-aligned and -conflicting samples."""
    label, bias = attr[:, 0], attr[:, 1]
    correct = (logit.data.argmax(1) == label).long()
    aligned = (label == bias).long()
    return (
        correct[aligned == 1].sum(),
        correct[aligned == 0].sum(),
        correct.sum(),
        loss[aligned == 0].mean(),
        loss.mean(),
    )


def authors_style_epoch(
    networks: tuple[nn.Module, nn.Module, nn.Module],
    images: np.ndarray,
    attrs: torch.Tensor,
    device: torch.device,
    order: torch.Tensor | None = None,
) -> list[dict[str, float]]:
    """One epoch of their loop; per batch the loss and its terms (means over the batch)."""
    model_s, model_b, decoder = networks
    opt_s = torch.optim.Adam([*model_s.parameters(), *decoder.parameters()], lr=1e-3)
    opt_b = torch.optim.Adam(model_b.parameters(), lr=1e-3)
    dataset = IdxDataset(IdxDataset(AttributeDataset(images, attrs)))
    # With a fixed order, the loader's own generator draws its worker base seed, which would otherwise come
    # from the global one and shift every latent draw against the engine's.
    fixed = order is not None
    loader = DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=not fixed,
        sampler=FixedOrder(order) if fixed else None,
        generator=torch.Generator().manual_seed(0) if fixed else None,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    model_s.train()
    model_b.train()
    out = []
    for _, _, data, attr in loader:
        data, attr = data.to(device), attr.to(device)
        label = attr[:, 0]
        z_s, logits_s, mean_s, logvar_s = authors_forward(model_s, data)
        z_b, logits_b, mean_b, logvar_b = authors_forward(model_b, data)
        mean, logvar = torch.cat((mean_s, mean_b), dim=1), torch.cat((logvar_s, logvar_b), dim=1)
        x_reconst = decoder(torch.cat((z_s, z_b), dim=1))
        pixels = x_reconst.view(len(x_reconst), -1).shape[1]
        reconst = F.binary_cross_entropy(x_reconst, data, reduction="none").sum(dim=(1, 2, 3)) / pixels * REC_WEIGHT
        kl_div = -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp(), dim=1) / pixels
        prob_b = F.softmax(logits_b, dim=1)
        if np.isnan(prob_b.mean().item()):
            raise NameError("prob_b")
        y_hat_b = torch.gather(prob_b, 1, torch.unsqueeze(label, 1)).squeeze().detach().cpu()
        weight = ((1 - y_hat_b) ** Q).detach().to(device)
        loss_s = evaluate_batch(logits_s, attr, F.cross_entropy(logits_s, label, reduction="none") * weight)[-1]
        loss_b = evaluate_batch(logits_b, attr, generalized_ce(logits_b, label))[-1]
        if torch.isnan(loss_s) or torch.isnan(loss_b):
            raise NameError("loss_update")
        opt_s.zero_grad()
        opt_b.zero_grad()
        loss = loss_s + loss_b + reconst.mean() + kl_div.mean()
        loss.backward()
        opt_s.step()
        opt_b.step()
        out.append(
            {
                "loss": loss.item(),
                "loss_s": loss_s.item(),
                "loss_b": loss_b.item(),
                "rec": reconst.mean().item() / REC_WEIGHT,
                "kl": kl_div.mean().item(),
            }
        )
    return out


def authors_networks(shape: tuple[int, ...], seed: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Signal model, bias model and decoder drawn in the order SiH's setup draws them (equal initial weights)."""
    torch.manual_seed(seed)
    model = build_model("vae_mlp", shape, 10)
    return model, fresh_copy(model), model.decoder(2 * model.latent_dim)


def engine_epochs(objective: Debiaser, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0) -> list[dict]:
    """Our engine's epoch rows for `objective` on a fresh ``vae_mlp`` (seeded like :func:`authors_networks`)."""
    torch.manual_seed(seed)
    model = build_model("vae_mlp", tuple(x.shape[1:]), 10).to(x.device)
    settings = TrainSettings(
        epochs=epochs, batch_size=BATCH, optimizer="adam", lr=1e-3, lr_schedule="constant", seed=seed
    )
    return train_model(model, x, y, settings, objective=objective)


def colored_mnist(data_root: str, limit: int) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """Colored MNIST (1 % bias-conflicting) as the authors store it (uint8 N x H x W x C, labels and bias
    colors) and our float images (N x C x H x W)."""
    data = load_dataset("cmnist", data_root, options={"conflict_ratio": 0.01, "color_std": 0.005, "seed": 0})
    x = data.train_x[:limit]
    images = np.clip(np.round(x * 255), 0, 255).astype(np.uint8)
    attrs = torch.from_numpy(np.stack([data.train_y[:limit], data.train_bias[:limit]], 1).astype(np.int64))
    return images, attrs, images.astype(np.float32) / 255


def _seconds(fn, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def measure(device: str, quick: bool, data_root: str, epochs: int = 1) -> list[Row]:
    """Seconds per epoch: authors-style SiH (the baseline of every row), SiH, LfF and vanilla in our engine.

    Full size: the authors' 54,000 training images; quick: 2,048."""
    dev = torch.device(device)
    limit = 2048 if quick else 54_000
    images, attrs, x_np = colored_mnist(data_root, limit)
    x, y = to_tensor(x_np, dev), attrs[:, 0].to(dev)
    shape = tuple(x.shape[1:])

    def authors(images: np.ndarray = images, attrs: torch.Tensor = attrs, epochs: int = epochs) -> None:
        networks = tuple(net.to(dev) for net in authors_networks(shape, 0))
        for _ in range(epochs):
            authors_style_epoch(networks, images, attrs, dev)

    # One batch of each first, untimed: the first optimizer step imports torch._dynamo (a second or more),
    # and the first kernels warm up; neither belongs to an epoch.
    authors(images[:BATCH], attrs[:BATCH], 1)
    engine_epochs(SignalIsHarder(), x[:BATCH], y[:BATCH], 1)
    baseline = _seconds(authors, dev) / epochs
    case = f"Colored MNIST, {limit:,} images, batch {BATCH}"
    rows = [Row("sih", f"SiH, authors-style loop ({case})", baseline, baseline, "s/epoch")]
    for name, objective in (("SiH", SignalIsHarder), ("LfF", LearningFromFailure), ("vanilla", Debiaser)):
        seconds = _seconds(lambda objective=objective: engine_epochs(objective(), x, y, epochs), dev) / epochs
        rows.append(Row("sih", f"{name}, rarespur engine ({case})", seconds, baseline, "s/epoch"))
    return rows


def profile(device: str, data_root: str, batches: int = 40) -> None:
    """Where a SiH step's time goes: torch's profiler over `batches` batches of our engine."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    dev = torch.device(device)
    _, attrs, x_np = colored_mnist(data_root, BATCH * batches)
    x, y = to_tensor(x_np, dev), attrs[:, 0].to(dev)
    engine_epochs(SignalIsHarder(), x, y, 1)  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        engine_epochs(SignalIsHarder(), x, y, 1)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    train = _seconds(lambda: engine_epochs(SignalIsHarder(), x, y, 1), dev)
    # the authors' protocol validates the whole loss on a 10 % split every epoch, forward only, on the means
    torch.manual_seed(0)
    model = build_model("vae_mlp", tuple(x.shape[1:]), 10).to(dev)
    sih = SignalIsHarder()
    sih.setup(model, y)
    for module in sih.modules().values():
        module.to(dev)
    held_out = x[: len(x) // 10], y[: len(y) // 10]
    with torch.inference_mode():
        validation = _seconds(lambda: sih.validation_loss(model, *held_out), dev)
    print(f"one epoch {train:.2f} s; validating a 10 % split {validation:.3f} s ({100 * validation / train:.1f} %)")


def _rows_of(package: Path, args: argparse.Namespace) -> list[Row]:
    """The rows of this script run on `package`'s rarespur (a checkout of another commit), in a fresh process."""
    command = [sys.executable, __file__, "--json", "--device", args.device, "--epochs", str(args.epochs)]
    command += ["--data-root", str(Path(args.data_root).resolve()), *(["--quick"] if args.quick else [])]
    done = subprocess.run(
        command, env={**os.environ, "PYTHONPATH": str(package)}, capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"bench_sih on {package} failed:\n{done.stderr[-2000:]}")
    return [Row(**row) for row in json.loads(done.stdout.strip().splitlines()[-1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="2,048 images instead of 54,000")
    parser.add_argument("--profile", action="store_true", help="also print where a SiH step's time goes")
    parser.add_argument("--baseline", help="a git revision whose engine runs beside this checkout's, same loop")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # rows for --baseline
    args = parser.parse_args()
    if args.json:
        print(json.dumps([asdict(row) for row in measure(args.device, args.quick, args.data_root, args.epochs)]))
        return
    print(f"{args.epochs} epoch(s) on {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.baseline:
        with worktree(args.baseline) as tree:
            before = _rows_of(tree, args)
        after = _rows_of(REPO, args)
        print(f"| case | {args.baseline} s/epoch | vs authors | this checkout s/epoch | vs authors |")
        print("|---|---:|---:|---:|---:|")
        for old, new in zip(before, after):
            print(f"| {new.case} | {old.seconds:.2f} | {old.ratio:.2f}x | {new.seconds:.2f} | {new.ratio:.2f}x |")
    else:
        print(markdown_table(measure(args.device, args.quick, args.data_root, args.epochs)))
    if args.profile:
        profile(args.device, args.data_root)


if __name__ == "__main__":
    main()
