"""``experiment=debias``: train with a debiasing method (``debias=vanilla|lff|sih``) and measure the bias.

The same run answers both questions of docs/science.md#signal-is-harder: on Colored MNIST (``dataset=cmnist``), accuracy
on the unbiased test set, split into bias-aligned and bias-conflicting images; on a poisoned dataset, the
spurious score of the planted pattern, with the clean baseline (the debias run of poison.count=0) and
its p-value exactly as train runs, so vanilla, LfF and SiH sit beside ordinary training in one table.
The method's biased classifier is scored too (``bias_test_acc``), and a SiH run saves its bias
visualization (``bias_visualization.png``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rarespur.engine.scoring import predict_proba, to_tensor
from rarespur.errors import ConfigError
from rarespur.experiments.experiment import Experiment
from rarespur.experiments.steps import (
    check_train_config,
    checked_model,
    debias_method,
    fit_and_store,
    held_out_data,
    load_data,
    make_model,
    pick_device,
    poisoned_data,
    score_poisoned,
    training_record,
    training_split,
)
from rarespur.methods.debias.visualize import save_grid
from rarespur.store.atomic import atomic_path
from rarespur.store.comparison import baseline_comparison, save_indicators
from rarespur.store.run_dir import HISTORY, INDICATORS, MODEL, RunDir

log = logging.getLogger(__name__)

EXAMPLES_PER_CLASS = 2
BIAS_VISUALIZATION = "bias_visualization.png"  # a method's drawing of its bias (SiH: DeepFool grid), for the report


def check(cfg: dict[str, Any]) -> None:
    """Regularizers are objectives too, and a run trains with one objective: the method."""
    if cfg["regularizer"]["name"] != "none":
        raise ConfigError(
            f"experiment=debias trains with its debiasing method as the objective; regularizer="
            f"{cfg['regularizer']['name']} cannot be added to it: use regularizer=none"
        )
    objective = debias_method(cfg)
    if objective.needs_validation() and objective.val_fraction == 0:
        raise ConfigError(
            f"debias={cfg['debias']['name']} stops early or decays on plateaus, which needs validation data, but "
            "debias.val_fraction=0; set debias.val_fraction (e.g. 0.1) or debias.early_stopping=0 "
            "debias.lr_schedule=constant"
        )
    check_train_config(cfg)
    data = load_data(cfg)
    if objective.needs_validation() and round(objective.val_fraction * len(data.train_y)) == 0:
        raise ConfigError(
            f"debias.val_fraction={objective.val_fraction} of {len(data.train_y)} training images holds out none, "
            f"and debias={cfg['debias']['name']} needs validation data; raise debias.val_fraction or data.train_limit"
        )
    objective.check_model(checked_model(cfg, data))


def split_accuracies(predicted: np.ndarray, y: np.ndarray, bias: np.ndarray | None, prefix: str) -> dict[str, float]:
    """Accuracy on all images and, where the data have a bias label, on bias-aligned / -conflicting ones."""
    correct = predicted == y
    out = {f"{prefix}acc": float(correct.mean())}
    if bias is not None:
        aligned = bias == y
        for name, mask in (("aligned", aligned), ("conflicting", ~aligned)):
            out[f"{prefix}acc_{name}"] = float(correct[mask].mean()) if mask.any() else float("nan")
    return out


def run(cfg: dict[str, Any], run_dir: RunDir, parents: list[Path]) -> dict[str, Any]:
    device = pick_device(cfg["device"])
    poisoned = poisoned_data(cfg, load_data(cfg))
    data = poisoned.data
    objective = debias_method(cfg)
    model = make_model(cfg, data, device)
    train_idx, val_idx = training_split(cfg, poisoned)
    x = to_tensor(poisoned.train_x, device)
    y = torch.from_numpy(data.train_y).to(device)
    validation = held_out_data(poisoned, val_idx, device)
    log.info(
        "debiasing with %s: %s on %s, %d training + %d validation images, %s",
        objective.name,
        cfg["model"]["name"],
        cfg["dataset"]["name"],
        len(train_idx),
        len(val_idx),
        poisoned.describe() if cfg["poison"]["count"] else "nothing planted",
    )
    fit = fit_and_store(cfg, run_dir, model, x[train_idx], y[train_idx], objective=objective, validation=validation)
    del x
    metrics, indicators = score_poisoned(cfg, model, poisoned, device)
    save_indicators(run_dir, indicators)
    test_x = to_tensor(data.test_x, device)
    predicted = predict_proba(model, test_x, cfg["eval"]["batch_size"]).argmax(1).cpu().numpy()
    record = {**metrics, **split_accuracies(predicted, data.test_y, data.test_bias, "test_")}
    if objective.bias_model is not None:
        biased = predict_proba(objective.bias_model, test_x, cfg["eval"]["batch_size"]).argmax(1).cpu().numpy()
        record.update(split_accuracies(biased, data.test_y, data.test_bias, "bias_test_"))
    if data.train_bias is not None:
        record["train_conflict_fraction"] = float((data.train_bias[train_idx] != data.train_y[train_idx]).mean())
    test_y = torch.from_numpy(data.test_y).to(device)
    swap = objective.bias_swap(model, test_x, test_y, EXAMPLES_PER_CLASS, cfg["train"]["model_seed"])
    if swap is not None:
        with atomic_path(run_dir.file(BIAS_VISUALIZATION)) as tmp:
            save_grid(swap, tmp, data.classes)
        record["bias_swap_flipped"] = float(swap.flipped.mean()) if len(swap.flipped) else float("nan")
    history = fit.history
    if validation is not None and objective.early_stopping:
        sign = 1 if objective.monitor == "val_acc" else -1
        record["best_epoch"] = max(history, key=lambda row: sign * row[objective.monitor])["epoch"]
    return {
        **record,
        **baseline_comparison(cfg, indicators, Path(cfg["results_dir"])),
        "epochs_trained": len(history),
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "n_test": int(len(data.test_y)),
        **training_record(history, poisoned.indices, device),
    }


EXPERIMENT = Experiment(run, check=check, clean_twin_baseline=True, artifacts=(MODEL, HISTORY, INDICATORS))
