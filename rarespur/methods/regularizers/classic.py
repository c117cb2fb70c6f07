"""The paper's two mitigations (docs/science.md#mitigation) as objectives: both leave the loss plain cross-entropy and
change the loop's settings, so a run gives the same numbers as before they were objectives."""

from __future__ import annotations

from dataclasses import replace

from rarespur.engine.objective import Objective
from rarespur.engine.settings import TrainSettings


class L2(Objective):
    """Classic (coupled) L2 weight decay of `strength` lambda on all parameters, in place of the recipe's.

    The config resolver also writes `strength` into ``train.weight_decay``, where records have always
    kept the decay a run trained with.
    """

    def __init__(self, strength: float):
        self.strength = float(strength)

    def adjust(self, settings: TrainSettings) -> TrainSettings:
        return replace(settings, weight_decay=self.strength)


class GaussianNoise(Objective):
    """Training images get x + `strength` * N(0, I), fresh every step from the run's generator, not clipped;
    evaluation is clean. The loop draws the noise (after augmentation), so resume stays exact."""

    def __init__(self, strength: float):
        self.strength = float(strength)

    def adjust(self, settings: TrainSettings) -> TrainSettings:
        return replace(settings, noise_sigma=self.strength)
