"""Explanation-based learning (docs/science.md#detection-and-xbl): cross-entropy plus lambda times the attribution
inside a mask.

The explanation loss is the share of the squared attribution inside the mask (see :func:`masked_share`).

"Right for the right reasons" (Ross et al. 2017): the model is told where it must not look. The
attribution is the input gradient of the summed log-probabilities for MLPs and Grad-CAM of the label
at the last convolution for CNNs. Both are computed in the training graph (``create_graph``), so the
penalty's own gradient trains the model; Captum's Saliency and LayerGradCam compute the same maps
without a graph (the tests compare them), which is why they are not used here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rarespur.engine.objective import Objective, StepOutput
from rarespur.errors import ConfigError

EXPLANATIONS = ("auto", "input_gradient", "gradcam")


def gradcam_layer(model: nn.Module) -> nn.Module | None:
    """Where Grad-CAM looks: the model's ``gradcam_layer`` if it names one (a ResNet's last stage, whose
    output is after the residual sum, so evidence cannot pass around it), else its last convolution
    (after its in-place ReLU where the model has one); None for a model without convolutions."""
    declared = getattr(model, "gradcam_layer", None)
    if isinstance(declared, nn.Module):
        return declared
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


def masked_share(attribution: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the share of the squared attribution that lies inside the mask (0..1).

    A share, not a sum: a model trained to extreme confidence has input gradients in the thousands, and
    a raw sum would teach it to flatten every gradient (and forget its classes) instead of looking away
    from the mask; the share can only fall by moving the attribution out of it.
    """
    energy = attribution**2
    inside = (energy * mask).flatten(1).sum(dim=1)
    return (inside / (energy.flatten(1).sum(dim=1) + 1e-12)).mean()


def input_gradients(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d sum_c log p_c / dx (Ross et al.), kept in the graph; `x` must require grad and `logits` come from it."""
    (grad,) = torch.autograd.grad(torch.log_softmax(logits, dim=1).sum(), x, create_graph=True)
    return grad


def gradcam(logits: torch.Tensor, activation: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of the label (batch x h x w at the layer's resolution), differentiable: the activation's
    channels weighted by the spatial mean of the label logit's gradient. Not clipped at zero (Captum's
    ``relu_attributions=False``): with the ReLU a model could empty the map and escape the penalty while
    still using the masked region; squared, negative evidence counts as well."""
    (grad,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), activation, create_graph=True)
    return (grad.mean(dim=(2, 3), keepdim=True) * activation).sum(dim=1)


