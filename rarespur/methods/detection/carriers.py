"""Which training images carry a finding: rank the images of its class by how much their prediction
leans on it.

- A patch or trigger finding: the region (a trigger's reverse-engineered pixels) is replaced by the training set's mean image with Captum's
  :class:`~captum.attr.FeatureAblation`, and an image scores the drop of its label's logit margin
  (label logit minus the largest other). The margin, because a poisoned image is still a real image
  of its class: its certainty stays near 1 while the margin falls.
- A whole-image finding (noise, content): no region can be taken out, and a poisoned image's label
  does not need its noise (the digit alone suffices). What the image carries is its residual from a
  3x3 median filter; it scores how much that residual, added to test images of other classes, raises
  their margin towards its label.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import FeatureAblation
from torch import nn

from rarespur.methods.detection.scan import PATCH, finding_mask
from rarespur.methods.detection.triggers import TRIGGER


def median_filter(x: torch.Tensor) -> torch.Tensor:
    """3x3 median per channel, edges replicated."""
    n, c, h, w = x.shape
    patches = F.unfold(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel_size=3)  # n x c*9 x h*w
    return patches.view(n, c, 9, h * w).median(dim=2).values.view(n, c, h, w)


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per image: the logit of its label minus the largest other logit."""
    own = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
    return own - others


@torch.no_grad()
def occlusion_drops(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    region: np.ndarray,
    fill: torch.Tensor,
    batch_size: int = 4096,
) -> np.ndarray:
    """Per image: margin of its label minus that margin with the pixels of `region` (H x W bool) set to `fill`."""
    mask = torch.zeros((1, *x.shape[1:]), dtype=torch.long, device=x.device)
    mask[..., torch.from_numpy(region).to(x.device)] = 1
    top, left = (int(i[0]) for i in np.nonzero(region))
    drops = []
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]

        def label_margin(batch: torch.Tensor, labels: torch.Tensor = yb) -> torch.Tensor:
            return margin(model(batch), labels)

        attribution = FeatureAblation(label_margin).attribute(xb, baselines=fill.expand_as(xb), feature_mask=mask)
        drops.append(attribution[:, 0, top, left])
    return torch.cat(drops).cpu().numpy().astype(np.float64)


@torch.no_grad()
def transplant_rises(
    model: nn.Module, x: torch.Tensor, label: int, hosts: torch.Tensor, batch_size: int = 64
) -> np.ndarray:
    """Per image of `x`: mean rise of the `label` margin of the `hosts` when its median-filter residual
    is added to them (clipped to [0, 1])."""
    labels = torch.full((len(hosts),), label, device=hosts.device)
    before = margin(model(hosts), labels)
    rises = []
    for start in range(0, len(x), batch_size):
        residual = x[start : start + batch_size] - median_filter(x[start : start + batch_size])
        moved = (hosts[None] + residual[:, None]).clamp(0, 1).flatten(0, 1)
        after = margin(model(moved), labels.repeat(len(residual))).view(len(residual), len(hosts))
        rises.append((after - before[None]).mean(dim=1))
    return torch.cat(rises).cpu().numpy().astype(np.float64)


def rank_carriers(
    model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, finding: dict, hosts: torch.Tensor
) -> list[dict]:
    """The training images of the finding's class, those that carry it most first: rank, training index,
    score (margin drop or transplant rise, see the module). `hosts`: test images of other classes."""
    model.eval()
    candidates = torch.nonzero(train_y == finding["class"]).flatten()
    x = train_x[candidates]
    if finding["kind"] in (PATCH, TRIGGER):
        region = finding_mask([finding], {**finding, "flagged": False}, x.shape[2], x.shape[3])
        scores = occlusion_drops(model, x, train_y[candidates], region, train_x.mean(dim=0, keepdim=True))
    else:
        scores = transplant_rises(model, x, finding["class"], hosts)
    order = np.argsort(-scores, kind="stable")
    indices = candidates.cpu().numpy()
    return [{"rank": r, "index": int(indices[i]), "score": float(scores[i])} for r, i in enumerate(order, start=1)]
