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

import torch

from rarespur.evaluate import to_tensor
from rarespur.experiments.common import (
    data_fingerprint_of,
    fit_and_store,
    load_data,
    make_model,
    pick_device,
    poisoned_data,
    score_poisoned,
    store_model,
)
from rarespur.experiments.experiment import Experiment
from rarespur.regularizers import build_objective
from rarespur.store import HISTORY, MODEL, RunDir, baseline_comparison, find_trained, read_record, save_indicators

log = logging.getLogger(__name__)


def run(cfg: dict[str, Any], run_dir: RunDir, parents: list[Path]) -> dict[str, Any]:
    """Poison, train (or reuse the identical finished model), score, compare with the baseline."""
    device = pick_device(cfg["device"])
    poisoned = poisoned_data(cfg, load_data(cfg))
    data = poisoned.data
    model = make_model(cfg, data, device)
    log.info(
        "training %s on %s: %d images, %s with %s, %s",
        cfg["model"]["name"],
        cfg["dataset"]["name"],
        len(data.train_y),
        poisoned.describe(),
        poisoned.pattern.name,
        device,
    )
    trained = find_trained(run_dir.path.parent, cfg, data_fingerprint_of(cfg))
    if trained is not None:
        log.info("the same model was already trained in %s: scoring it instead of training again", trained)
        model.load_state_dict(torch.load(trained / MODEL, map_location=device, weights_only=True))
        history = json.loads((trained / HISTORY).read_text())
        summary = {k: read_record(trained).get(k) for k in build_objective(cfg["regularizer"]).summary()}
        store_model(run_dir, model, history)
    else:
        fit = fit_and_store(
            cfg, run_dir, model, to_tensor(poisoned.train_x, device), torch.from_numpy(data.train_y).to(device)
        )
        history, summary = fit.history, fit.summary
    metrics, indicators = score_poisoned(cfg, model, poisoned, device)
    save_indicators(run_dir, indicators)
    return {
        **metrics,
        **summary,
        **baseline_comparison(cfg, indicators, Path(cfg["results_dir"])),
        "train_loss": history[-1]["loss"],
        "train_acc": history[-1]["acc"],
        "n_train": int(len(data.train_y)),
        "n_test": int(len(data.test_y)),
        "poisoned_indices": poisoned.indices.tolist(),
        "device_used": str(device),
        "model_trained_in": trained.name if trained is not None else run_dir.key,
    }


EXPERIMENT = Experiment(run)
