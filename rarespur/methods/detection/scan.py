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
from scipy.stats import binom
from torch import nn

from rarespur.data.splits import in_class_turns
from rarespur.methods.detection.triggers import TRIGGER, region_of

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
    min_purity: float = 0.95  # and the share of its class among all training images that carry it
    alpha: float = 0.05  # and a purity that chance gives a candidate this rarely (family-wise, over the candidates)
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


BALANCED, FIRST = "balanced", "first"
SCAN_IMAGES = (BALANCED, FIRST)  # detect.scan_images


def scan_indices(labels: np.ndarray, num_images: int, mode: str = BALANCED) -> np.ndarray:
    """Which test images the scan uses: indices into `labels`, at most `num_images` of them.

    ``balanced`` takes them from the classes in turns (:func:`~rarespur.data.splits.in_class_turns`): a rise of
    the target class cannot be measured on images of that class, and an image folder lists its test images
    class by class. The interleaved order is kept, so the carriers' first hosts of other classes are spread
    over the classes too. ``first`` takes the first `num_images` in file order, as every run stored before
    ``detect.scan_images`` existed did (fine where classes are interleaved: MNIST, the CIFAR archive).
    """
    if mode == FIRST:
        return np.arange(min(num_images, len(labels)))
    if mode != BALANCED:
        raise ValueError(f"scan mode {mode!r} unknown; valid: {', '.join(SCAN_IMAGES)}")
    return in_class_turns(labels, num_images)


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


def purity_p_value(carriers, carrying, base_rate) -> np.ndarray:
    """P(X >= carriers) for X ~ Binomial(carrying, base_rate): how often at least `carriers` of the
    `carrying` training images fall in the class if each fell in it at the class's base rate, i.e. if
    the content occurred regardless of the class. 1 when nothing carries it.

    For a patch, `carrying` counts every image that comes half-way to the patch while `carriers` counts
    only the class's images that have it whole, so the class's images that come half-way count against
    it: the p-value is larger than the exact one (conservative). So is the binomial against the
    hypergeometric of drawing without replacement from the training set.
    """
    return np.asarray(binom.sf(np.asarray(carriers) - 1, carrying, base_rate), dtype=np.float64)


def purity_floor(carrying, min_purity: float) -> np.ndarray:
    """The carriers a purity of `min_purity` needs out of `carrying` (at least 1)."""
    return np.maximum(np.ceil(np.asarray(carrying, dtype=np.float64) * min_purity - 1e-9), 1).astype(np.int64)


def adjusted_p_values(p_values, carrying, base_rates, min_purity: float, same_test: list | None = None) -> np.ndarray:
    """Family-wise adjusted p-values F(p) of `p_values` (usually the candidates' own) over the family of
    candidates described by `carrying`, `base_rates` and `same_test` (one entry per candidate).

    Candidate j is flagged when its carriers reach the purity floor (``min_purity`` of ``carrying``) and its
    p-value is at most a threshold d. Its p-value takes only the values of its ladder
    ``P(X_j >= k)``, X_j ~ Binomial(carrying_j, base_rate_j), k from the floor to carrying_j, so under the
    null it is flagged with probability at most r_j(d) = the largest ladder value <= d (0 when none is: three
    images cannot make a p-value below base_rate^3). The chance that any candidate is flagged is at most
    F(d) = sum_j r_j(d) (a union bound: the discrete Bonferroni of Westfall and Wolfinger 1997, which
    counts each candidate by how often it can be flagged at all). The adjusted p-value of candidate i is
    F(p_i), capped at 1: F(p_i) <= alpha flags it with a family-wise error of at most alpha. So:

    - a candidate nothing carries counts 0, and so does one a white block in the digits' strokes gives
      (hundreds of images come half-way to it, and 95 % of them would have to be of one class);
    - one that 1 or 2 images carry counts 0 below p = base_rate or base_rate^2;
    - one that 3 images carry counts base_rate^3 once p reaches it.

    ``same_test``: a key per candidate; candidates with equal keys (the same carrying images and class, e.g.
    the overlapping patches inside one planted square) are one event and count once. r_j depends only on
    how many images carry j, never on their classes, so the correction is fixed before the classes are
    looked at.
    """
    p_values = np.asarray(p_values, dtype=np.float64)
    carrying = np.asarray(carrying, dtype=np.int64)
    base_rates = np.asarray(base_rates, dtype=np.float64)
    keys = list(range(len(carrying))) if same_test is None else same_test
    unique = list({key: j for j, key in reversed(list(enumerate(keys)))}.values())  # the first of each key
    ladders: dict[tuple[int, float, int], int] = {}  # (carrying, base rate, floor) -> candidates with it
    for j in unique:
        if carrying[j] > 0:
            ladder = (int(carrying[j]), float(base_rates[j]), int(purity_floor(carrying[j], min_purity)))
            ladders[ladder] = ladders.get(ladder, 0) + 1
    total = np.zeros_like(p_values)
    for (n, rate, floor), count in ladders.items():
        if binom.sf(floor - 1, n, rate) == 0:  # 95 % of thousands in one class: never, to double precision
            continue
        ascending = binom.sf(np.arange(n, floor - 1, -1) - 1, n, rate)  # P(X >= k), k = n down to the floor
        index = np.searchsorted(ascending, p_values, side="right") - 1
        total += count * np.where(index >= 0, ascending[np.maximum(index, 0)], 0.0)
    return np.minimum(total, 1.0)


