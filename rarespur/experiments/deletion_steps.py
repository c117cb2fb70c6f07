"""What every deletion experiment shares (docs/science.md#deletion): the poisoned parent, the cleaned set, the record.

A deletion experiment builds on the finished ``train`` run of its config
(its ``requires``), removes the poisoned training images, changes the model in
its own way (incremental retraining, group influence) and reports the model
before, after, and against the gold standard: the same recipe trained from
scratch on the cleaned set (``experiment=retrain_exact``). Finding parent and
gold standard by config means a sweep of deletion jobs shares their models
with train sweeps. The methods themselves are in :mod:`rarespur.methods.deletion`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rarespur.engine.scoring import to_tensor
from rarespur.experiments.experiment import SCORES
from rarespur.experiments.steps import (
    PoisonedData,
    held_out_data,
    load_trained_parent,
    parent_config,
    score_poisoned,
    training_record,
    training_split,
)
from rarespur.methods.deletion.removal import flat_parameters
from rarespur.store.comparison import baseline_comparison, load_indicators
from rarespur.store.run_dir import MODEL, read_record

log = logging.getLogger(__name__)

EXACT = "retrain_exact"
DELETION_SUMMARY = (*SCORES, "before.spurious_score")  # the one-line summary: the model after, and before
# The spurious-score metrics (docs/science.md#spurious-score) reported before, after and for the exact retraining
# (``@<class>`` variants too).
SPEC_METRICS = (
    "test_acc",
    "spurious_score",
    "spurious_score_nontarget",
    "patched_nontarget_to_target",
    "spurious_test_acc",
)


@dataclass
class DeletionStart:
    """Everything a deletion method needs: the parent model and the training set without the poisoned images.

    ``model`` is the caller's to change (it was loaded from the parent's model.pt,
    which :func:`deletion_record` reads again for the "before" side).
    """

    cfg: dict[str, Any]
    parent_path: Path
    parent_record: dict[str, Any]
    poisoned: PoisonedData
    device: torch.device
    keep: np.ndarray  # training indices kept (all but the poisoned ones), sorted
    clean_x: torch.Tensor  # cleaned training set on the device (N x C x H x W)
    clean_y: torch.Tensor
    removed_x: torch.Tensor  # the poisoned images exactly as trained on, in the order of `removed`
    removed_y: torch.Tensor
    model: nn.Module  # the parent's final weights
    removed: np.ndarray  # the poisoned training indices, as drawn (= poisoned.indices)
    trained: np.ndarray  # the training indices the parent was fit to (all but a debiasing method's held-out split)
    validation: tuple[torch.Tensor, torch.Tensor] | None  # that split, which a continuation validates on


def requires(cfg: dict[str, Any], own_keys: tuple[str, ...], compare_exact: bool) -> list[dict[str, Any]]:
    """The parent train run of `cfg` (`own_keys`: the experiment's own config groups, e.g. ``("deletion",)``,
    without which the config is the parent's) and, to compare with, its exact retraining."""
    parent = [parent_config(cfg, own_keys)]
    return parent + [parent_config(cfg, own_keys, EXACT)] if compare_exact else parent


def start_deletion(cfg: dict[str, Any], parent_path: Path) -> DeletionStart:
    """Load the finished parent run of `cfg` and build the cleaned training set on the device."""
    parent = load_trained_parent(cfg, parent_path)
    poisoned, device = parent.poisoned, parent.device
    data = poisoned.data
    trained, held = training_split(cfg, poisoned)
    keep = np.setdiff1d(trained, poisoned.indices)
    log.info(
        "deleting %d poisoned images from %d training images (parent run %s)",
        len(poisoned.indices),
        len(trained),
        parent_path.name,
    )
    return DeletionStart(
        cfg=cfg,
        parent_path=parent_path,
        parent_record=parent.record,
        poisoned=poisoned,
        device=device,
        keep=keep,
        clean_x=to_tensor(poisoned.train_x[keep], device),
        clean_y=torch.from_numpy(data.train_y[keep]).to(device),
        removed_x=to_tensor(poisoned.train_x[poisoned.indices], device),
        removed_y=torch.from_numpy(data.train_y[poisoned.indices]).to(device),
        model=parent.model,
        removed=poisoned.indices,
        trained=trained,
        validation=held_out_data(poisoned, held, device),
    )


def spec_metrics(record: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The spurious-score metric columns (docs/science.md#spurious-score) of `record` (per-class ``@c`` ones too),
    renamed ``<prefix>.<metric>``."""
    return {f"{prefix}.{k}": v for k, v in record.items() if k.split("@")[0] in SPEC_METRICS}


def significance(train_cfg: dict[str, Any], run_path: Path, prefix: str) -> dict[str, Any]:
    """``<prefix>.p_value`` / ``<prefix>.learned`` of a stored run's indicators against the clean baseline."""
    comparison = baseline_comparison(train_cfg, load_indicators(run_path), Path(train_cfg["results_dir"]))
    return {f"{prefix}.{k}": v for k, v in comparison.items() if k.split("@")[0] in ("p_value", "learned")}


def before_and_exact(
    train_cfg: dict[str, Any], parent_record: dict[str, Any], parent_path: Path, exact_path: Path | None, tested: bool
) -> dict[str, Any]:
    """``before.*`` (the parent train run) and ``exact.*`` (``retrain_exact``, if given) spurious-score metrics of a
    run that changes a trained model, with their p-values when `tested` (the clean baseline is in the store)."""
    record = {
        **spec_metrics(parent_record, "before"),
        **(significance(train_cfg, parent_path, "before") if tested else {}),
    }
    if exact_path is not None:
        record.update(spec_metrics(read_record(exact_path), "exact"))
        if tested:
            record.update(significance(train_cfg, exact_path, "exact"))
        record["exact_run_id"] = exact_path.name
    return record


def deletion_record(
    start: DeletionStart, model_after: nn.Module, own_keys: tuple[str, ...], exact_path: Path | None
) -> dict[str, Any]:
    """The record metrics of a deletion run: the model after deletion, before it, and (optionally) exact.

    Unprefixed: spurious-score metrics of `model_after` plus ``baseline_score`` /
    ``p_value`` / ``learned`` against the clean baseline when it is in the store.
    ``before.*`` and ``exact.*``: the same metrics (and p-value) of the parent and
    of ``retrain_exact`` (`exact_path`, if given). ``param_dist.*``: L2 distances
    between the flattened parameters of the three models.
    """
    cfg, poisoned = start.cfg, start.poisoned
    train_cfg = parent_config(cfg, own_keys)
    results_dir = Path(cfg["results_dir"])
    after, indicators = score_poisoned(cfg, model_after, poisoned, start.device)
    before_state = torch.load(start.parent_path / MODEL, map_location="cpu", weights_only=True)
    before_params, after_params = flat_parameters(model_after, before_state), flat_parameters(model_after)
    baseline = baseline_comparison(train_cfg, indicators, results_dir)
    record: dict[str, Any] = {
        **after,
        **baseline,
        **before_and_exact(train_cfg, start.parent_record, start.parent_path, exact_path, bool(baseline)),
        "param_dist.before_after": float(torch.linalg.vector_norm(after_params - before_params)),
    }
    if exact_path is not None:
        exact_state = torch.load(exact_path / MODEL, map_location="cpu", weights_only=True)
        exact_params = flat_parameters(model_after, exact_state)
        record["param_dist.after_exact"] = float(torch.linalg.vector_norm(after_params - exact_params))
        record["param_dist.before_exact"] = float(torch.linalg.vector_norm(before_params - exact_params))
    record.update(
        parent_run_id=start.parent_path.name,
        n_removed=int(len(start.removed)),
        n_train_after=int(len(start.keep)),
        **training_record(None, start.removed, start.device),
    )
    return record
