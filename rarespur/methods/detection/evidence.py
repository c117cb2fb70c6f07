"""Whether a finding is in the training data: a shortcut the model learned from its data, not a quirk.

A white 5x5 block beside a digit moves an MNIST classifier a lot whether or not anything was planted:
the model generalizes from strokes. What sets a planted shortcut apart is that some training images of
the finding's class already carry it, and (almost) only images of that class do. Per finding we count
those images (``carriers``), all the images that carry it (``carrying``), their ``purity`` (carriers /
carrying) and a ``p_value``: how unlikely that many of the carrying images are of the finding's class if
carrying had nothing to do with the class (:func:`~rarespur.methods.detection.scan.purity_p_value`; the
ranking turns it into a flag, corrected for the number of candidates). What carrying means:

- a patch of value v: images whose region is v everywhere (within ``TOLERANCE``), against all images whose
  region comes at least half-way to v on average;
- additive noise: images whose 3x3 median-filter residual is a robust outlier (``outlier_z``);
- content removal: images with a robust outlier of little content (total intensity);
- a reverse-engineered trigger (no template): images whose content in the region is a copy of the content
  that the images resembling the trigger share, per channel
  (:func:`~rarespur.methods.detection.triggers.trigger_carrying`). Purity is the class's share of the copies;
  the images that resemble the trigger without copying it are the content as it occurs naturally, and set
  the null of the test (``null_rate``, :func:`natural_rate`) instead of counting against purity.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rarespur.methods.detection.carriers import median_filter
from rarespur.methods.detection.scan import CONTENT, NOISE, PATCH, purity_p_value, robust_z
from rarespur.methods.detection.triggers import TRIGGER, TriggerSettings, content_of, region_of, trigger_carrying

TOLERANCE = 0.1
DEFAULT_TRIGGERS = TriggerSettings()


def _class_counts(carries: torch.Tensor, y: torch.Tensor, num_classes: int, weights: torch.Tensor) -> np.ndarray:
    """carries: images x items (bool) -> items x (classes + 1): the counts of the carrying images per class,
    then the sum of their `weights` (a fingerprint of which images carry the item)."""
    onehot = F.one_hot(y.long(), num_classes).to(torch.float64)
    columns = torch.cat([onehot, weights[:, None].to(onehot.device)], dim=1).to(carries.device)
    return (carries.to(torch.float64).T @ columns).cpu().numpy()


def _fingerprint_weights(n: int) -> torch.Tensor:
    """A random integer below 2^32 per training image, as float64: the sum over any set of up to 2^21 images
    is exact, so two items carried by the same images have the same fingerprint, and others (almost) never."""
    return torch.from_numpy(np.random.default_rng(0).integers(0, 2**32, n).astype(np.float64))


def _patch_evidence(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, size: int, value: float, batch: int = 8192
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`patch_carriers` and, per patch offset, the fingerprint of the images that come half-way to it."""
    weights = _fingerprint_weights(len(x))
    full_counts = near_counts = None
    for start in range(0, len(x), batch):
        xb, yb, wb = x[start : start + batch], y[start : start + batch], weights[start : start + batch]
        close = ((xb - value).abs() <= TOLERANCE).all(dim=1, keepdim=True).to(torch.float32)
        full = F.avg_pool2d(close, size, stride=1)[:, 0] > 1 - 1e-6  # n x H' x W'
        near = (F.avg_pool2d(xb.mean(dim=1, keepdim=True), size, stride=1)[:, 0] - value).abs() <= 0.5
        parts = (
            _class_counts(full.flatten(1), yb, num_classes, wb),
            _class_counts((near | full).flatten(1), yb, num_classes, wb),
        )
        full_counts = parts[0] if full_counts is None else full_counts + parts[0]
        near_counts = parts[1] if near_counts is None else near_counts + parts[1]
    h, w = x.shape[2] - size + 1, x.shape[3] - size + 1
    return (
        full_counts[:, :num_classes].reshape(h, w, num_classes),
        near_counts[:, :num_classes].reshape(h, w, num_classes),
        near_counts[:, num_classes].reshape(h, w),
    )


