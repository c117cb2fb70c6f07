"""``experiment=retrain_exact`` (SPEC 1.9): the gold standard of deletion.

The same model seed and recipe as ``experiment=train``, trained from scratch
on the training set without its poisoned images. Deletion experiments compare
with it (``exact.*`` columns) and run it first when the store lacks it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from rarespur.deletion.common import kept_indices
from rarespur.errors import ConfigError
from rarespur.evaluate import to_tensor
from rarespur.experiments.common import (
    check_train_config,
    epoch_callback,
    load_data,
    make_model,
    parent_train_config,
    pick_device,
    poisoned_data,
    train_settings,
)
from rarespur.experiments.train import save_and_score
from rarespur.store import TRAIN_STATE, RunDir, baseline_comparison
from rarespur.train import train_model

log = logging.getLogger(__name__)


def check(cfg: dict[str, Any]) -> None:
    if cfg["poison"]["count"] == 0:
        raise ConfigError(
            "experiment=retrain_exact trains without the poisoned images, but poison.count=0 has none; "
            "set poison.count to a positive number (the clean model is experiment=train poison.count=0)"
        )
    check_train_config(cfg)


def run(cfg: dict[str, Any], run_dir: RunDir, parents: list[Path]) -> dict[str, Any]:
    """Train from scratch on the cleaned set, score, compare with the clean baseline."""
    device = pick_device(cfg["device"])
    poisoned = poisoned_data(cfg, load_data(cfg))
    data = poisoned.data
    keep = kept_indices(len(data.train_y), poisoned.indices)
    model = make_model(cfg, data, device)
    settings = train_settings(cfg)
    log.info(
        "exact retraining of %s on %s without its %d poisoned images: %d images, %s",
        cfg["model"]["name"],
        cfg["dataset"]["name"],
        len(poisoned.indices),
        len(keep),
        device,
    )
    history = train_model(
        model,
        to_tensor(poisoned.train_x[keep], device),
        torch.from_numpy(data.train_y[keep]).to(device),
        settings,
        checkpoint=run_dir.file(TRAIN_STATE),
        on_epoch=epoch_callback(settings.epochs, cfg["progress"], run_dir),
        checkpoint_every=cfg["checkpoint_every"],
    )
    metrics, indicators = save_and_score(cfg, run_dir, model, poisoned, history, device)
    train_cfg = parent_train_config(cfg, ())
    return {
        **metrics,
        **baseline_comparison(train_cfg, indicators, Path(cfg["results_dir"])),
        "train_loss": history[-1]["loss"],
        "train_acc": history[-1]["acc"],
        "n_removed": int(len(poisoned.indices)),
        "n_train": int(len(keep)),
        "n_test": int(len(data.test_y)),
        "poisoned_indices": poisoned.indices.tolist(),
        "device_used": str(device),
    }
