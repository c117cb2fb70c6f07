"""``experiment=train`` (the paper's "train classifier"): poison, train, score the pattern.

If the clean baseline of the same config (poison.count=0, same pattern and
seeds) has finished in the run store, its per-image indicators give the
baseline score and the one-sided Welch t-test p-value.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rarespur.atomic import atomic_path, write_atomic
from rarespur.evaluate import to_tensor
from rarespur.experiments.common import (
    PoisonedData,
    epoch_callback,
    load_data,
    make_model,
    pick_device,
    poisoned_data,
    score_poisoned,
    train_settings,
)
from rarespur.store import (
    FINAL_STATE,
    HISTORY,
    MODEL,
    TRAIN_STATE,
    RunDir,
    baseline_comparison,
    find_trained,
    save_indicators,
)
from rarespur.train import train_model

log = logging.getLogger(__name__)


def save_and_score(
    cfg: dict[str, Any],
    run_dir: RunDir,
    model: torch.nn.Module,
    poisoned: PoisonedData,
    history: list[dict],
    device: torch.device,
) -> tuple[dict[str, float], dict[int, np.ndarray]]:
    """Store a freshly trained model (weights, history, per-image indicators) and score it (SPEC 1.6)."""
    with atomic_path(run_dir.file(MODEL)) as tmp:
        torch.save(model.state_dict(), tmp)
    write_atomic(run_dir.file(HISTORY), json.dumps(history))
    metrics, indicators = score_poisoned(cfg, model, poisoned, device)
    save_indicators(run_dir, indicators)
    return metrics, indicators


def run(cfg: dict[str, Any], run_dir: RunDir, parents: list[Path]) -> dict[str, Any]:
    """Poison, train (or reuse the identical finished model), score, compare with the baseline."""
    device = pick_device(cfg["device"])
    poisoned = poisoned_data(cfg, load_data(cfg))
    data = poisoned.data
    model = make_model(cfg, data, device)
    settings = train_settings(cfg)
    log.info(
        "training %s on %s: %d images, %s with %s, %s",
        cfg["model"]["name"],
        cfg["dataset"]["name"],
        len(data.train_y),
        poisoned.describe(),
        poisoned.pattern.name,
        device,
    )
    trained = find_trained(run_dir.path.parent, cfg)
    if trained is not None:
        log.info("the same model was already trained in %s: scoring it instead of training again", trained)
        model.load_state_dict(torch.load(trained / MODEL, map_location=device, weights_only=True))
        history = json.loads((trained / HISTORY).read_text())
    else:
        history = train_model(
            model,
            to_tensor(poisoned.train_x, device),
            torch.from_numpy(data.train_y).to(device),
            settings,
            checkpoint=run_dir.file(TRAIN_STATE),
            on_epoch=epoch_callback(settings.epochs, cfg["progress"], run_dir),
            checkpoint_every=cfg["checkpoint_every"],
            final_state=run_dir.file(FINAL_STATE),
        )
    metrics, indicators = save_and_score(cfg, run_dir, model, poisoned, history, device)
    return {
        **metrics,
        **baseline_comparison(cfg, indicators, Path(cfg["results_dir"])),
        "train_loss": history[-1]["loss"],
        "train_acc": history[-1]["acc"],
        "n_train": int(len(data.train_y)),
        "n_test": int(len(data.test_y)),
        "poisoned_indices": poisoned.indices.tolist(),
        "device_used": str(device),
        "model_trained_in": trained.name if trained is not None else run_dir.key,
    }
