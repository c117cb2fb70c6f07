"""Template-free candidates: regions and their content reverse-engineered from the model (Neural Cleanse).

The bank of :mod:`~rarespur.methods.detection.scan` only tries the shapes and values it lists, so a grey box,
a checkerboard or a letter is never one of its candidates. Here the model itself says where a shortcut
could be: per class c, a mask m and a content p are optimised so that pasting them,
``x * (1 - m) + p * m``, raises class c on the scanned test images of the other classes, with an L1
penalty on m (Wang et al. 2019, "Neural Cleanse"). A learned shortcut is a small region that suffices to
flip any image; m is thresholded into connected regions (8-connected, any size, position and colour), and
a region's content is what the pasted trigger puts there on average over those images.

A region is a candidate like a patch of the bank; whether the training data carry it is decided by
:func:`trigger_carrying`: by how similar an image's content in the region is to the candidate's, per
channel (see its docstring), not by equality with one value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

TRIGGER = "trigger"
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # a checkerboard's cells touch at their corners


@dataclass(frozen=True)
class TriggerSettings:
    steps: int = 300  # Adam steps of the mask and content per class (0: no trigger family)
    lr: float = 0.1
    l1: float = 0.01  # penalty per unit of mask (the sum of m): how much a larger region must buy
    mask_threshold: float = 0.5  # m at or above it is inside a region
    regions: int = 8  # regions kept per class, the largest mask mass first (a thin letter has little mass)
    cosine: float = 0.8  # near: the image's deviation points the candidate's way at least this much
    reach: float = 0.5  # ... and goes at least this share of the candidate's deviation
    tolerance: float = 0.02  # carries: every pixel within this of the content the near images share


@torch.enable_grad()
def reverse_trigger(
    model: nn.Module, hosts: torch.Tensor, cls: int, settings: TriggerSettings, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(m: H x W in [0, 1], p: C x H x W in [0, 1]) minimising the cross-entropy of class `cls` on the pasted
    `hosts` plus ``l1`` times the sum of m. The model's own gradients are not touched."""
    generator = torch.Generator().manual_seed(seed + cls)
    _, c, h, w = hosts.shape
    mask_logit = (torch.randn((1, 1, h, w), generator=generator) * 0.1 - 2.0).to(hosts.device).requires_grad_(True)
    content_logit = (torch.randn((1, c, h, w), generator=generator) * 0.1).to(hosts.device).requires_grad_(True)
    optimizer = torch.optim.Adam([mask_logit, content_logit], lr=settings.lr)
    target = torch.full((len(hosts),), cls, device=hosts.device)
    for _ in range(settings.steps):
        m, p = torch.sigmoid(mask_logit), torch.sigmoid(content_logit)
        loss = F.cross_entropy(model(hosts * (1 - m) + p * m), target) + settings.l1 * m.sum()
        mask_logit.grad, content_logit.grad = torch.autograd.grad(loss, [mask_logit, content_logit])
        optimizer.step()
    with torch.no_grad():
        return torch.sigmoid(mask_logit)[0, 0], torch.sigmoid(content_logit)[0]


def mask_regions(m: np.ndarray, threshold: float, keep: int) -> list[np.ndarray]:
    """The 8-connected regions of ``m >= threshold`` (H x W bool each), the `keep` of largest mask mass."""
    labels, count = ndimage.label(m >= threshold, structure=EIGHT_CONNECTED)
    regions = [labels == k for k in range(1, count + 1)]
    regions.sort(key=lambda region: -float(m[region].sum()))
    return regions[:keep]


def paste(x: torch.Tensor, region: np.ndarray, content: torch.Tensor) -> torch.Tensor:
    """`x` (N x C x H x W) with the pixels of `region` set to `content` (C x pixels)."""
    out = x.clone()
    rows, cols = np.nonzero(region)
    out[:, :, rows, cols] = content.to(x.dtype)
    return out


@torch.no_grad()
def _probability_rise(model: nn.Module, hosts: torch.Tensor, cls: int, changed: torch.Tensor) -> float:
    """Mean rise of p(cls) over the hosts when they are replaced by `changed` (the scan's delta)."""
    before = torch.softmax(model(hosts), dim=1)[:, cls]
    return float((torch.softmax(model(changed), dim=1)[:, cls] - before).mean())


def encode(values: np.ndarray, digits: int | None = None) -> str:
    """A flat array as one space-separated string (a table cell)."""
    return " ".join(str(int(v)) if digits is None else f"{v:.{digits}f}" for v in values.ravel())