def patch_carriers(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, size: int, value: float, batch: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """Two H' x W' x classes counts per patch offset: the images of each class whose whole patch is `value`
    (the carriers), and those whose patch is on average at least half-way to it (the competitors of
    purity: a white block inside the digits' strokes is not planted, however few images have it whole)."""
    return _patch_evidence(x, y, num_classes, size, value, batch)[:2]


def _outlier_evidence(
    values: np.ndarray, y: torch.Tensor, num_classes: int, outlier_z: float
) -> tuple[np.ndarray, float]:
    """:func:`outlier_carriers` and the fingerprint of the outlying images."""
    outliers = torch.from_numpy(robust_z(values) > outlier_z)[:, None]
    counts = _class_counts(outliers, y.cpu(), num_classes, _fingerprint_weights(len(values)))[0]
    return counts[:num_classes], float(counts[num_classes])


def outlier_carriers(values: np.ndarray, y: torch.Tensor, num_classes: int, outlier_z: float) -> np.ndarray:
    """Per class, the images whose `values` are robust outliers above the rest."""
    return _outlier_evidence(values, y, num_classes, outlier_z)[0]


def natural_rate(similar: np.ndarray, cls: int, base_rate: float) -> float:
    """The share of class `cls` that the null of a trigger's purity test gives each image carrying it: how
    often the class has content like it naturally. `similar`: per class, the images whose content resembles
    the trigger without being a copy (the content as it occurs in the data without planting). Their share of
    the class, with one pseudo-image at the base rate (so 1 of 1 gives (1 + b) / 2, not 1), and at least the
    base rate: copies of content that the class has naturally (saturated strokes that agree to the pixel)
    are as unremarkable as the similar content they are part of, while a pasted pattern that nothing
    resembles is tested against the base rate alone."""
    total = float(np.sum(similar))
    return max(base_rate, (float(similar[cls]) + base_rate) / (total + 1.0))


def _trigger_evidence(
    row: dict, x: torch.Tensor, y: torch.Tensor, num_classes: int, trigger: TriggerSettings
) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Per class, the images that carry a trigger row (copies, twice: the carriers and their competitors),
    the fingerprint of the copies, and per class the images that resemble it without copying it
    (:func:`~rarespur.methods.detection.triggers.trigger_carrying`)."""
    region = region_of(row, x.shape[2], x.shape[3])
    close, near = trigger_carrying(x, region, content_of(row, x.shape[1]), trigger)
    weights = _fingerprint_weights(len(x))
    full = _class_counts(close.cpu()[:, None], y.cpu(), num_classes, weights)[0]
    similar = _class_counts((near & ~close).cpu()[:, None], y.cpu(), num_classes, weights)[0]
    return full[:num_classes], full[:num_classes], float(full[num_classes]), similar[:num_classes]


def add_evidence(
    rows: list[dict],
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    outlier_z: float,
    trigger: TriggerSettings = DEFAULT_TRIGGERS,
) -> None:
    """Give every scan row (and trigger row, whose similarity `trigger` sets) its training evidence:

    - ``carriers``: training images of its class that carry it;
    - ``carrying``: all training images that carry it or, for a patch, come half-way to it;
    - ``purity``: carriers / carrying (0 when nothing carries it);
    - ``base_rate``: the share of its class among all training images;
    - ``similar`` (triggers; 0 otherwise): training images whose content resembles it without copying it;
    - ``null_rate``: the chance of each carrying image to fall in the class under the null: ``base_rate``,
      and for a trigger at least the class's share of the ``similar`` images (:func:`natural_rate`);
    - ``p_value``: P(at least ``carriers`` of ``carrying`` images fall in the class) when each falls in
      it at ``null_rate``, the null of content that occurs regardless of the class, or as often in the
      class as the similar content does (one-sided binomial);
    - ``carrying_set``: a fingerprint of which images carry it (rows with the same one are one test).
    """
    base_rates = np.bincount(y.cpu().numpy().astype(np.int64), minlength=num_classes) / max(len(y), 1)
    patch_counts: dict[tuple[int, float], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    whole: dict[str, tuple[np.ndarray, float]] = {}
    for row in rows:
        kind = row["kind"]
        similar = None
        if kind == PATCH:
            key = (row["size"], row["value"])
            if key not in patch_counts:
                patch_counts[key] = _patch_evidence(x, y, num_classes, *key)
            full, near, fingerprint = (counts[row["top"], row["left"]] for counts in patch_counts[key])
        elif kind == TRIGGER:
            full, near, fingerprint, similar = _trigger_evidence(row, x, y, num_classes, trigger)
        else:
            if kind not in whole:
                whole[kind] = _outlier_evidence(_whole_image_measure(x, kind), y, num_classes, outlier_z)
            full, fingerprint = whole[kind]
            near = full
        carriers, total = int(round(full[row["class"]])), int(round(near.sum()))
        row["carriers"] = carriers
        row["carrying"] = total
        row["purity"] = carriers / total if total else 0.0
        row["base_rate"] = float(base_rates[row["class"]])
        row["similar"] = 0 if similar is None else int(round(similar.sum()))
        row["null_rate"] = (
            row["base_rate"] if similar is None else natural_rate(similar, row["class"], row["base_rate"])
        )
        row["carrying_set"] = f"{int(fingerprint):x}"
    p_values = purity_p_value(
        np.array([row["carriers"] for row in rows]),
        np.array([row["carrying"] for row in rows]),
        np.array([row["null_rate"] for row in rows]),
    )
    for row, p in zip(rows, p_values.tolist()):
        row["p_value"] = p


def _whole_image_measure(x: torch.Tensor, kind: str, batch: int = 8192) -> np.ndarray:
    """Noise: mean absolute 3x3 median-filter residual; content removal: minus the total intensity."""
    parts = []
    for start in range(0, len(x), batch):
        xb = x[start : start + batch]
        if kind == NOISE:
            parts.append((xb - median_filter(xb)).abs().mean(dim=(1, 2, 3)))
        elif kind == CONTENT:
            parts.append(-xb.sum(dim=(1, 2, 3)))
        else:
            raise ValueError(f"no whole-image measure for {kind!r}")
    return torch.cat(parts).cpu().numpy().astype(np.float64)
