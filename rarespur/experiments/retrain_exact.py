"""``experiment=retrain_exact`` (docs/science.md#deletion): the gold standard of deletion.

The same model seed and recipe as ``experiment=train`` (with parent=debias: as ``experiment=debias``,
the method, its held-out split and its stopping rule), trained from scratch on the training set
without its poisoned images. Deletion experiments compare
with it (``exact.*`` columns) and run it first when the store lacks it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rarespur.engine.scoring import to_tensor
from rarespur.experiments.debias import check as check_debias
from rarespur.experiments.experiment import Experiment
from rarespur.experiments.steps import (
    check_train_config,
    fit_and_store,
    held_out_data,
    load_data,
    make_model,
    parent_config,
    pick_device,
    poisoned_data,
    require_poison,
    score_poisoned,
    training_record,
    training_split,
)
from rarespur.store.comparison import baseline_comparison, save_indicators
from rarespur.store.run_dir import FINAL_STATE, HISTORY, INDICATORS, MODEL, RunDir

log = logging.getLogger(__name__)


def check(cfg: dict[str, Any]) -> None:
    require_poison(cfg, "trains without the poisoned images", " (the clean model is experiment=train poison.count=0)")
    if "debias" in cfg:
        check_debias(cfg)
    else:
        check_train_config(cfg)


def run(cfg: dict[str, Any], run_dir: RunDir, parents: list[Path]) -> dict[str, Any]:
    """Train from scratch on the cleaned set, score, compare with the clean baseline."""
    device = pick_device(cfg["device"])
    poisoned = poisoned_data(cfg, load_data(cfg))
    data = poisoned.data
    trained, held = training_split(cfg, poisoned)
    keep = np.setdiff1d(trained, poisoned.indices)
    model = make_model(cfg, data, device)
    log.info(
        "exact retraining of %s on %s without its %d poisoned images: %d images, %s",
        cfg["model"]["name"],
        cfg["dataset"]["name"],
        len(poisoned.indices),
        len(keep),
        device,
    )
    fit = fit_and_store(
        cfg,
        run_dir,
        model,
        to_tensor(poisoned.train_x[keep], device),
        torch.from_numpy(data.train_y[keep]).to(device),
        validation=held_out_data(poisoned, held, device),
    )
    history = fit.history
    metrics, indicators = score_poisoned(cfg, model, poisoned, device)
    save_indicators(run_dir, indicators)
    train_cfg = parent_config(cfg, ())
    return {
        **metrics,
        **fit.summary,
        **baseline_comparison(train_cfg, indicators, Path(cfg["results_dir"])),
        "n_removed": int(len(poisoned.indices)),
        "n_train": int(len(keep)),
        "n_test": int(len(data.test_y)),
        **training_record(history, poisoned.indices, device),
    }


EXPERIMENT = Experiment(run, check, debiased_parent=True, artifacts=(MODEL, HISTORY, INDICATORS, FINAL_STATE))
