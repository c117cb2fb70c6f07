"""Grading the detector against the planted truth: on our poisoned datasets the answer is known.

A finding is correct when its class is a poisoned class and the pixels it points at cover the
pattern's support with IoU >= 0.5, or, for a pattern over the whole image (additive noise), when it
is additive noise.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from rarespur.methods.detection.scan import NOISE

IOU_HIT = 0.5


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def is_correct(row: dict, mask: np.ndarray, support: np.ndarray, targets: list[int]) -> bool:
    """Whether finding `row` (pointing at `mask`) names the planted pattern (`support`: H x W, True where
    the pattern changes pixels)."""
    if row["class"] not in targets:
        return False
    if support.all():
        return row["kind"] == NOISE
    return iou(mask, support) >= IOU_HIT


def grade(
    ranked: list[dict],
    support: np.ndarray,
    targets: list[int],
    carriers: list[dict],
    poisoned: np.ndarray,
    mask_of: Callable[[dict], np.ndarray],
) -> dict[str, float | int | None]:
    """``hit_at_1``, ``first_hit_rank``, ``num_flagged``, ``false_flagged`` and ``precision_at_n``
    (n = the number of poisoned images) of a ranked scan and its carrier ranking. On a clean run every
    flagged finding is false and the other metrics are empty; without a flagged finding there is no
    carrier ranking and precision is 0."""
    flagged = [row for row in ranked if row["flagged"]]
    out: dict[str, float | int | None] = {"num_flagged": len(flagged)}
    if len(poisoned) == 0:
        out.update(false_flagged=len(flagged), hit_at_1=None, first_hit_rank=None, precision_at_n=None)
        return out
    correct = [is_correct(row, mask_of(row), support, targets) for row in ranked]
    out["false_flagged"] = sum(1 for row, ok in zip(ranked, correct) if row["flagged"] and not ok)
    out["hit_at_1"] = float(bool(flagged) and correct[0])
    out["first_hit_rank"] = next((row["rank"] for row, ok in zip(ranked, correct) if ok), None)
    top = {row["index"] for row in carriers[: len(poisoned)]}
    out["precision_at_n"] = len(top & set(poisoned.tolist())) / len(poisoned)
    return out
