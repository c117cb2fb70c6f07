"""``experiment=xbl`` (docs/science.md#detection-and-xbl): correct a trained model by explanation-based learning.

Builds on the finished ``train`` run of the same config (the model), on its ``detect`` run (the mask:
the top flagged finding, grown over the flagged patches of its class; for a noise finding, which covers
the whole image, the noise its top carriers share, see
:class:`~rarespur.methods.detection.xbl.DirectionPenalty`) unless ``xbl.mask=truth`` (the
planted pattern's support, to tell detection errors from correction errors), and, to compare with,
its ``retrain_exact`` run. Fine-tunes on the same poisoned training set with
:class:`~rarespur.methods.detection.xbl.ExplanationPenalty` on the shared training loop, and reports the
model after, ``before.*`` (the parent) and ``exact.*`` side by side, as the deletion experiments do.
With parent=debias the model is the debias run's classifier, and XBL fine-tunes it with its own
objective (cross-entropy and the penalty), not the debiasing method's.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from rarespur.config.schema import Field, non_negative, positive, positive_int
from rarespur.data.patterns import build_pattern
from rarespur.engine.scoring import to_tensor
from rarespur.errors import ConfigError
from rarespur.experiments.deletion_steps import DELETION_SUMMARY, EXACT, before_and_exact
from rarespur.experiments.detect import CARRIERS_TABLE, FINDINGS_TABLE
from rarespur.experiments.detect import FIELDS as DETECT_FIELDS
from rarespur.experiments.detect import check as check_detect
from rarespur.experiments.experiment import Experiment
from rarespur.experiments.steps import (
    check_train_config,
    fit_and_store,
    load_data,
    load_trained_parent,
    make_model,
    parent_config,
    require_poison,
    score_poisoned,
    train_settings,
    training_record,
)
from rarespur.methods.detection.grading import iou
from rarespur.methods.detection.scan import NOISE, PATCH, finding_mask
from rarespur.methods.detection.triggers import TRIGGER
from rarespur.methods.detection.xbl import (
    EXPLANATIONS,
    DirectionPenalty,
    ExplanationPenalty,
    mean_explanation_loss,
    noise_direction,
)
from rarespur.store.comparison import baseline_comparison, save_indicators
from rarespur.store.run_dir import HISTORY, INDICATORS, MODEL, TABLES, RunDir

log = logging.getLogger(__name__)

OWN_KEYS = ("detect", "xbl")
MASKS = ("detected", "truth")
EVALUATED_IMAGES = 2048  # training images (the poisoned ones first) the explanation loss is reported on
FIELDS = {
    **DETECT_FIELDS,
    "xbl.mask": Field(str, choices=MASKS),
    "xbl.explanation": Field(str, choices=EXPLANATIONS),
    "xbl.strength": non_negative(),
    "xbl.epochs": positive_int(),
    "xbl.lr": positive(),
    "xbl.compare_exact": Field(bool),
    "xbl.direction_strength": non_negative(),
}


def check(cfg: dict[str, Any]) -> None:
    require_poison(cfg, "corrects a model that learned a planted pattern")
    if cfg["xbl"]["mask"] == "detected":
        check_detect(cfg)
    else:
        check_train_config(cfg)
    data = load_data(cfg)
    h, w, _ = data.image_shape
    if cfg["xbl"]["mask"] == "truth" and build_pattern(cfg["pattern"]).support(data.image_shape).all():
        raise ConfigError(
            f"xbl.mask=truth: pattern {cfg['pattern']['name']} changes the whole image, so its mask would "
            "penalize every pixel and the share inside it cannot fall; use a localized pattern, or "
            "xbl.mask=detected to correct whatever region the detect run finds"
        )
    objective = ExplanationPenalty(torch.zeros(1, 1, h, w), cfg["xbl"]["strength"], cfg["xbl"]["explanation"])
    objective.check_model(make_model(cfg, data, torch.device("cpu")))


def requires(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    parents = [parent_config(cfg, OWN_KEYS)]
    if cfg["xbl"]["mask"] == "detected":
        parents.append(parent_config(cfg, ("xbl",), "detect"))  # its findings give the mask
    if cfg["xbl"]["compare_exact"]:
        parents.append(parent_config(cfg, OWN_KEYS, EXACT))
    return parents


def detected_top(detect_path: Path) -> tuple[list[dict], dict]:
    """The detect run's ranked findings and its top flagged one, or a ConfigError when it flagged nothing."""
    ranked = pd.read_csv(detect_path / TABLES / f"{FINDINGS_TABLE}.csv").to_dict("records")
    flagged = [row for row in ranked if row["flagged"]]
    if not flagged:
        raise ConfigError(
            f"the detect run {detect_path} flagged nothing, so there is no region to correct; "
            "lower detect.min_delta or raise detect.alpha, or give xbl.mask=truth to use the planted pattern"
        )
    return ranked, flagged[0]


def detected_mask(detect_path: Path, height: int, width: int) -> np.ndarray:
    """The pixels the detect run's top finding points at, or a ConfigError saying why there are none."""
    ranked, top = detected_top(detect_path)
    if top["kind"] not in (PATCH, TRIGGER):
        raise ConfigError(
            f"the detect run's top finding ({top['family']} for class {top['class']}) covers the whole image, "
            "so no region can be penalized (additive noise is corrected along its direction instead, content "
            "removal not at all); give xbl.mask=truth to use the planted pattern's support, or remove its "
            "carriers with experiment=retrain_exact"
        )
    return finding_mask(ranked, top, height, width)


