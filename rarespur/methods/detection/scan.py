"""The perturbation scan (docs/science.md#detection-and-xbl): which image-level changes move the model's certainty far
more than their kin.

Every perturbation of the bank is "replace a group of pixels by a baseline" and is measured with
Captum's :class:`~captum.attr.FeatureAblation`: a white or black patch at every grid position
(the group is the patch, the baseline 1 or 0), additive uniform noise and removal of part of
the image's own content (the group is the whole image, the baseline the changed image). The
forward function returns, per class c, the mean probability of c over the scanned images that
are not of class c, so one ablation gives every class at once; the delta of a perturbation for
class c is how much it raises that mean. The detector is told neither the pattern, nor the
target, nor the count: a perturbation is flagged when its delta for some class is an outlier
(robust z-score) against the other perturbations of its family and large in absolute terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from captum.attr import FeatureAblation, Occlusion
from scipy import ndimage
from torch import nn

PATCH, NOISE, CONTENT = "patch", "noise", "content"


@dataclass(frozen=True)
class ScanSettings:
    patch_sizes: tuple[int, ...] = (1, 3, 5)
    patch_values: tuple[float, ...] = (1.0, 0.0)
    stride: int = 1
    noise_strengths: tuple[float, ...] = (0.25, 0.5, 1.0)
    content_fractions: tuple[float, ...] = (0.25, 0.5)
    z_threshold: float = 2.0  # robust z (within the family) a delta needs to be a candidate
    min_delta: float = 0.02  # and the mean certainty rise it must reach at least
    min_carriers: int = 5  # and the training images of its class that carry it: a correlation needs a few
    min_purity: float = 0.95  # and the share of its class among all training images that carry it
    evidence_z: float = 10.0  # robust z of a training image's noise (or lack of content) that makes it a carrier
    seed: int = 0  # the noise and the content removal


@dataclass(frozen=True)
class Perturbation:
    kind: str  # patch | noise | content
    value: float  # patch value, noise strength or fraction of content removed
    size: int = 0  # patch side; 0 = the whole image
    top: int = 0
    left: int = 0

    @property
    def family(self) -> str:
        """The perturbations a delta is compared with: one patch size and value, or one whole-image kind."""
        return f"{self.kind}{self.size}x{self.size}={self.value:g}" if self.kind == PATCH else self.kind

    def region(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right), bottom and right exclusive; the whole image for noise and content."""
        if self.kind != PATCH:
            return 0, 0, height, width
        return self.top, self.left, self.top + self.size, self.left + self.size


def grid_positions(extent: int, size: int, stride: int) -> list[int]:
    """Patch offsets along one axis: every `stride` pixels, and flush with the far edge too."""
    positions = list(range(0, extent - size + 1, stride))
    if positions[-1] != extent - size:
        positions.append(extent - size)
    return positions