def region_of(row: dict, height: int, width: int) -> np.ndarray:
    """The H x W pixels of a trigger row (its ``pixels`` cell: flat indices; a table read back may hold a
    single index as a float)."""
    region = np.zeros(height * width, dtype=bool)
    region[np.array(str(row["pixels"]).split(), dtype=np.float64).astype(np.int64)] = True
    return region.reshape(height, width)


def content_of(row: dict, channels: int) -> torch.Tensor:
    """C x pixels: the content of a trigger row (its ``content`` cell)."""
    return torch.tensor(np.array(str(row["content"]).split(), dtype=np.float32)).view(channels, -1)


def trigger_rows(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, settings: TriggerSettings
) -> list[dict]:
    """One row per reverse-engineered region, in the scan's format (kind ``trigger``; ``size`` is the
    region's pixel count, top/left/bottom/right its bounding box) plus ``pixels`` and ``content``."""
    if settings.steps == 0:
        return []
    model.eval()
    rows = []
    for cls in range(num_classes):
        hosts = x[y != cls]
        m, p = reverse_trigger(model, hosts, cls, settings)
        pasted = (hosts * (1 - m) + p * m).mean(dim=0)  # C x H x W: what the trigger puts there on average
        for region in mask_regions(m.cpu().numpy(), settings.mask_threshold, settings.regions):
            rows.append(_region_row(model, hosts, cls, region, pasted[:, torch.from_numpy(region)]))
    return rows


def _region_row(model: nn.Module, hosts: torch.Tensor, cls: int, region: np.ndarray, content: torch.Tensor) -> dict:
    """A trigger row: the region, its content and the rise of p(cls) when that content is pasted alone."""
    rows, cols = np.nonzero(region)
    return {
        "kind": TRIGGER,
        "family": TRIGGER,
        "value": float(content.mean()),
        "size": int(region.sum()),
        "top": int(rows.min()),
        "left": int(cols.min()),
        "bottom": int(rows.max()) + 1,
        "right": int(cols.max()) + 1,
        "class": cls,
        "delta": _probability_rise(model, hosts, cls, paste(hosts, region, content)),
        "pixels": encode(np.flatnonzero(region)),
        "content": encode(content.cpu().numpy(), 3),
    }


