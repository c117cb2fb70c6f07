"""``experiment=incremental_retraining`` (SPEC 1.9): make the poisoned model forget by training on.

Starts from the finished ``train`` run of the same config (trained first if
missing), removes the poisoned images and continues training with the
parent's optimizer state (``deletion.mode``: ``paper`` at the final learning
rate, ``restart_lr`` with the schedule started again). The record has the
model after, ``before.*`` (the parent) and, with ``deletion.compare_exact``,
``exact.*`` (``experiment=retrain_exact`` of the same config) side by side.
"""
from __future__ import annotations

import json
from typing import Any

import torch

from rarespur.atomic import atomic_path, write_atomic
from rarespur.errors import ConfigError
from rarespur.experiments.common import check_deletion_start, epoch_callback
from rarespur.experiments.train import HISTORY
from rarespur.store import MODEL, TRAIN_STATE, RunDir

OWN_KEYS = ("deletion",)
HISTORY_TABLE = "retraining_history"


def check_deletion_config(deletion: dict[str, Any]) -> None:
    """Fail before any training on a bad ``deletion`` group."""
    from rarespur.deletion.retraining import MODES

    if deletion["mode"] not in MODES:
        raise ConfigError(f"deletion.mode={deletion['mode']!r} unknown; valid: {', '.join(MODES)}")
    epochs = deletion["epochs"]
    if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1):
        raise ConfigError(
            f"deletion.epochs must be a positive number of epochs or null (parent epochs + 1), got {epochs!r}"
        )
    if not isinstance(deletion["compare_exact"], bool):
        raise ConfigError(f"deletion.compare_exact must be true or false, got {deletion['compare_exact']!r}")


def check(cfg: dict[str, Any]) -> None:
    check_deletion_config(cfg["deletion"])
    check_deletion_start(cfg)


def run(cfg: dict[str, Any], run_dir: RunDir) -> dict[str, Any]:
    """Load the parent, continue on the cleaned set, score before / after / exact."""
    # Imported here: rarespur.deletion builds on this package (see rarespur/deletion/common.py).
    from rarespur.deletion.common import deletion_record, start_deletion
    from rarespur.deletion.retraining import continuation_epochs, incremental_retrain

    deletion = cfg["deletion"]
    start = start_deletion(cfg, OWN_KEYS)
    epochs = continuation_epochs(cfg)
    history = incremental_retrain(
        start,
        deletion["mode"],
        epochs,
        checkpoint=run_dir.file(TRAIN_STATE),
        on_epoch=epoch_callback(epochs, cfg["progress"], run_dir),
        checkpoint_every=cfg["checkpoint_every"],
    )
    with atomic_path(run_dir.file(MODEL)) as tmp:
        torch.save(start.model.state_dict(), tmp)
    write_atomic(run_dir.file(HISTORY), json.dumps(history))
    run_dir.write_table(HISTORY_TABLE, [{**row, "epoch_total": cfg["epochs"] + row["epoch"]} for row in history])
    return {
        **deletion_record(start, start.model, OWN_KEYS, deletion["compare_exact"]),
        "continuation_epochs": epochs,
        "lr_first": history[0]["lr"],
        "lr_last": history[-1]["lr"],
        "train_loss": history[-1]["loss"],
        "train_acc": history[-1]["acc"],
    }