def _class_means(model: nn.Module, y: torch.Tensor, num_classes: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward function Captum ablates: per class c, the mean p_c over the images not of class c."""
    others = (y[:, None] != torch.arange(num_classes, device=y.device)[None]).to(torch.get_default_dtype())
    weights = others / others.sum(0).clamp(min=1)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return (torch.softmax(model(x), dim=1) * weights.to(x.dtype)).sum(0)

    return forward


def tilings(positions: list[int], size: int) -> list[int]:
    """For sorted offsets along one axis, the tiling each belongs to: offsets of one tiling lie at least
    `size` apart, so their patches never overlap (greedy interval coloring, which needs the fewest)."""
    last: list[int] = []  # per tiling, its last offset
    out = []
    for pos in positions:
        free = next((t for t, end in enumerate(last) if pos - end >= size), None)
        if free is None:
            free = len(last)
            last.append(pos)
        last[free] = pos
        out.append(free)
    return out


def _patch_rows(ablator: FeatureAblation, x: torch.Tensor, size: int, value: float, stride: int) -> list[tuple]:
    """(perturbation, per-class delta) for a patch of `size` set to `value` at every grid position.

    Captum ablates a partition of the pixels, so overlapping patches (stride < size) are measured
    in several tilings of non-overlapping ones; the pixels no patch of a tiling covers form group 0,
    whose result is not used.
    """
    _, c, h, w = x.shape
    tops, lefts = grid_positions(h, size, stride), grid_positions(w, size, stride)
    row_tiling, col_tiling = tilings(tops, size), tilings(lefts, size)
    rows = []
    for row_phase in range(max(row_tiling) + 1):
        for col_phase in range(max(col_tiling) + 1):
            mask = torch.zeros((1, c, h, w), dtype=torch.long, device=x.device)
            placed = [
                (top, left)
                for top, rt in zip(tops, row_tiling)
                if rt == row_phase
                for left, ct in zip(lefts, col_tiling)
                if ct == col_phase
            ]
            for group, (top, left) in enumerate(placed, start=1):
                mask[..., top : top + size, left : left + size] = group
            attribution = ablator.attribute(x, baselines=value, feature_mask=mask)  # classes x C x H x W
            rows += [
                (Perturbation(PATCH, value, size, top, left), -attribution[:, 0, top, left]) for top, left in placed
            ]
    return rows


def _whole_image_delta(ablator: FeatureAblation, x: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
    """Per-class delta of replacing every image by its changed version (one group: the whole image)."""
    mask = torch.zeros((1, *x.shape[1:]), dtype=torch.long, device=x.device)
    return -ablator.attribute(x, baselines=changed, feature_mask=mask)[:, 0, 0, 0]


def add_noise(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """x + strength * u, clipped to [0, 1], with a fresh uniform noise image per image."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + strength * u).clamp(0, 1)


def remove_content(x: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Each non-zero pixel set to 0 with probability `fraction` (the paper's pixel removal,
    docs/science.md#sensitivity-and-weights)."""
    drop = (torch.rand(x.shape, generator=generator, device=x.device) < fraction) & (x > 0)
    return torch.where(drop, torch.zeros_like(x), x)


@torch.no_grad()
def scan(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, settings: ScanSettings) -> list[dict]:
    """One row per (perturbation, class): kind, family, value, size, region, class and delta, unflagged."""
    model.eval()
    ablator = FeatureAblation(_class_means(model, y, num_classes))
    measured: list[tuple[Perturbation, torch.Tensor]] = []
    for size in settings.patch_sizes:
        for value in settings.patch_values:
            measured += _patch_rows(ablator, x, size, value, settings.stride)
    generator = torch.Generator(device=x.device)
    generator.manual_seed(settings.seed)
    for strength in settings.noise_strengths:
        measured.append(
            (Perturbation(NOISE, strength), _whole_image_delta(ablator, x, add_noise(x, strength, generator)))
        )
    for fraction in settings.content_fractions:
        changed = remove_content(x, fraction, generator)
        measured.append((Perturbation(CONTENT, fraction), _whole_image_delta(ablator, x, changed)))
    h, w = x.shape[2:]
    rows = []
    for perturbation, deltas in measured:
        top, left, bottom, right = perturbation.region(h, w)
        for cls, delta in enumerate(deltas.tolist()):
            rows.append(
                {
                    "kind": perturbation.kind,
                    "family": perturbation.family,
                    "value": perturbation.value,
                    "size": perturbation.size,
                    "top": top,
                    "left": left,
                    "bottom": bottom,
                    "right": right,
                    "class": cls,
                    "delta": delta,
                }
            )
    return rows


def robust_z(values: np.ndarray) -> np.ndarray:
    """(v - median) / (1.4826 MAD): the z-score a normal sample would have, unmoved by the outliers sought.

    Where more than half the values are equal (MAD 0), the mean absolute deviation scaled by 1.2533
    stands in (Iglewicz and Hoaglin); where all are equal, every z is 0.
    """
    values = np.asarray(values, dtype=np.float64)
    deviation = np.abs(values - np.median(values))
    scale = 1.4826 * np.median(deviation)
    if scale == 0:
        scale = 1.2533 * deviation.mean()
    return (values - np.median(values)) / scale if scale > 0 else np.zeros_like(values)


def rank_findings(rows: list[dict], settings: ScanSettings) -> list[dict]:
    """The scan's rows (with their training evidence) plus ``z`` (within the family), ``flagged`` and
    ``rank`` (1 = most suspicious).

    Flagged: an outlier of its family (z), a real effect (delta), and carried by training images of
    its class and hardly any other (purity). Flagged rows come first, by how much they raise their
    class (the effect a user sees), then the rest in the same order.
    """
    out = [dict(row) for row in rows]
    families: dict[str, list[int]] = {}
    for i, row in enumerate(out):
        families.setdefault(row["family"], []).append(i)
    for members in families.values():
        for i, z in zip(members, robust_z([out[i]["delta"] for i in members])):
            row = out[i]
            row["z"] = float(z)
            row["flagged"] = bool(
                z >= settings.z_threshold
                and row["delta"] >= settings.min_delta
                and row["carriers"] >= settings.min_carriers
                and row["purity"] >= settings.min_purity
            )
    out.sort(key=lambda row: (not row["flagged"], -row["delta"], -row["z"]))
    for rank, row in enumerate(out, start=1):
        row["rank"] = rank
    return out


def finding_mask(ranked: list[dict], row: dict, height: int, width: int) -> np.ndarray:
    """The pixels a finding points at: a flagged patch grows into the connected union of the flagged
    patches of its class (a planted bar is found as several patches along it); any other row is its
    own region (the whole image for noise and content)."""
    own = np.zeros((height, width), dtype=bool)
    own[row["top"] : row["bottom"], row["left"] : row["right"]] = True
    if not (row["flagged"] and row["kind"] == PATCH):
        return own
    union = np.zeros_like(own)
    for other in ranked:
        if other["flagged"] and other["kind"] == PATCH and other["class"] == row["class"]:
            union[other["top"] : other["bottom"], other["left"] : other["right"]] = True
    components, _ = ndimage.label(union)
    return components == components[row["top"], row["left"]]


@torch.no_grad()
def perturbation_maps(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, window: int, value: float = 1.0
) -> np.ndarray:
    """classes x H x W: per pixel, the mean rise of each class's probability (over the images not of that
    class) when a `window` x `window` patch of `value` covers it, averaged over the windows that do
    (Captum's :class:`~captum.attr.Occlusion`, stride 1)."""
    model.eval()
    c = x.shape[1]
    attribution = Occlusion(_class_means(model, y, num_classes)).attribute(
        x, sliding_window_shapes=(c, window, window), strides=(c, 1, 1), baselines=value
    )
    return (-attribution[:, 0]).cpu().numpy()
