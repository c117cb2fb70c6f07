"""DP-SGD (Abadi et al. 2016) through Opacus: every training image's gradient is clipped to L2 norm
`max_grad_norm`, and Gaussian noise of std `noise_multiplier * max_grad_norm` is added to their sum.

The natural defence against a pattern carried by a handful of images: no single image can move the
model by more than the clipping bound, and the noise hides what few of them do together. The
privacy spent, epsilon at `delta`, comes from Opacus's RDP accountant with sampling rate
batch_size / n per step. Our batches are a shuffled partition of the training set, not Poisson
samples, so epsilon is the usual approximation of DP-SGD practice, not a proof for this sampler.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from rarespur.config.schema import Field
from rarespur.engine.objective import Objective, StepOutput
from rarespur.engine.settings import TrainSettings
from rarespur.errors import ConfigError


class DPSGD(Objective):
    FIELDS = {
        "noise_multiplier": Field(float, low=0),
        "max_grad_norm": Field(float, low=0, low_open=True),
        "delta": Field(float, low=0, low_open=True, high=1, what="a probability in (0, 1)"),
    }

    def __init__(
        self, noise_multiplier: float, max_grad_norm: float, delta: float = 1e-5, strength: float | None = None
    ):
        """`strength` is the noise multiplier again: the column every regularizer has for sweeps and the report."""
        if strength is not None and strength != noise_multiplier:
            raise ConfigError(
                f"regularizer=dp_sgd: regularizer.strength={strength} but regularizer.noise_multiplier="
                f"{noise_multiplier}; set regularizer.noise_multiplier (its strength follows it)"
            )
        if noise_multiplier < 0 or max_grad_norm <= 0 or not 0 < delta < 1:
            raise ConfigError(
                f"regularizer=dp_sgd needs noise_multiplier >= 0, max_grad_norm > 0 and 0 < delta < 1, got "
                f"noise_multiplier={noise_multiplier}, max_grad_norm={max_grad_norm}, delta={delta}"
            )
        from opacus.accountants import RDPAccountant

        self.noise_multiplier, self.max_grad_norm, self.delta = float(noise_multiplier), float(max_grad_norm), delta
        self.accountant = RDPAccountant()
        # Opacus's hooks on a first layer whose input needs no gradient: expected, and harmless here
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        self._sampled: nn.Module | None = None  # the model with Opacus's per-sample gradient hooks
        self._noise: torch.Generator | None = None

    def adjust(self, settings: TrainSettings) -> TrainSettings:
        if settings.grad_clip > 0:
            raise ConfigError(
                "regularizer=dp_sgd clips every image's gradient itself (regularizer.max_grad_norm): "
                "set train.grad_clip=0"
            )
        return settings

    def check_model(self, model: nn.Module) -> None:
        from opacus.validators import ModuleValidator

        problems = ModuleValidator.validate(model, strict=False)
        if problems:
            raise ConfigError(
                f"regularizer=dp_sgd needs per-sample gradients, which a {type(model).__name__} cannot give "
                f"({str(problems[0]).split('.')[0]}); "
                "use a model without batch norm (model=mlp3x256, mlp1x256, cnn, ...)"
            )

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer, n: int, settings: TrainSettings):
        from opacus.optimizers import DPOptimizer

        device = optimizer.param_groups[0]["params"][0].device
        self._noise = torch.Generator(device=device)
        self._noise.manual_seed(settings.seed)
        dp = DPOptimizer(
            optimizer,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=settings.batch_size,
            generator=self._noise,
        )
        dp.attach_step_hook(self.accountant.get_optimizer_hook_fn(sample_rate=min(1.0, settings.batch_size / n)))
        return dp

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> StepOutput:
        if self._sampled is None:
            from opacus import GradSampleModule

            try:
                self._sampled = GradSampleModule(model)
            except NotImplementedError as err:
                raise ConfigError(
                    f"regularizer=dp_sgd needs per-sample gradients, which this model cannot give ({err}); "
                    "use a model without batch norm (model=mlp3x256, mlp1x256, ...)"
                ) from None
        logits = self._sampled(x)
        return StepOutput(F.cross_entropy(logits, y), logits)

    def epsilon(self) -> float:
        if not self.accountant.history:
            return 0.0
        if self.noise_multiplier == 0:
            return float("inf")
        with warnings.catch_warnings():  # Opacus warns about the optimal RDP order at the edge of its range
            warnings.simplefilter("ignore")
            return float(self.accountant.get_epsilon(self.delta))

    def end_epoch(self) -> dict[str, float]:
        return {"dp_epsilon": self.epsilon()}

    def end_training(self) -> None:
        """Take Opacus's hooks off the model, so scoring and later experiments see a plain module."""
        if self._sampled is not None:
            self._sampled._close()
            self._sampled = None

    def summary(self) -> dict[str, float]:
        return {"dp_epsilon": self.epsilon(), "dp_delta": self.delta}

    def state_dict(self) -> dict:
        return {
            "accountant": [list(entry) for entry in self.accountant.history],
            "noise_generator": self._noise.get_state() if self._noise is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.accountant.history = [tuple(entry) for entry in state.get("accountant", [])]
        noise = state.get("noise_generator")  # the loop wraps the optimizer before it loads a checkpoint
        if noise is not None and noise.numel() == self._noise.get_state().numel():
            self._noise.set_state(noise)  # a state from another kind of device (a continuation): seeded afresh