def cell_mask(mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The pixel mask at a layer's resolution: how much of each cell it covers."""
    return F.adaptive_avg_pool2d(mask.amax(dim=1, keepdim=True), shape)[:, 0]


class ExplanationPenalty(Objective):
    """CE + `strength` x the explanation loss inside `mask` (1 x C x H x W or 1 x 1 x H x W, 1 = forbidden)."""

    name = "xbl"

    def __init__(self, mask: torch.Tensor, strength: float, explanation: str = "auto") -> None:
        if explanation not in EXPLANATIONS:
            raise ConfigError(f"xbl.explanation={explanation} unknown; valid: {', '.join(EXPLANATIONS)}")
        self.mask, self.strength, self.explanation = mask, strength, explanation
        self._activation: torch.Tensor | None = None
        self._method = explanation
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._sums = {"ce": 0.0, "explanation": 0.0, "steps": 0}

    def method(self, model: nn.Module) -> str:
        """The explanation this model gets: Grad-CAM where it has a convolution, else input gradients."""
        if self.explanation != "auto":
            return self.explanation
        return "gradcam" if gradcam_layer(model) is not None else "input_gradient"

    def check_model(self, model: nn.Module) -> None:
        if self.method(model) == "gradcam" and gradcam_layer(model) is None:
            raise ConfigError(
                "xbl.explanation=gradcam needs a convolutional model; use xbl.explanation=input_gradient (or auto)"
            )

    def setup(self, model: nn.Module, y: torch.Tensor) -> None:
        """Move the mask to the data's device and, for Grad-CAM, hook the layer; may be called again (the
        experiment measures the loss before training): the previous hook comes off first."""
        self.end_training()
        self.check_model(model)
        self.mask = self.mask.to(y.device)
        self._method = self.method(model)
        if self._method == "gradcam":
            self._hook = gradcam_layer(model).register_forward_hook(self._keep_activation)

    def _keep_activation(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self._activation = output

    def end_training(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._activation = None

    def explanation_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, explanation loss) of the batch, the loss still in the graph."""
        if self._method == "input_gradient":
            x = x.detach().requires_grad_(True)
            logits = model(x)
            return logits, masked_share(input_gradients(logits, x), self.mask.to(x.dtype))
        logits = model(x)
        cam = gradcam(logits, self._activation, y)
        return logits, masked_share(cam, cell_mask(self.mask.to(cam.dtype), cam.shape[-2:]))

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> StepOutput:
        logits, penalty = self.explanation_loss(model, x, y)
        ce = F.cross_entropy(logits, y)
        self._sums["ce"] += ce.detach()
        self._sums["explanation"] += penalty.detach()
        self._sums["steps"] += 1
        return StepOutput(ce + self.strength * penalty, logits)

    def end_epoch(self) -> dict[str, float]:
        """The epoch's mean cross-entropy and explanation loss, for its history row."""
        steps = max(self._sums["steps"], 1)
        row = {"ce": float(self._sums["ce"]) / steps, "explanation_loss": float(self._sums["explanation"]) / steps}
        self._sums = {"ce": 0.0, "explanation": 0.0, "steps": 0}
        return row


def mean_explanation_loss(
    objective: ExplanationPenalty, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512
) -> float:
    """The explanation loss over `x` in evaluation mode (without its graph): how much the model looks
    inside the mask, before and after the correction."""
    model.eval()
    total = 0.0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        _, loss = objective.explanation_loss(model, xb, yb)
        total += float(loss.detach()) * len(xb)
    return total / len(x)


class DirectionPenalty(ExplanationPenalty):
    """CE + `strength` x KL(p(x) || p(clip(x + direction))): for a finding over the whole image (additive noise).

    A region penalty cannot correct additive noise: its mask is every pixel, so the share of the attribution
    inside it is always 1. What the model must unlearn is a direction, not a place: the noise the carriers
    share (``direction``, 1 x C x H x W, e.g. :func:`noise_direction` of the top carriers; for R3 the fixed noise
    image less the mean image of the class). The penalty is how much adding it changes the model's prediction on the
    training images; fine-tuning drives the model to ignore it while cross-entropy keeps the classes. The
    base class's mask slot holds the direction; its step and epoch bookkeeping are shared.
    """

    name = "xbl_direction"
    METHOD = "noise_direction"

    def method(self, model: nn.Module) -> str:
        return self.METHOD

    def check_model(self, model: nn.Module) -> None:
        """Any model: the penalty needs only its outputs."""

    def setup(self, model: nn.Module, y: torch.Tensor) -> None:
        self.end_training()
        self.mask = self.mask.to(y.device)
        self._method = self.METHOD

    def explanation_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits of `x`, mean KL divergence of the prediction with the direction added from the one without);
        both in one forward pass, so batch statistics see the same batch."""
        both = model(torch.cat([x, (x + self.mask.to(x.dtype)).clamp(0, 1)]))
        logits, shifted = both[: len(x)], both[len(x) :]
        penalty = F.kl_div(
            torch.log_softmax(shifted, dim=1), torch.log_softmax(logits, dim=1), log_target=True, reduction="batchmean"
        )
        return logits, penalty


def noise_direction(carriers: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """1 x C x H x W: what sets the top `carriers` of a noise finding apart from the `others` of their class,
    the difference of their mean images. Each image's own strokes average out; the noise they share stays,
    smooth part included. (Their mean 3x3 median-filter residual keeps only the noise's fine grain: on R3,
    n = 60, XBL along it brought the penalty from 1.2 to 0.002 and the spurious score only from 0.92 to
    0.87, since the model also reads the noise's brightness.)"""
    return carriers.mean(dim=0, keepdim=True) - others.mean(dim=0, keepdim=True)
