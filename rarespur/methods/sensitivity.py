"""How a trained model reacts to its input (docs/science.md#sensitivity-and-weights): pixel-removal curves and MLP
weight maps.

More input-sensitive architectures pick up rare spurious patterns more easily;
these two views show that sensitivity without any pattern: how fast the
true-class probability falls as pixels are switched off, and which input
pixels the first layer of an MLP weighs most (a learned corner pattern lights up).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rarespur.engine.scoring import predict_proba, to_tensor
from rarespur.models.mlp import MLP


def removal_images(n_train: int, count: int, seed: int) -> np.ndarray:
    """The training images a pixel-removal curve is measured on: the original notebook's draw,
    ``RandomState(seed).choice(arange(n_train), count, replace=False)``, in the order it returns them.

    Without replacement, as the notebook: ``choice(n_train, count)`` would sample with replacement, from
    another stream of draws, and so measure other images.
    """
    return np.random.RandomState(seed).choice(np.arange(n_train), size=count, replace=False)


def remove_pixels(images: np.ndarray, fraction: float, rng: np.random.RandomState) -> np.ndarray:
    """Set each non-zero pixel to 0 with probability `fraction` (images N x H x W x C).

    As the original notebook: one Bernoulli draw per non-zero (image, pixel,
    channel) value in C order, and a drawn value blanks its whole pixel (all
    channels); 0 and 1 are exact (a copy, all zeros) and draw nothing.
    """
    if fraction == 0:
        return images.copy()
    if fraction == 1:
        return np.zeros_like(images)
    n, h, w, c = images.shape
    flat = images.reshape(n, h * w, c).copy()
    img, pix, _ = np.nonzero(flat)
    blocked = rng.choice(np.arange(2), size=len(img), p=[1 - fraction, fraction], replace=True) == 1
    flat[img[blocked], pix[blocked]] = 0
    return flat.reshape(images.shape)


def pixel_removal_curve(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    levels: int,
    device: torch.device,
    batch_size: int = 2048,
) -> list[dict[str, float]]:
    """Mean true-class probability (and accuracy) at removal fractions 0, 1/(levels-1), .., 1.

    Every level draws from a fresh RandomState(0), as the original does, so a
    curve is reproducible and levels are comparable image by image.
    """
    if levels < 2:
        raise ValueError(f"sensitivity.levels must be >= 2 (0 and 1 at least), got {levels}")
    y = torch.from_numpy(labels).to(device)
    rows = []
    for k in range(levels):
        fraction = k / (levels - 1)
        occluded = remove_pixels(images, fraction, np.random.RandomState(0))
        proba = predict_proba(model, to_tensor(occluded, device), batch_size)
        rows.append(
            {
                "p": fraction,
                "mean_true_prob": proba.gather(1, y[:, None]).mean().item(),
                "acc": (proba.argmax(1) == y).float().mean().item(),
            }
        )
    return rows


def first_layer_weight_map(model: nn.Module) -> np.ndarray:
    """Per input pixel, the largest first-layer weight of an MLP (H x W; max over channels too).

    The MLPs flatten channels-last, so column (h*W + w)*C + c of the first layer reads pixel (h, w, c).
    """
    if not isinstance(model, MLP):
        raise ValueError(
            f"weight maps need an MLP (mlp1x256, mlp2x256, mlp3x256, mlp3x512), not {type(model).__name__}"
        )
    c, h, w = model.input_shape
    first = getattr(model, model.hidden_names[0]).weight.detach().cpu().numpy()
    return first.max(axis=0).reshape(h, w, c).max(axis=2)
