"""The loss terms of the debiasing methods, per sample, so a test can check them against a hand computation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def true_class_probability(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """p(y|x) of each sample, detached: the methods weight by it but never differentiate through it."""
    return torch.softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1).detach()


def gce(logits: torch.Tensor, y: torch.Tensor, q: float, scale: float = 1.0) -> torch.Tensor:
    """Generalized cross-entropy as the methods train it: CE * p(y|x)^q (detached) * `scale`.

    Its gradient is that of (1 - p^q) / q up to `scale`: easy (biased) samples weigh more, so the
    biased model latches on to the bias. SiH uses scale 1, LfF scale q (their code, ``module/loss.py``).
    """
    return F.cross_entropy(logits, y, reduction="none") * true_class_probability(logits, y) ** q * scale


def sih_weights(bias_logits: torch.Tensor, y: torch.Tensor, q: float) -> torch.Tensor:
    """SiH's sample weights w = (1 - p_b(y|x))^q, detached: high where the bias model fails."""
    return (1 - true_class_probability(bias_logits, y)) ** q


def reconstruction(logits: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample BCE or squared error of the decoded image sigmoid(`logits`), summed over pixels and divided by
    the number of pixels (C x H x W).

    BCE is taken on the logits: one fused kernel in place of a sigmoid, two logarithms and their backward
    passes (a tenth of a SiH step on CPU), equal to BCE on the sigmoid's output to float precision except
    where the sigmoid saturates, where it is exact and torch's BCE clamps its logarithm at -100.
    """
    if kind == "bce":
        per_pixel = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    elif kind == "mse":
        per_pixel = (torch.sigmoid(logits) - x) ** 2
    else:
        raise ValueError(f"reconstruction {kind!r} unknown; valid: bce, mse")
    return per_pixel.flatten(1).sum(1) / x[0].numel()


def decode_logits(decoder: nn.Sequential, z: torch.Tensor) -> torch.Tensor:
    """The decoder's output before its sigmoid (the reshape after it still applied), for :func:`reconstruction`."""
    for module in decoder:
        if not isinstance(module, nn.Sigmoid):
            z = module(z)
    return z


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor, pixels: int) -> torch.Tensor:
    """Per-sample KL(N(mu, exp(logvar)) || N(0, I)) summed over latent units, divided by `pixels`."""
    return -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1) / pixels


def sample_latent(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """The reparameterised sample mu + (sigma + 1e-8) * eps of the authors' ``Normal(...).rsample()``,
    drawn from torch's global generator (which checkpoints save, so a resume draws the same)."""
    return mu + (torch.exp(0.5 * logvar) + 1e-8) * torch.randn_like(mu)
