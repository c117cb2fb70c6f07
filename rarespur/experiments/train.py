"""``experiment=train`` (the paper's "train classifier"): poison, train, score the pattern.

If the clean baseline of the same config (poison.count=0, same pattern and
seeds) has finished in the run store, its per-image indicators give the
baseline score and the one-sided Welch t-test p-value.

:func:`run_pack` trains several such configs at once (``pack.size``, see
:mod:`rarespur.launch.pack_plan`): the same poisoning, models and scoring, one
:func:`rarespur.engine.packed_loop.train_packed` call for the training.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from rarespur.engine.packed_loop import PackMember, train_packed
from rarespur.engine.scoring import to_tensor
from rarespur.experiments.experiment import Experiment
from rarespur.experiments.steps import (
    Poisoning,
    data_fingerprint_of,
    epoch_callback,
    fit_and_store,
    load_data,
    make_model,
    pick_device,
    poisoned_data,
    poisoning,
    score_poisoned,
    store_model,
    train_settings,
    training_record,
)
from rarespur.methods.regularizers import build_objective
from rarespur.store.comparison import baseline_comparison, save_indicators
from rarespur.store.run_dir import (
    FINAL_STATE,
    HISTORY,
    INDICATORS,
    MODEL,
    TRAIN_STATE,
    RunDir,
    find_trained,
    read_record,
)

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
    return scored(cfg, run_dir, model, history, summary, poisoned, device, trained.name if trained else run_dir.key)


def scored(
    cfg: dict[str, Any],
    run_dir: RunDir,
    model: nn.Module,
    history: list[dict],
    summary: dict[str, Any],
    poisoned: Poisoning,
    device: torch.device,
    trained_in: str,
) -> dict[str, Any]:
    """The record's metrics of a trained model: spurious scores (docs/science.md#spurious-score), the baseline
    comparison, the training's end."""
    metrics, indicators = score_poisoned(cfg, model, poisoned, device)
    save_indicators(run_dir, indicators)
    return {
        **metrics,
        **summary,
        **baseline_comparison(cfg, indicators, Path(cfg["results_dir"])),
        "n_train": int(len(poisoned.data.train_y)),
        "n_test": int(len(poisoned.data.test_y)),
        **training_record(history, poisoned.indices, device),
        "model_trained_in": trained_in,
    }


def run_pack(
    cfgs: list[dict[str, Any]], run_dirs: list[RunDir], finish: Callable[[int, dict[str, Any] | Exception], None]
) -> None:
    """Train the models of `cfgs` (one pack: same data and recipe) together, then store and score each.

    ``finish(i, result)`` gets config i's record metrics, or the error that stopped it (the others go
    on), clean baselines first, so the poisoned runs of the pack find theirs for the p-value.
    """
    device = pick_device(cfgs[0]["device"])
    data = load_data(cfgs[0])
    plans = [poisoning(cfg, data) for cfg in cfgs]
    models, members = [], []
    for cfg, run_dir, plan in zip(cfgs, run_dirs, plans):
        models.append(make_model(cfg, data, device))
        members.append(
            PackMember(
                settings=build_objective(cfg["regularizer"]).adjust(train_settings(cfg)),
                poison_index=torch.from_numpy(plan.indices).to(device),
                poison_x=to_tensor(plan.rows(), device),
                checkpoint=run_dir.file(TRAIN_STATE),
                final_state=run_dir.file(FINAL_STATE),
                on_epoch=epoch_callback(cfg["epochs"], False, run_dir),  # the heartbeat; the pack logs progress
            )
        )
    log.info(
        "training a pack of %d %s on %s (%d images, stored once), %s",
        len(cfgs),
        cfgs[0]["model"]["name"],
        cfgs[0]["dataset"]["name"],
        len(data.train_y),
        device,
    )

    def pack_epoch(line: str) -> None:
        for run_dir in run_dirs:  # every model of the pack is alive for `status`, trained now or waiting its turn
            run_dir.heartbeat()
        if cfgs[0]["progress"]:
            log.info(line)

    outcomes = train_packed(
        models,
        to_tensor(data.train_x, device),
        torch.from_numpy(data.train_y).to(device),
        members,
        checkpoint_every=cfgs[0]["checkpoint_every"],
        progress=pack_epoch,
    )
    for i in sorted(range(len(cfgs)), key=lambda i: cfgs[i]["poison"]["count"] > 0):
        cfg, run_dir, model, outcome = cfgs[i], run_dirs[i], models[i], outcomes[i]
        if outcome.error is not None:
            finish(i, outcome.error)
            continue
        try:
            store_model(run_dir, model, outcome.history)
            summary = build_objective(cfg["regularizer"]).summary()
            metrics = scored(cfg, run_dir, model, outcome.history, summary, plans[i], device, run_dir.key)
        except Exception as err:  # this model's scoring failed; the pack's other models are still stored
            finish(i, err)
            continue
        finish(i, metrics)


EXPERIMENT = Experiment(run, clean_twin_baseline=True, run_pack=run_pack, artifacts=(MODEL, HISTORY, INDICATORS))
