"""``experiment=sensitivity``: pixel-removal curve and MLP weight map of a trained model
(docs/science.md#sensitivity-and-weights).

Works on the finished ``train`` run of the same config (the store trains it
first when missing), so the sensitivity of the models of a whole sweep can be
measured afterwards without training anything again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.integrate import trapezoid

from rarespur.config.schema import Field, count, positive_int
from rarespur.errors import ConfigError
from rarespur.experiments.experiment import Experiment
from rarespur.experiments.steps import (
    check_train_config,
    load_data,
    make_model,
    parent_config,
    pick_device,
    poisoned_data,
)
from rarespur.methods.sensitivity import first_layer_weight_map, pixel_removal_curve, removal_images
from rarespur.models.mlp import MLP
from rarespur.store.atomic import atomic_path
from rarespur.store.run_dir import MODEL, TABLES, RunDir, read_record

log = logging.getLogger(__name__)

OWN_KEYS = ("sensitivity",)
FIELDS = {
    "sensitivity.images": positive_int(),
    "sensitivity.seed": count(),
    "sensitivity.levels": Field(int, low=2),
}
WEIGHT_MAP = "weight_map.npy"
PARENT_METRICS = ("test_acc", "spurious_score", "spurious_test_acc", "pattern_norm", "baseline_score", "p_value")


def save_weight_map(run_dir: RunDir, weight_map: np.ndarray) -> None:
    """The map as an array (for the report) and as a picture one can open directly."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with atomic_path(run_dir.file(WEIGHT_MAP)) as tmp:
        np.save(tmp, weight_map)
    with atomic_path(run_dir.file("weight_map.png")) as tmp:
        plt.imsave(tmp, weight_map, cmap="viridis", format="png")


def check(cfg: dict[str, Any]) -> None:
    check_train_config(cfg)
    n_train, images = len(load_data(cfg).train_y), cfg["sensitivity"]["images"]
    if not 1 <= images <= n_train:
        raise ConfigError(f"sensitivity.images={images} but the training set has {n_train} images; choose 1..{n_train}")


def requires(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The train run of the same overrides: its model is what is measured."""
    return [parent_config(cfg, OWN_KEYS)]


def run(cfg: dict[str, Any], run_dir: RunDir, parents: list[Path]) -> dict[str, Any]:
    """Load the train run's model, measure the removal curve, save the weight map of an MLP."""
    (parent_path,) = parents
    parent = read_record(parent_path)
    device = pick_device(cfg["device"])
    poisoned = poisoned_data(cfg, load_data(cfg))
    train_x, train_y = poisoned.train_x, poisoned.data.train_y
    settings = cfg["sensitivity"]
    model = make_model(cfg, poisoned.data, device)
    model.load_state_dict(torch.load(parent_path / MODEL, map_location=device, weights_only=True))
    chosen = removal_images(len(train_y), settings["images"], settings["seed"])
    log.info(
        "pixel removal on %d training images of run %s, %d levels", len(chosen), parent["run_id"], settings["levels"]
    )
    rows = pixel_removal_curve(
        model, train_x[chosen], train_y[chosen], settings["levels"], device, cfg["eval"]["batch_size"]
    )
    run_dir.write_table("pixel_removal", rows)
    record: dict[str, Any] = {
        "parent_run_id": parent["run_id"],
        **{key: parent[key] for key in PARENT_METRICS if key in parent},
        "pixel_removal_auc": float(trapezoid([r["mean_true_prob"] for r in rows], [r["p"] for r in rows])),
        "half_removed_true_prob": float(np.interp(0.5, [r["p"] for r in rows], [r["mean_true_prob"] for r in rows])),
    }
    if isinstance(model, MLP):
        save_weight_map(run_dir, first_layer_weight_map(model))
        record["weight_map_file"] = WEIGHT_MAP
    return record


EXPERIMENT = Experiment(run, check, requires, FIELDS, debiased_parent=True, artifacts=(f"{TABLES}/pixel_removal.csv",))
