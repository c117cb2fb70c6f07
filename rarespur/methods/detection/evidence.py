"""Whether a finding is in the training data: a shortcut the model learned from its data, not a quirk.

A white 5x5 block beside a digit moves an MNIST classifier a lot whether or not anything was planted:
the model generalizes from strokes. What sets a planted shortcut apart is that some training images of
the finding's class already carry it, and (almost) only images of that class do. Per finding we count
those images and their purity, the share of the class among all images that carry it:

- a patch of value v: images whose region is v everywhere (within ``TOLERANCE``), against all images whose
  region comes at least half-way to v on average;
- additive noise: images whose 3x3 median-filter residual is a robust outlier (``outlier_z``);
- content removal: images with a robust outlier of little content (total intensity).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rarespur.methods.detection.carriers import median_filter
from rarespur.methods.detection.scan import CONTENT, NOISE, PATCH, robust_z

TOLERANCE = 0.1


def _class_counts(carries: torch.Tensor, y: torch.Tensor, num_classes: int) -> np.ndarray:
    """carries: images x items (bool) -> items x classes counts of the carrying images per class."""
    onehot = F.one_hot(y.long(), num_classes).to(torch.float64)
    return (carries.to(torch.float64).T @ onehot).cpu().numpy()


def patch_carriers(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, size: int, value: float, batch: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """Two H' x W' x classes counts per patch offset: the images of each class whose whole patch is `value`
    (the carriers), and those whose patch is on average at least half-way to it (the competitors of
    purity: a white block inside the digits' strokes is not planted, however few images have it whole)."""
    full_counts = near_counts = None
    for start in range(0, len(x), batch):
        xb, yb = x[start : start + batch], y[start : start + batch]
        close = ((xb - value).abs() <= TOLERANCE).all(dim=1, keepdim=True).to(torch.float32)
        full = F.avg_pool2d(close, size, stride=1)[:, 0] > 1 - 1e-6  # n x H' x W'
        near = (F.avg_pool2d(xb.mean(dim=1, keepdim=True), size, stride=1)[:, 0] - value).abs() <= 0.5
        parts = (
            _class_counts(full.flatten(1), yb, num_classes),
            _class_counts((near | full).flatten(1), yb, num_classes),
        )
        full_counts = parts[0] if full_counts is None else full_counts + parts[0]
        near_counts = parts[1] if near_counts is None else near_counts + parts[1]
    shape = (x.shape[2] - size + 1, x.shape[3] - size + 1, num_classes)
    return full_counts.reshape(shape), near_counts.reshape(shape)


def outlier_carriers(values: np.ndarray, y: torch.Tensor, num_classes: int, outlier_z: float) -> np.ndarray:
    """Per class, the images whose `values` are robust outliers above the rest."""
    outliers = torch.from_numpy(robust_z(values) > outlier_z)[:, None]
    return _class_counts(outliers, y.cpu(), num_classes)[0]


def add_evidence(rows: list[dict], x: torch.Tensor, y: torch.Tensor, num_classes: int, outlier_z: float) -> None:
    """Give every scan row ``carriers`` (training images of its class that carry it) and ``purity``
    (their share among the images that carry it or, for a patch, come half-way to it)."""
    patch_counts: dict[tuple[int, float], tuple[np.ndarray, np.ndarray]] = {}
    whole: dict[str, np.ndarray] = {}
    for row in rows:
        kind = row["kind"]
        if kind == PATCH:
            key = (row["size"], row["value"])
            if key not in patch_counts:
                patch_counts[key] = patch_carriers(x, y, num_classes, *key)
            full, near = (counts[row["top"], row["left"]] for counts in patch_counts[key])
        else:
            if kind not in whole:
                whole[kind] = outlier_carriers(_whole_image_measure(x, kind), y, num_classes, outlier_z)
            full = near = whole[kind]
        carriers, total = full[row["class"]], near.sum()
        row["carriers"] = int(carriers)
        row["purity"] = float(carriers / total) if total else 0.0


def _whole_image_measure(x: torch.Tensor, kind: str, batch: int = 8192) -> np.ndarray:
    """Noise: mean absolute 3x3 median-filter residual; content removal: minus the total intensity."""
    parts = []
    for start in range(0, len(x), batch):
        xb = x[start : start + batch]
        if kind == NOISE:
            parts.append((xb - median_filter(xb)).abs().mean(dim=(1, 2, 3)))
        elif kind == CONTENT:
            parts.append(-xb.sum(dim=(1, 2, 3)))
        else:
            raise ValueError(f"no whole-image measure for {kind!r}")
    return torch.cat(parts).cpu().numpy().astype(np.float64)
