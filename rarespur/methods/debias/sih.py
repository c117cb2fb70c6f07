"""Signal is Harder (docs/science.md#signal-is-harder): learn the signal by weighting against a bias VAE, and show what
the bias is.

Two VAE encoders on the same input, a signal one (the run's model) and a bias one, each with a classifier
head on its sampled latent; one decoder reconstructs the image from concat(z_s, z_b). Per batch:

    L = mean(CE_s * w) + mean(GCE_b) + rec_weight * Rec + KL,   w = (1 - p_b(y|x))^q,   GCE_b = CE_b * p_b^q

with p_b detached, Rec and KL summed over pixels and latent units and divided by the number of pixels.
The bias head learns what is easy; samples it gets wrong weigh more for the signal head. The authors stop
early on this same loss over a biased validation split, computed on the encoders' means, which
:meth:`SignalIsHarder.validation_loss` gives the loop. Facts from their code (mvandenhi/Signal-is-Harder,
``train.py``): one backward pass through both models and the decoder, Adam 1e-3, batch 256,
early stopping on the validation loss with patience 2 (20 for their ResNet VAE) and ReduceLROnPlateau x0.1
with patience int(patience / 2) - 1 (0, or 9); only the signal model's decoder is used, and Colored MNIST is
reconstructed with BCE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rarespur.config.schema import Field, non_negative
from rarespur.engine.objective import StepOutput
from rarespur.errors import ConfigError
from rarespur.methods.debias.debiaser import Debiaser, fresh_copy
from rarespur.methods.debias.losses import (
    decode_logits,
    gce,
    kl_divergence,
    reconstruction,
    sample_latent,
    sih_weights,
)
from rarespur.methods.debias.visualize import BiasSwap, bias_swap, pick_examples
from rarespur.models.vae import EncoderClassifier

TERMS = ("loss_s", "loss_b", "rec", "kl", "weight", "bias_correct")


class SignalIsHarder(Debiaser):
    name = "sih"
    FIELDS = {
        **Debiaser.FIELDS,
        "q": Field(float, low=0, low_open=True, high=1),
        "rec_weight": non_negative(),
        "reconstruction": Field(str, choices=("auto", "bce", "mse")),
    }

    def __init__(self, q: float = 0.7, rec_weight: float = 100.0, reconstruction: str = "auto", **protocol) -> None:
        super().__init__(**protocol)
        self.q, self.rec_weight, self.reconstruction = q, rec_weight, reconstruction
        self.decoder: nn.Module | None = None
        self._sums = torch.zeros(len(TERMS) + 1)

    def check_model(self, model: nn.Module) -> None:
        if not isinstance(model, EncoderClassifier):
            raise ConfigError(
                f"debias=sih trains VAEs, and model={type(model).__name__} is not a VAE encoder; use model=vae_mlp "
                "(28x28 images, 1 or 3 channels), model=vae_resnet (SiH's, for CIFAR-10's 3x32x32) or model=vae_conv"
            )

    def bias_swap(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, per_class: int, seed: int) -> BiasSwap:
        """DeepFool on the bias head in the bias latent (overshoot 0.02), decoded with the signal latent kept:
        `per_class` test images per class, those both heads classify correctly first."""
        chosen = pick_examples(model, self.bias_model, x, y, per_class)
        return bias_swap(model, self.bias_model, self.decoder, x[chosen], y[chosen], seed)

    def setup(self, model: nn.Module, y: torch.Tensor) -> None:
        self.check_model(model)
        self.bias_model = fresh_copy(model)
        self.decoder = model.decoder(2 * model.latent_dim)
        if self.reconstruction == "auto":
            self.reconstruction = model.reconstruction
        self._sums = torch.zeros(len(TERMS) + 1, device=y.device)

    def modules(self) -> dict[str, nn.Module]:
        return {**super().modules(), "decoder": self.decoder} if self.decoder is not None else {}

    def terms(
        self, model: EncoderClassifier, x: torch.Tensor, y: torch.Tensor, sample: bool
    ) -> dict[str, torch.Tensor]:
        """Per-sample terms of the loss (and the signal logits), on sampled latents or on the means."""
        (mu_s, lv_s), (mu_b, lv_b) = model.encode(x), self.bias_model.encode(x)
        z_s, z_b = (sample_latent(mu_s, lv_s), sample_latent(mu_b, lv_b)) if sample else (mu_s, mu_b)
        logits_s, logits_b = model.classifier(z_s), self.bias_model.classifier(z_b)
        weight = sih_weights(logits_b, y, self.q)
        out = {
            "logits": logits_s,
            "loss_s": F.cross_entropy(logits_s, y, reduction="none") * weight,
            "loss_b": gce(logits_b, y, self.q),
            "rec": reconstruction(decode_logits(self.decoder, torch.cat([z_s, z_b], 1)), x, self.reconstruction),
            "kl": kl_divergence(torch.cat([mu_s, mu_b], 1), torch.cat([lv_s, lv_b], 1), x[0].numel()),
            "weight": weight,
            "bias_correct": (logits_b.argmax(1) == y).float(),
        }
        out["total"] = out["loss_s"] + out["loss_b"] + self.rec_weight * out["rec"] + out["kl"]
        return out

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> StepOutput:
        terms = self.terms(model, x, y, sample=True)
        self._sums[:-1] += torch.stack([terms[k].detach().sum() for k in TERMS])
        self._sums[-1] += len(y)
        return StepOutput(terms["total"].mean(), terms["logits"])

    def validation_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.terms(model, x, y, sample=False)["total"]

    def end_epoch(self) -> dict[str, float]:
        *sums, n = self._sums.tolist()
        self._sums.zero_()
        means = dict(zip(TERMS, (s / n for s in sums)))
        return {"bias_acc": means.pop("bias_correct"), "weight_mean": means.pop("weight"), **means}
