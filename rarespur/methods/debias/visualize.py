"""SiH's bias visualization (docs/science.md#signal-is-harder): move an image's bias latent until the bias head changes
its mind, decode.

DeepFool (overshoot 0.02, at most 20 steps, as the authors' ``util.DeepFool`` on latents) pushes the bias
encoder's mean mu_b towards a target class drawn from the other classes, stepping along the gradient of
logit_target - logit_predicted, until the bias head predicts the target. Decoding concat(mu_s, mu_b')
shows what the bias is: on Colored MNIST the digit keeps its shape and takes the target class's color.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rarespur.models.vae import EncoderClassifier


def deepfool_latent(
    head: nn.Module, z: torch.Tensor, target: torch.Tensor, overshoot: float = 0.02, steps: int = 20
) -> torch.Tensor:
    """Latents near `z` that `head` classifies as `target` (those it never reaches stay where they stopped)."""
    z = z.detach().clone()
    for _ in range(steps):
        z.requires_grad_(True)
        logits = head(z)
        pred = logits.argmax(1)
        active = pred != target
        if not active.any():
            break
        rows = torch.arange(len(z), device=z.device)
        diff = logits[rows, target] - logits[rows, pred]
        (grad,) = torch.autograd.grad(diff[active].sum(), z)
        with torch.no_grad():
            step = diff.abs()[:, None] / (grad.pow(2).sum(1, keepdim=True) + 1e-8) * grad
            z = torch.where(active[:, None], z + (1 + overshoot) * step, z).detach()
    return z.detach()


@dataclass(frozen=True)
class BiasSwap:
    original: np.ndarray  # N x C x H x W
    reconstruction: np.ndarray  # decode(mu_s, mu_b)
    perturbed: np.ndarray  # decode(mu_s, mu_b')
    label: np.ndarray  # the true class
    target: np.ndarray  # the class the bias head was pushed to
    flipped: np.ndarray  # whether the bias head predicts the target at mu_b'


@torch.no_grad()
def bias_swap(
    signal: EncoderClassifier,
    bias: EncoderClassifier,
    decoder: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int,
    overshoot: float = 0.02,
) -> BiasSwap:
    """Reconstructions of `x` before and after DeepFool moved its bias latent to a random other class."""
    for module in (signal, bias, decoder):
        module.eval()
    num_classes = bias.classifier[-1].out_features
    generator = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, num_classes, (len(y),), generator=generator).to(y.device)
    target = (y + shift) % num_classes
    mu_s, mu_b = signal.encode(x)[0], bias.encode(x)[0]
    with torch.enable_grad():
        moved = deepfool_latent(bias.classifier, mu_b, target, overshoot)
    return BiasSwap(
        original=x.cpu().numpy(),
        reconstruction=decoder(torch.cat([mu_s, mu_b], 1)).cpu().numpy(),
        perturbed=decoder(torch.cat([mu_s, moved], 1)).cpu().numpy(),
        label=y.cpu().numpy(),
        target=target.cpu().numpy(),
        flipped=(bias.classifier(moved).argmax(1) == target).cpu().numpy(),
    )


def pick_examples(signal: nn.Module, bias: nn.Module, x: torch.Tensor, y: torch.Tensor, per_class: int) -> torch.Tensor:
    """`per_class` test images per class, those both heads classify correctly first (as the authors pick),
    others where there are too few (a model that has not learned much still gets a picture)."""
    with torch.no_grad():
        both = ((signal(x).argmax(1) == y) & (bias(x).argmax(1) == y)).cpu()
    y = y.cpu()
    chosen = []
    for c in torch.unique(y):
        members = torch.nonzero(y == c).flatten()
        chosen.append(members[torch.argsort((~both[members]).int(), stable=True)][:per_class])
    return torch.cat(chosen).to(x.device)


def save_grid(swap: BiasSwap, path: Path, classes: tuple[str, ...]) -> None:
    """A PNG: one column per image, rows original / reconstruction / bias moved to the target class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(swap.label)
    fig, axes = plt.subplots(3, n, figsize=(1.1 * n + 1.4, 4.0), squeeze=False)
    rows = (("original", swap.original), ("reconstruction", swap.reconstruction), ("bias moved", swap.perturbed))
    for r, (name, images) in enumerate(rows):
        for i in range(n):
            ax = axes[r, i]
            image = images[i].transpose(1, 2, 0)
            ax.imshow(image.squeeze(2) if image.shape[2] == 1 else image.clip(0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(name, fontsize=8)
            if r == 0:
                ax.set_title(f"{classes[swap.label[i]]}", fontsize=8)
            if r == 2:
                mark = "" if swap.flipped[i] else " (not reached)"
                ax.set_xlabel(f"bias -> {classes[swap.target[i]]}{mark}", fontsize=7)
    fig.suptitle("SiH bias visualization: the bias latent moved by DeepFool until the bias head changes class")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
