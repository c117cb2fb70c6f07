"""Scoring a trained model (docs/science.md#spurious-score): clean accuracy and how strongly it learned the pattern.

The spurious score is the fraction of test images whose target-class
probability rises by more than eps when the pattern is pasted on. The
per-image indicators are kept so a poisoned run can be compared with its
clean baseline by a one-sided Welch t-test.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rarespur.data.patterns import Pattern


def to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """N x H x W x C float32 NumPy images -> N x C x H x W tensor on `device`."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).contiguous()


@torch.inference_mode()
def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """Softmax outputs for `x` in eval mode, in large batches."""
    model.eval()
    return torch.cat([torch.softmax(model(x[i : i + batch_size]), dim=1) for i in range(0, len(x), batch_size)])


def spurious_indicators(clean_proba: torch.Tensor, patched_proba: torch.Tensor, target: int, eps: float) -> np.ndarray:
    """1 where p_target(P(x)) - p_target(x) > eps, per test image."""
    return ((patched_proba[:, target] - clean_proba[:, target]) > eps).cpu().numpy().astype(np.float64)


def pattern_norm(images: np.ndarray, patched: np.ndarray) -> float:
    """Mean ||x - P(x)||_2 over the images (docs/science.md#sensitivity-and-weights): how much of the input the pattern
    changes.

    Patterns with a larger norm are learned from fewer examples; the report
    correlates this with the mean spurious score.
    """
    diff = (patched.astype(np.float64) - images.astype(np.float64)).reshape(len(images), -1)
    return float(np.linalg.norm(diff, axis=1).mean())


def score_model(
    model: nn.Module,
    test_x: np.ndarray,
    test_y: np.ndarray,
    pattern: Pattern,
    seed: int,
    targets: list[int],
    eps: float,
    device: torch.device,
    batch_size: int = 2048,
) -> tuple[dict[str, float], dict[int, np.ndarray]]:
    """Metrics of docs/science.md#spurious-score (+ the pattern norm, docs/science.md#sensitivity-and-weights) and the
    per-image indicators per target class.

    With several targets (two-class variant) the metrics carry a ``@<class>``
    suffix per target and the unsuffixed ones are their mean.
    """
    x = to_tensor(test_x, device)
    y = torch.from_numpy(test_y).to(device)
    clean = predict_proba(model, x, batch_size)
    del x
    patched_x = pattern.apply(test_x, seed)
    patched = predict_proba(model, to_tensor(patched_x, device), batch_size)
    metrics: dict[str, float] = {
        "test_acc": (clean.argmax(1) == y).float().mean().item(),
        "pattern_norm": pattern_norm(test_x, patched_x),
    }
    indicators: dict[int, np.ndarray] = {}
    per_target: list[dict[str, float]] = []
    for target in targets:
        ind = spurious_indicators(clean, patched, target, eps)
        indicators[target] = ind
        other = (y != target).cpu().numpy()
        patched_pred = patched.argmax(1).cpu().numpy()
        per_target.append(
            {
                "spurious_score": float(ind.mean()),
                "spurious_score_nontarget": float(ind[other].mean()),
                "patched_nontarget_to_target": float((patched_pred[other] == target).mean()),
                "spurious_test_acc": float((patched_pred[other] == test_y[other]).mean()),
            }
        )
    for key in per_target[0]:
        metrics[key] = float(np.mean([m[key] for m in per_target]))
        if len(targets) > 1:
            for target, m in zip(targets, per_target):
                metrics[f"{key}@{target}"] = m[key]
    return metrics, indicators
