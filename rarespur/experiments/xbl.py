"""``experiment=xbl`` (docs/science.md#detection-and-xbl): correct a trained model by explanation-based learning.

Builds on the finished ``train`` run of the same config (the model), on its ``detect`` run (the mask:
the top flagged finding, grown over the flagged patches of its class) unless ``xbl.mask=truth`` (the
planted pattern's support, to tell detection errors from correction errors), and, to compare with,
its ``retrain_exact`` run. Fine-tunes on the same poisoned training set with
:class:`~rarespur.methods.detection.xbl.ExplanationPenalty` on the shared training loop, and reports the
model after, ``before.*`` (the parent) and ``exact.*`` side by side, as the deletion experiments do.
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
from rarespur.experiments.detect import FIELDS as DETECT_FIELDS
from rarespur.experiments.detect import FINDINGS_TABLE
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
from rarespur.methods.detection.scan import PATCH, finding_mask
from rarespur.methods.detection.xbl import EXPLANATIONS, ExplanationPenalty, mean_explanation_loss
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


def detected_mask(detect_path: Path, height: int, width: int) -> np.ndarray:
    """The pixels the detect run's top finding points at, or a ConfigError saying why there are none."""
    table = detect_path / TABLES / f"{FINDINGS_TABLE}.csv"
    ranked = pd.read_csv(table).to_dict("records")
    flagged = [row for row in ranked if row["flagged"]]
    if not flagged:
        raise ConfigError(
            f"the detect run {detect_path} flagged nothing, so there is no region to correct; "
            "lower detect.min_delta or raise detect.alpha, or give xbl.mask=truth to use the planted pattern"
        )
    top = flagged[0]
    if top["kind"] != PATCH:
        raise ConfigError(
            f"the detect run's top finding ({top['family']} for class {top['class']}) covers the whole image, "
            "so no region can be penalized; give xbl.mask=truth to use the planted pattern's support"
        )
    return finding_mask(ranked, top, height, width)


def run(cfg: dict[str, Any], run_dir: RunDir, parents: list[Path]) -> dict[str, Any]:
    """Mask, fine-tune with the explanation penalty, score before / after / exact."""
    x_cfg = cfg["xbl"]
    parent = load_trained_parent(cfg, parents[0])
    poisoned, device, model = parent.poisoned, parent.device, parent.model
    data = poisoned.data
    h, w, _ = data.image_shape
    support = poisoned.pattern.support(data.image_shape)
    mask = support if x_cfg["mask"] == "truth" else detected_mask(parents[1], h, w)
    exact_path = parents[-1] if x_cfg["compare_exact"] else None
    objective = ExplanationPenalty(
        torch.from_numpy(mask)[None, None].to(torch.float32), x_cfg["strength"], x_cfg["explanation"]
    )
    train_x, train_y = to_tensor(poisoned.train_x, device), torch.from_numpy(data.train_y).to(device)
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
    run, check, requires, FIELDS, summary_keys=DELETION_SUMMARY, artifacts=(MODEL, HISTORY, INDICATORS)
)
