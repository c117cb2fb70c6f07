"""Pipeline steps shared by experiment types: device, data (+ poisoning), model, settings."""

from __future__ import annotations

import copy
import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rarespur.config.resolve import targets_of
from rarespur.data.fingerprint import data_fingerprint
from rarespur.data.loaders import ImageData, dataset_options, load_dataset
from rarespur.data.patterns import Pattern, build_pattern
from rarespur.data.poisoning import choose_poison_indices, poison_images
from rarespur.data.splits import validation_split
from rarespur.engine.loop import EpochCallback, TrainSettings, train_model
from rarespur.engine.objective import Objective
from rarespur.engine.scoring import score_model, to_tensor
from rarespur.errors import ConfigError
from rarespur.methods.debias.debiaser import Debiaser
from rarespur.methods.regularizers import build_objective
from rarespur.models import build_model
from rarespur.store.atomic import atomic_path, write_atomic
from rarespur.store.run_dir import FINAL_STATE, HELPER_HISTORY, HISTORY, MODEL, TRAIN_STATE, RunDir, read_record

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    """`auto` = the first CUDA device if there is one (submitit sets CUDA_VISIBLE_DEVICES per job)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} requested but CUDA is not available; use device=cpu or device=auto")
    return device


@functools.lru_cache(maxsize=2)
def _load_clean(
    name: str, root: str | None, download: bool, path: str | None, options: tuple, limits: tuple, fingerprint: str
) -> ImageData:
    """The clean dataset, read once per process: the pre-flight check and the run share it, and so do
    the jobs of a sweep that Hydra's basic launcher runs one after another in one process. The data's
    fingerprint is part of the cache key, so files changed meanwhile are read again."""
    return load_dataset(name, root=root, download=download, path=path, options=dict(options), limits=limits)


def load_data(cfg: dict[str, Any]) -> ImageData:
    """The clean dataset of the config, cut to data.train_limit / data.test_limit if set.

    The arrays are shared between calls (see :func:`_load_clean`): copy before changing them.
    """
    data_cfg, ds_cfg = cfg["data"], cfg["dataset"]
    return _load_clean(
        ds_cfg["name"],
        data_cfg["root"],
        data_cfg["download"],
        ds_cfg.get("path"),
        tuple(sorted(dataset_options(ds_cfg).items())),
        (data_cfg["train_limit"], data_cfg["test_limit"]),
        data_fingerprint_of(cfg),
    )


@dataclass(frozen=True)
class Poisoning:
    """Which training images get which pattern: what scoring needs, without a poisoned copy of the training set
    (a pack of models keeps one clean copy and only each model's poisoned rows)."""

    data: ImageData  # clean train and test sets
    indices: np.ndarray  # poisoned training indices, in the order they were drawn
    pattern: Pattern
    targets: list[int]
    seed: int

    def describe(self) -> str:
        """How many images were poisoned, in the terms of the config (poison.count is per target class)."""
        if len(self.targets) == 1:
            return f"{len(self.indices)} of class {self.targets[0]} poisoned"
        per_class = len(self.indices) // len(self.targets)
        return f"{len(self.indices)} poisoned ({per_class} per class of {self.targets})"

    def rows(self) -> np.ndarray:
        """The poisoned training images alone (N x H x W x C), in the order of `indices`."""
        rows = self.data.train_x[self.indices]
        return self.pattern.apply(rows, self.seed) if len(rows) else rows


@dataclass(frozen=True)
class PoisonedData(Poisoning):
    train_x: np.ndarray  # training images with the pattern planted


def data_fingerprint_of(cfg: dict[str, Any]) -> str:
    """The fingerprint of the data `cfg` trains on (:func:`rarespur.data.fingerprint.data_fingerprint`)."""
    return data_fingerprint(cfg["dataset"]["name"], cfg["data"]["root"], cfg["dataset"].get("path"))


def check_poisoning(cfg: dict[str, Any], train_y: np.ndarray, num_classes: int, image_shape: tuple) -> Pattern:
    """Fail on a pattern, target or count that cannot work with this data (before anything is trained)."""
    pattern = build_pattern(cfg["pattern"])
    pattern.check_shape(image_shape)
    targets = targets_of(cfg)
    bad = [t for t in targets if not 0 <= t < num_classes]
    if bad:
        raise ConfigError(
            f"poison.target={bad[0] if len(bad) == 1 else bad} is not a class of {cfg['dataset']['name']}; "
            f"use a class in 0..{num_classes - 1}"
        )
    count = cfg["poison"]["count"]
    for target in targets:
        available = int((train_y == target).sum())
        if count > available:
            raise ConfigError(
                f"poison.count={count} is larger than class {target}, which has {available} training images; "
                f"use poison.count<={available}"
            )
    return pattern


def check_train_config(cfg: dict[str, Any]) -> None:
    """The pre-flight check of experiments that poison the training set: loads the data, so a missing
    dataset also fails here, before the run directory exists."""
    data = load_data(cfg)
    check_objective(cfg, data)
    check_poisoning(cfg, data.train_y, data.num_classes, data.image_shape)


def require_poison(cfg: dict[str, Any], needs: str, hint: str = "") -> None:
    """Refuse a clean config (poison.count=0) for an experiment that `needs` planted images ("removes the
    poisoned training images", ...); `hint` may name what to run instead."""
    if cfg["poison"]["count"] == 0:
        raise ConfigError(
            f"experiment={cfg['experiment']['name']} {needs}, but poison.count=0 plants none; "
            f"set poison.count to a positive number{hint}"
        )


def check_deletion_start(cfg: dict[str, Any]) -> None:
    """Deletion experiments remove the poisoned images, so there must be some."""
    require_poison(cfg, "removes the poisoned training images")
    check_train_config(cfg)


def poisoning(cfg: dict[str, Any], data: ImageData) -> Poisoning:
    """Which `poison.count` training images of each target class get the configured pattern."""
    pattern = check_poisoning(cfg, data.train_y, data.num_classes, data.image_shape)
    targets = targets_of(cfg)
    seed = cfg["poison"]["seed"]
    indices = choose_poison_indices(data.train_y, cfg["poison"]["count"], targets, seed)
    return Poisoning(data, indices, pattern, targets, seed)


def poisoned_data(cfg: dict[str, Any], data: ImageData) -> PoisonedData:
    """Plant the configured pattern into `poison.count` training images of each target class."""
    p = poisoning(cfg, data)
    train_x = poison_images(data.train_x, p.indices, p.pattern, p.seed)
    return PoisonedData(p.data, p.indices, p.pattern, p.targets, p.seed, train_x=train_x)


def score_poisoned(
    cfg: dict[str, Any], model: nn.Module, poisoned: Poisoning, device: torch.device
) -> tuple[dict[str, float], dict[int, np.ndarray]]:
    """Spurious-score metrics (docs/science.md#spurious-score) and per-image indicators of `model` on the clean test
    set, with the run's pattern."""
    return score_model(
        model,
        poisoned.data.test_x,
        poisoned.data.test_y,
        poisoned.pattern,
        poisoned.seed,
        poisoned.targets,
        cfg["eval"]["eps"],
        device,
        cfg["eval"]["batch_size"],
    )


def make_model(cfg: dict[str, Any], data: ImageData, device: torch.device) -> nn.Module:
    """The configured architecture, initialized from train.model_seed."""
    h, w, c = data.image_shape
    torch.manual_seed(cfg["train"]["model_seed"])
    return build_model(cfg["model"]["name"], (c, h, w), data.num_classes).to(device)


def train_settings(cfg: dict[str, Any]) -> TrainSettings:
    """The engine's settings from a resolved config (the regularizer adjusts them, see :func:`fit_and_store`)."""
    t, optim = cfg["train"], cfg["optim"]
    return TrainSettings(
        epochs=cfg["epochs"],
        batch_size=t["batch_size"],
        optimizer=optim["name"],
        lr=t["lr"],
        momentum=optim.get("momentum", 0.0),
        weight_decay=t["weight_decay"],
        grad_clip=t["grad_clip"],
        augment=t["augment"],
        seed=t["model_seed"],
    )


@dataclass(frozen=True)
class Fit:
    history: list[dict]  # one row per epoch
    summary: dict[str, float]  # the objective's fields for the record (e.g. dp_epsilon)


def fit_and_store(
    cfg: dict[str, Any],
    run_dir: RunDir,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: TrainSettings | None = None,
    start_from: dict | None = None,
    name: str | None = None,
    objective: Objective | None = None,
    validation: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Fit:
    """Train `model` in place with the config's objective (its regularizer), resumable, and store it.

    The run's own model (`name` None) goes to model.pt with history.json, and its final optimizer
    state to final_state.pt (incremental retraining continues from it); a helper model of the run
    (`name`, e.g. a membership-inference shadow) goes to trained_<name>.pt, so an interrupted run
    loads it instead of training it again, with its history in history_<name>.json. `settings` default to the config's recipe;
    `start_from` continues a finished training (see :func:`rarespur.engine.loop.train_model`); `objective`
    replaces the config's (:func:`run_objective`) and `validation` = (x, y) is validated on.
    """
    settings = settings if settings is not None else train_settings(cfg)
    checkpoint = run_dir.file(TRAIN_STATE if name is None else f"train_state_{name}.pt")
    objective = objective if objective is not None else run_objective(cfg)
    history = train_model(
        model,
        x,
        y,
        settings,
        checkpoint=checkpoint,
        on_epoch=epoch_callback(settings.epochs, cfg["progress"], run_dir, name),
        checkpoint_every=cfg["checkpoint_every"],
        final_state=run_dir.file(FINAL_STATE) if name is None and start_from is None else None,
        start_from=start_from,
        objective=objective,
        validation=validation,
    )
    if name is None:
        store_model(run_dir, model, history)
    else:
        with atomic_path(run_dir.file(trained_file(name))) as tmp:
            torch.save(model.state_dict(), tmp)
        write_atomic(run_dir.file(HELPER_HISTORY.format(name)), json.dumps(history))
        checkpoint.unlink(missing_ok=True)
    return Fit(history, objective.summary())


def store_model(run_dir: RunDir, model: nn.Module, history: list[dict]) -> None:
    """The run's model: weights (model.pt) and training history (history.json)."""
    with atomic_path(run_dir.file(MODEL)) as tmp:
        torch.save(model.state_dict(), tmp)
    write_atomic(run_dir.file(HISTORY), json.dumps(history))


def trained_file(name: str) -> str:
    """Where a run keeps the weights of its helper model `name` (see :func:`fit_and_store`)."""
    return f"trained_{name}.pt"


def debias_method(cfg: dict[str, Any]) -> Debiaser:
    """The config's debiasing method (the ``debias`` group), built."""
    objective = build_objective(cfg["debias"], group="debias")
    if not isinstance(objective, Debiaser):
        raise ConfigError(
            f"debias._target_={cfg['debias'].get('_target_')} is not a debiasing method "
            "(a rarespur.methods.debias.debiaser.Debiaser subclass)"
        )
    return objective


def run_objective(cfg: dict[str, Any]) -> Objective:
    """What every model of the run trains with: the debiasing method when there is one (experiment=debias, or
    parent=debias: a run on a debiased model trains its own models, e.g. membership-inference shadows, the same
    way), else the regularizer."""
    return debias_method(cfg) if "debias" in cfg else build_objective(cfg["regularizer"])


def training_split(cfg: dict[str, Any], poisoned: Poisoning) -> tuple[np.ndarray, np.ndarray]:
    """(trained on, held out): the training indices a run of `cfg` fits its model to and those it validates on.

    A debiasing method that validates holds out its biased split (docs/science.md#signal-is-harder), drawn from
    the model seed alone, so a poisoned run, its clean twin and the deletions built on it hold out the same
    images, and the poisoned images are always trained on; every other run trains on the whole set."""
    fraction = debias_method(cfg).val_fraction if "debias" in cfg else 0.0
    n = len(poisoned.data.train_y)
    return validation_split(n, fraction, cfg["train"]["model_seed"], keep=poisoned.indices)


def held_out_data(
    poisoned: PoisonedData, held: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The held-out images (as trained, poisoned where they are) and labels on the device; None when none are."""
    if not len(held):
        return None
    return to_tensor(poisoned.train_x[held], device), torch.from_numpy(poisoned.data.train_y[held]).to(device)


def check_objective(cfg: dict[str, Any], data: ImageData) -> None:
    """Build the config's objective (:func:`run_objective`), and let it look at the model it would train, before
    any run directory exists: a bad setting or a model it cannot train (DP-SGD and batch norm) fails here."""
    objective = run_objective(cfg)
    objective.adjust(train_settings(cfg))
    if type(objective).check_model is not Objective.check_model:  # build the model only for those that look
        objective.check_model(checked_model(cfg, data))


def checked_model(cfg: dict[str, Any], data: ImageData) -> nn.Module:
    """The config's model on the CPU, built to check it fits the data: a shape it cannot take is a ConfigError."""
    try:
        return make_model(cfg, data, torch.device("cpu"))
    except ValueError as err:
        raise ConfigError(
            f"model={cfg['model']['name']} cannot take {cfg['dataset']['name']}'s images: {err}"
        ) from None


def epoch_callback(total: int, enabled: bool, run_dir: RunDir, model: str | None = None) -> EpochCallback:
    """Per epoch: one progress line through logging, a heartbeat for `status` and the row to the run's
    trackers (`model`: the helper model being trained, None for the run's own)."""

    def on_epoch(row: dict) -> None:
        if enabled:
            validated = f"  val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.4f}" if "val_loss" in row else ""
            log.info(
                "epoch %d/%d  train_loss %.4f  train_acc %.4f%s  lr %.2g",
                row["epoch"],
                total,
                row["loss"],
                row["acc"],
                validated,
                row["lr"],
            )
        run_dir.epoch_done(row, model)

    return on_epoch


def parent_config(cfg: dict[str, Any], own_keys: tuple[str, ...], experiment: str = "train") -> dict[str, Any]:
    """The config of the `experiment` run that `cfg` builds on (its train run, its detect run, its exact
    retraining): `cfg` without its own top-level keys, so the parent is the run a sweep of that type has.
    On a debiased model (parent=debias: the config holds a ``debias`` method) the trained model is the debias
    run's, with the same method and recipe."""
    parent = copy.deepcopy(cfg)
    for key in own_keys:
        parent.pop(key, None)
    if experiment == "train" and "debias" in cfg:
        experiment = "debias"
    parent["experiment"] = {"name": experiment}
    return parent


def training_record(history: list[dict] | None, poisoned_indices: np.ndarray, device: torch.device) -> dict[str, Any]:
    """The record's account of how the model was trained: its last epoch (when this run trained one), which
    images were poisoned, and where it ran."""
    tail = {"train_loss": history[-1]["loss"], "train_acc": history[-1]["acc"]} if history else {}
    return {**tail, "poisoned_indices": poisoned_indices.tolist(), "device_used": str(device)}


@dataclass
class TrainedParent:
    """A finished train run that another experiment builds on, loaded for the config that builds on it."""

    path: Path
    record: dict[str, Any]
    poisoned: PoisonedData
    model: nn.Module  # the parent's final weights, on `device`; the caller's to change
    device: torch.device


def load_trained_parent(cfg: dict[str, Any], parent_path: Path) -> TrainedParent:
    """The parent train run of `cfg` with its model, after checking it poisoned the images `cfg` poisons."""
    record = read_record(parent_path)
    device = pick_device(cfg["device"])
    poisoned = poisoned_data(cfg, load_data(cfg))
    if record.get("poisoned_indices") != poisoned.indices.tolist():
        raise RuntimeError(
            f"the parent run {parent_path} poisoned other images than this config does now "
            "(different data files?); delete that run directory so it is trained again"
        )
    model = make_model(cfg, poisoned.data, device)
    model.load_state_dict(torch.load(parent_path / MODEL, map_location=device, weights_only=True))
    return TrainedParent(parent_path, record, poisoned, model, device)