def _region_content(x: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
    """N x C x pixels: the images' content in a region."""
    return x[:, :, rows, cols]


def resembling(
    contents: torch.Tensor, typical: torch.Tensor, content: torch.Tensor, cosine: float, reach: float
) -> torch.Tensor:
    """Per image (`contents`: N x C x pixels): whether its deviation from the `typical` content points the way
    the candidate's `content` deviates (cosine at least `cosine`, per channel: an uncentred correlation, so a
    constant box on a constant background counts) and goes at least `reach` of its way. Channels where the
    candidate does not deviate are not compared; a candidate that deviates nowhere resembles nothing."""
    e = content - typical
    norm = e.norm(dim=1)  # C
    used = norm > 1e-6
    if not bool(used.any()):
        return torch.zeros(len(contents), dtype=torch.bool, device=contents.device)
    d = contents - typical
    along = (d * e).sum(dim=2)  # N x C
    cos = along / (d.norm(dim=2) * norm).clamp(min=1e-12)
    return ((cos >= cosine) & (along >= reach * norm**2))[:, used].all(dim=1)


def channel_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """len(a) x len(b): the largest absolute difference of any pixel in any channel (a, b: N x C x pixels)."""
    return torch.stack([torch.cdist(a[:, k], b[:, k], p=float("inf")) for k in range(a.shape[1])]).amax(dim=0)


def anchor_content(resembling_contents: torch.Tensor, tolerance: float, cap: int = 4096) -> torch.Tensor:
    """C x pixels: the content (of one of the images) that most of the others are within `tolerance` of:
    the copies of a pasted pattern, where they exist (a subsample of `cap` is searched)."""
    pool = resembling_contents[:: max(1, -(-len(resembling_contents) // cap))]
    neighbours = (channel_distances(pool, pool) <= tolerance).sum(dim=1)
    return pool[int(neighbours.argmax())]


def trigger_carrying(
    x: torch.Tensor, region: np.ndarray, content: torch.Tensor, settings: TriggerSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image of `x` (N x C x H x W): (carries, comes near) the candidate whose reverse-engineered
    `content` (C x pixels) fills `region`; every image that carries it comes near it. Purity is the class's
    share of the images that carry it; those that come near without carrying it are the content as it occurs
    naturally, whose share of the class is the null of the purity test
    (:func:`~rarespur.methods.detection.evidence.natural_rate`).

    The `content` is the model's version of the shortcut, not a copy of it (a grey 0.6 box can come back as
    0.95 on most of its pixels), so similarity is measured in two steps:

    1. Near: the images whose content resembles it (:func:`resembling`, against the per-pixel median of `x`),
       the trigger's "half-way", as for a patch of the bank.
    2. Carries: among those, the content most of them share (:func:`anchor_content`); an image carries the
       candidate when every pixel of its content, in every channel, is within ``tolerance`` of it. A pasted
       pattern is the same in every image that has it, so its copies agree to the data's own rounding
       (1/255 for 8-bit images; 0.02 is five steps of it), while natural strokes that cross the region
       differ from image to image somewhere in it. Looser is not safe on MNIST: with a mean difference of
       0.1, three similar strokes of class 7 at the bottom edge made a finding on a clean model.

    Natural content can still agree that closely where strokes are saturated (1.0 on every pixel); those
    images are a few among the many strokes of their class that come near, so the test against the class's
    share of those keeps them out (three saturated class-2 strokes on an R3 model, 11 of the 21 similar images
    of class 2: p = 0.13 against 0.5, where the base rate 0.1 gave 0.001). The images that come near without
    copying it do not count against purity: two class-6 strokes resembling a planted letter T do not make
    30 copies of class 0 impure.
    """
    rows, cols = np.nonzero(region)
    contents = _region_content(x, rows, cols)
    typical = contents.median(dim=0).values
    near = resembling(contents, typical, content.to(x.device, x.dtype), settings.cosine, settings.reach)
    if not bool(near.any()):
        return near, near
    anchor = anchor_content(contents[near], settings.tolerance)
    close = channel_distances(contents, anchor[None])[:, 0] <= settings.tolerance
    return close, close | near


def grow_to_copies(
    rows: list[dict],
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    train_x: torch.Tensor,
    settings: TriggerSettings,
) -> None:
    """Grow each trigger row (in place) over the pixels on which the training images that copy it agree.

    The mask of a weakly learned shortcut covers only part of it (a 4x4 box of 0.8 came back as 6 of its 16
    pixels, raising class 0 by 0.012 alone, below ``detect.min_delta``, and with IoU 0.38). Its copies in the
    training data (:func:`trigger_carrying`) still agree on all of it. So, where at least two images copy a
    row, the region grows into the 8-connected pixels on which every copy is within ``tolerance`` of the
    others (every channel) and their shared (median) content differs from the typical (median) training
    content by more than ``tolerance`` in some channel (the untouched background they share is not part of
    it); the content becomes the copies' shared content and the delta is measured again on `x`, `y` (the
    scanned images; the box above: 16 pixels, 0.048). Natural content that two images happen to share grows
    only where they agree to the pixel; its purity is judged by the evidence as before. A row that would
    grow over more than half the image is left as it is: content its copies share nearly everywhere is
    whole-image content, the noise family's (the 3 images of R3 share their noise on 509 of 784 pixels,
    and a trigger there would outrank the noise finding that XBL corrects along its direction). Call it between
    :func:`trigger_rows` and :func:`~rarespur.methods.detection.evidence.add_evidence`."""
    triggers = [row for row in rows if row["kind"] == TRIGGER]
    if not triggers:
        return
    _, c, h, w = train_x.shape
    typical = train_x.median(dim=0).values  # C x H x W
    model.eval()
    for row in triggers:
        region = region_of(row, h, w)
        close, _ = trigger_carrying(train_x, region, content_of(row, c), settings)
        if int(close.sum()) < 2:
            continue
        copies = train_x[close]
        shared = copies.median(dim=0).values
        agree = ((copies.amax(dim=0) - copies.amin(dim=0)) <= settings.tolerance).all(dim=0)
        distinct = ((shared - typical).abs() > settings.tolerance).any(dim=0)
        labels, _ = ndimage.label((agree & distinct).cpu().numpy() | region, structure=EIGHT_CONNECTED)
        grown = np.isin(labels, np.unique(labels[region]))
        if region.sum() < grown.sum() <= h * w // 2:
            hosts = x[y != row["class"]]
            row.update(_region_row(model, hosts, row["class"], grown, shared[:, torch.from_numpy(grown).to(x.device)]))
