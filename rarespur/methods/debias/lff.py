"""Learning from Failure (Nam et al. 2020), the debiasing baseline SiH is measured against.

A biased model of the same architecture is trained with generalized cross-entropy, so it learns what is
easy (the bias). The debiased model (the run's model) weights each sample's cross-entropy by
CE_b / (CE_b + CE_d): large where the biased model fails. The losses are exponential moving averages per
training sample (alpha 0.7 in the authors' runs), each divided by the largest average of its class, as in
the LfF code (``train.py``, ``util.EMA``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rarespur.config.schema import Field
from rarespur.engine.objective import StepOutput
from rarespur.methods.debias.debiaser import Debiaser, fresh_copy
from rarespur.methods.debias.losses import gce


class LearningFromFailure(Debiaser):
    name = "lff"
    FIELDS = {
        **Debiaser.FIELDS,
        "q": Field(float, low=0, low_open=True, high=1),
        "ema_alpha": Field(float, low=0, high=1, low_open=True),
    }

    def __init__(self, q: float = 0.7, ema_alpha: float = 0.7, **protocol) -> None:
        super().__init__(**protocol)
        self.q, self.ema_alpha = q, ema_alpha
        self.labels: torch.Tensor | None = None
        self.num_classes = 0
        self.ema = torch.zeros(0)  # 2 x N: per training sample, the averaged loss of the biased and debiased model
        self.seen = torch.zeros(0, dtype=torch.bool)
        self._sums = torch.zeros(3)

    def setup(self, model: nn.Module, y: torch.Tensor) -> None:
        self.bias_model = fresh_copy(model)
        self.labels = y
        self.num_classes = int(y.max()) + 1 if len(y) else 0
        self.ema = torch.zeros(2, len(y), device=y.device)
        self.seen = torch.zeros(len(y), dtype=torch.bool, device=y.device)
        self._sums = torch.zeros(3, device=y.device)

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> StepOutput:
        logits_b, logits_d = self.bias_model(x), model(x)
        ce = torch.stack([F.cross_entropy(lg, y, reduction="none") for lg in (logits_b, logits_d)]).detach()
        # LfF's EMA: the first update stores the loss itself, later ones average with weight alpha.
        keep = self.ema_alpha * self.seen[index].float()
        self.ema[:, index] = keep * self.ema[:, index] + (1 - keep) * ce
        self.seen[index] = True
        class_max = torch.zeros(2, self.num_classes, device=x.device)
        class_max = class_max.scatter_reduce(1, self.labels.expand(2, -1), self.ema, reduce="amax")
        normalized = self.ema[:, index] / class_max[:, y].clamp_min(1e-12)
        weight = normalized[0] / (normalized[0] + normalized[1] + 1e-8)
        loss_b = gce(logits_b, y, self.q, scale=self.q).mean()
        loss_d = (F.cross_entropy(logits_d, y, reduction="none") * weight).mean()
        self._sums[:2] += torch.stack([(logits_b.argmax(1) == y).float().sum(), weight.sum()])
        self._sums[2] += len(y)
        return StepOutput(loss_b + loss_d, logits_d)

    def end_epoch(self) -> dict[str, float]:
        correct, weights, n = self._sums.tolist()
        self._sums.zero_()
        return {"bias_acc": correct / n, "weight_mean": weights / n}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "ema": self.ema.clone(), "seen": self.seen.clone()}

    def restrict_state(self, state: dict, positions: torch.Tensor) -> dict:
        return {**state, "ema": state["ema"][:, positions], "seen": state["seen"][positions]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.ema.copy_(state["ema"])
        self.seen.copy_(state["seen"])