def rank_findings(rows: list[dict], settings: ScanSettings) -> list[dict]:
    """The scan's rows (with their training evidence, :func:`~rarespur.methods.detection.evidence.add_evidence`)
    plus ``z`` (within the family), ``candidate``, ``p_adjusted``, ``flagged`` and ``rank`` (1 = most
    suspicious).

    A candidate is an outlier of its family (z) with a real effect (delta); a reverse-engineered trigger
    needs only the effect (the model already singled its region out, and with one trigger per class a z
    among them says nothing). It is flagged when its training images are pure enough (purity >=
    ``min_purity``) and that purity is significant: its p-value against the class's base rate (for a trigger,
    its ``null_rate``: at least the class's share of the content as it occurs naturally), adjusted over
    all candidates (:func:`adjusted_p_values`), is at most ``alpha``. ``p_adjusted`` is 1 for candidates below the purity floor and empty for rows that are
    not candidates (never tested): a row is flagged exactly when ``p_adjusted <= alpha``. Flagged rows
    come first, by how much they raise their class (the effect a user sees), then the rest in the same order.
    """
    out = [dict(row) for row in rows]
    families: dict[str, list[int]] = {}
    for i, row in enumerate(out):
        families.setdefault(row["family"], []).append(i)
    for members in families.values():
        for i, z in zip(members, robust_z([out[i]["delta"] for i in members])):
            out[i]["z"] = float(z)
            outlier = z >= settings.z_threshold or out[i]["kind"] == TRIGGER
            out[i]["candidate"] = bool(outlier and out[i]["delta"] >= settings.min_delta)
    tested = [row for row in out if row["candidate"]]
    adjusted = adjusted_p_values(
        [row["p_value"] for row in tested],
        [row["carrying"] for row in tested],
        [row.get("null_rate", row["base_rate"]) for row in tested],
        settings.min_purity,
        [(row.get("carrying_set", i), row["class"]) for i, row in enumerate(tested)],
    )
    for row in out:
        row["p_adjusted"] = None
        row["flagged"] = False
    for row, p in zip(tested, adjusted.tolist()):
        pure = bool(row["carriers"] >= purity_floor(row["carrying"], settings.min_purity))
        row["p_adjusted"] = p if pure else 1.0  # below the purity floor it cannot be flagged at any alpha
        row["flagged"] = pure and p <= settings.alpha
    out.sort(key=lambda row: (not row["flagged"], -row["delta"], -row["z"]))
    for rank, row in enumerate(out, start=1):
        row["rank"] = rank
    return out


def finding_mask(ranked: list[dict], row: dict, height: int, width: int) -> np.ndarray:
    """The pixels a finding points at: a flagged patch grows into the connected union of the flagged
    patches of its class (a planted bar is found as several patches along it); any other row is its
    own region (the whole image for noise and content, the reverse-engineered pixels for a trigger)."""
    if row["kind"] == TRIGGER:
        return region_of(row, height, width)
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