def detected_direction(detect_path: Path, train_x: torch.Tensor, train_y: torch.Tensor) -> torch.Tensor:
    """1 x C x H x W: the noise the top-ranked carriers of the detect run's noise finding share, against the
    other training images of their class. As many as the evidence counted images of the class that carry
    it (its ``carriers``): on R3, n = 60, the top 10 gave a direction along which XBL took the spurious
    score from 0.92 to 0.34, all 60 to 0.18."""
    top = detected_top(detect_path)[1]
    table = pd.read_csv(detect_path / TABLES / f"{CARRIERS_TABLE}.csv")
    indices = table["index"].to_numpy()[: max(1, int(top["carriers"]))]
    chosen = torch.zeros(len(train_x), dtype=torch.bool, device=train_x.device)
    chosen[torch.from_numpy(indices).to(train_x.device)] = True
    others = ~chosen & (train_y == int(top["class"]))
    if not bool(others.any()):
        raise ConfigError(
            f"every training image of class {top['class']} carries the detect run's noise finding, so its noise "
            "cannot be told from the class's other images; give xbl.mask=truth or use experiment=retrain_exact"
        )
    return noise_direction(train_x[chosen], train_x[others])


def correction(
    x_cfg: dict[str, Any], detect_path: Path | None, support: np.ndarray, train_x: torch.Tensor, train_y: torch.Tensor
) -> tuple[ExplanationPenalty, np.ndarray]:
    """The objective and the pixels it acts on: the explanation penalty inside the detected (or true) region,
    or, for a detected noise finding, the direction penalty over the whole image."""
    h, w = support.shape
    if detect_path is not None and detected_top(detect_path)[1]["kind"] == NOISE:
        direction = detected_direction(detect_path, train_x, train_y)
        return DirectionPenalty(direction, x_cfg["direction_strength"]), np.ones((h, w), dtype=bool)
    mask = support if detect_path is None else detected_mask(detect_path, h, w)
    penalty = ExplanationPenalty(
        torch.from_numpy(mask)[None, None].to(torch.float32), x_cfg["strength"], x_cfg["explanation"]
    )
    return penalty, mask


def run(cfg: dict[str, Any], run_dir: RunDir, parents: list[Path]) -> dict[str, Any]:
    """Mask, fine-tune with the explanation penalty, score before / after / exact."""
    x_cfg = cfg["xbl"]
    parent = load_trained_parent(cfg, parents[0])
    poisoned, device, model = parent.poisoned, parent.device, parent.model
    data = poisoned.data
    support = poisoned.pattern.support(data.image_shape)
    exact_path = parents[-1] if x_cfg["compare_exact"] else None
    train_x, train_y = to_tensor(poisoned.train_x, device), torch.from_numpy(data.train_y).to(device)
    detect_path = parents[1] if x_cfg["mask"] == "detected" else None
    objective, mask = correction(x_cfg, detect_path, support, train_x, train_y)
    objective.setup(model, train_y)
    others = np.setdiff1d(np.arange(len(train_y)), poisoned.indices)[: max(0, EVALUATED_IMAGES - len(poisoned.indices))]
    probe = torch.from_numpy(np.concatenate([np.sort(poisoned.indices), others])).to(device)
    loss_before = mean_explanation_loss(objective, model, train_x[probe], train_y[probe])
    settings = dataclasses.replace(train_settings(cfg), epochs=x_cfg["epochs"], lr=x_cfg["lr"], lr_schedule="constant")
    log.info(
        "XBL (%s, %s mask of %d pixels): %d epochs at lr %g, strength %g",
        objective.method(model),
        x_cfg["mask"],
        int(mask.sum()),
        settings.epochs,
        settings.lr,
        x_cfg["strength"],
    )
    fit = fit_and_store(cfg, run_dir, model, train_x, train_y, settings=settings, objective=objective)
    objective.setup(model, train_y)
    loss_after = mean_explanation_loss(objective, model, train_x[probe], train_y[probe])
    objective.end_training()
    after, indicators = score_poisoned(cfg, model, poisoned, device)
    save_indicators(run_dir, indicators)
    train_cfg = parent_config(cfg, OWN_KEYS)
    results_dir = Path(cfg["results_dir"])
    baseline = baseline_comparison(train_cfg, indicators, results_dir)
    record: dict[str, Any] = {
        **after,
        **baseline,
        **before_and_exact(train_cfg, parent.record, parent.path, exact_path, bool(baseline)),
    }
    history = fit.history
    record.update(
        {
            "xbl.method": objective.method(model),
            "xbl.mask_pixels": int(mask.sum()),
            "xbl.mask_iou": iou(mask, support),
            "xbl.explanation_loss_before": loss_before,
            "xbl.explanation_loss_after": loss_after,
            "parent_run_id": parent.path.name,
            "detect_run_id": parents[1].name if x_cfg["mask"] == "detected" else None,
            **training_record(history, poisoned.indices, device),
        }
    )
    return record


EXPERIMENT = Experiment(
    run,
    check,
    requires,
    FIELDS,
    summary_keys=DELETION_SUMMARY,
    debiased_parent=True,
    artifacts=(MODEL, HISTORY, INDICATORS),
)
