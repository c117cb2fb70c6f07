"""``experiment=mem_inference`` (docs/science.md#membership-inference): are the rare poisoned images easier to identify
as training members?

Pool train + test (after data.train_limit / test_limit), split it by the data
seed into target-train / target-test / shadow-train / shadow-test
(:func:`rarespur.methods.mem_inference.split_pool`), plant the pattern into
``poison.count`` target-train images of the target class, train a target
model (poisoned target-train) and the paper's shadow model (clean
shadow-train) with the configured recipe, plus ``mem.num_shadow`` LiRA shadows
(random halves of target-train + target-test, model seeds
``train.model_seed + 1 + k`` so they do not share the target's initialization).
Then run the attacks of ``mem.attacks`` on target-train (members) vs
target-test (non-members); see :mod:`rarespur.methods.mem_inference` for how each scores
and picks its threshold.

Each model trains with its own resume checkpoint (``train_state_<model>.pt``)
and leaves its weights in ``trained_<model>.pt`` when done, so a preempted job
skips the models it already trained and resumes the one it was training;
these files are deleted when the job ends.
The target model's weights stay in ``target_model.pt`` (not ``model.pt``:
this is not a ``train`` run and must not be reused as one).

Record: ``attack.<name>.{acc,auc,tpr_at_1pct_fpr,tpr_at_0.1pct_fpr,members_flagged,
poisoned_flagged,poisoned_rank}`` per attack; the target model's ``test_acc``
and spurious-score metrics on target-test (with ``baseline_score`` / ``p_value``
against the finished n = 0 job of the same config); ``target_train_acc``,
``n_pool``, ``n_target_train``; ``poisoned_indices`` = indices into the pool
(training images first, then test images, after the limits). Tables:
``roc`` (attack, fpr, tpr; 200 points per attack).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rarespur.config.resolve import targets_of
from rarespur.config.schema import count
from rarespur.data.loaders import ImageData
from rarespur.data.patterns import Pattern, build_pattern
from rarespur.engine.scoring import score_model, to_tensor
from rarespur.errors import ConfigError
from rarespur.experiments.experiment import Experiment
from rarespur.experiments.steps import (
    check_objective,
    check_poisoning,
    fit_and_store,
    load_data,
    make_model,
    pick_device,
    run_objective,
    train_settings,
    trained_file,
    training_record,
)
from rarespur.methods.mem_inference import (
    ATTACKS,
    LIRA_MIN_SHADOWS,
    LiraShadows,
    MemberSplit,
    Outputs,
    attack_metrics,
    lira_assignment,
    logit_confidence,
    poison_target_train,
    roc_rows,
    run_attacks,
    split_pool,
)
from rarespur.store.atomic import atomic_path
from rarespur.store.comparison import baseline_comparison, save_indicators
from rarespur.store.damaged import load_or_set_aside
from rarespur.store.run_dir import INDICATORS, TABLES, RunDir

FIELDS = {"mem.num_shadow": count()}

log = logging.getLogger(__name__)

TARGET_MODEL = "target_model.pt"


def check_settings(mem: dict[str, Any]) -> list[str]:
    """The attacks to run, after checking mem.* (bad values name the fix)."""
    attacks = list(mem["attacks"])
    unknown = sorted(set(attacks) - set(ATTACKS))
    if unknown or not attacks:
        raise ConfigError(f"mem.attacks={attacks} has unknown or no entries {unknown}; valid: {list(ATTACKS)}")
    if any(a.startswith("lira") for a in attacks) and mem["num_shadow"] < LIRA_MIN_SHADOWS:
        raise ConfigError(
            f"mem.num_shadow={mem['num_shadow']}: LiRA needs >= {LIRA_MIN_SHADOWS} shadow models; "
            f"set mem.num_shadow>={LIRA_MIN_SHADOWS} or leave the lira attacks out of mem.attacks"
        )
    return attacks


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, x: np.ndarray, device: torch.device, batch_size: int) -> np.ndarray:
    """Logits (float32 NumPy) of channels-last images, in eval mode."""
    model.eval()
    t = to_tensor(x, device)
    return torch.cat([model(t[i : i + batch_size]) for i in range(0, len(t), batch_size)]).cpu().numpy()


def outputs_of(
    model: torch.nn.Module,
    pool_x: np.ndarray,
    pool_y: np.ndarray,
    members: np.ndarray,
    nonmembers: np.ndarray,
    device: torch.device,
    batch_size: int,
) -> Outputs:
    """The model's logits on its members and, separately, on its non-members (each from its own images)."""
    return Outputs(
        predict_logits(model, pool_x[members], device, batch_size),
        pool_y[members],
        predict_logits(model, pool_x[nonmembers], device, batch_size),
        pool_y[nonmembers],
    )


def train_one(
    name: str,
    cfg: dict[str, Any],
    run_dir: RunDir,
    x: np.ndarray,
    y: np.ndarray,
    model_seed: int,
    data: ImageData,
    device: torch.device,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> torch.nn.Module:
    """Train one model of the attack with the recipe, resumable: mid-training from train_state_<name>.pt,
    and a model already finished by an interrupted attempt is loaded from trained_<name>.pt. A debiasing
    method (parent=debias) that stops early validates on `validation`."""
    model = make_model({**cfg, "train": {**cfg["train"], "model_seed": model_seed}}, data, device)
    trained = run_dir.file(trained_file(name))
    state = load_or_set_aside(trained)
    if state is not None:
        log.info("model %s: already trained by an earlier attempt, loading %s", name, trained.name)
        model.load_state_dict(state)
        return model
    settings = replace(train_settings(cfg), seed=model_seed)
    log.info("model %s: training on %d images, %d epochs", name, len(y), settings.epochs)
    held_out = (
        None if validation is None else (to_tensor(validation[0], device), torch.from_numpy(validation[1]).to(device))
    )
    x_t, y_t = to_tensor(x, device), torch.from_numpy(y).to(device)
    history = fit_and_store(cfg, run_dir, model, x_t, y_t, settings=settings, name=name, validation=held_out).history
    log.info("model %s: done, train loss %.4f acc %.4f", name, history[-1]["loss"], history[-1]["acc"])
    return model


def check(cfg: dict[str, Any]) -> None:
    """mem.* and the poisoning of target-train (the part of the pool the seed gives the target model)."""
    check_settings(cfg["mem"])
    data = load_data(cfg)
    check_objective(cfg, data)
    pool_y = np.concatenate([data.train_y, data.test_y])
    split = split_pool(len(pool_y), cfg["poison"]["seed"])
    check_poisoning(cfg, pool_y[split.target_train], data.num_classes, data.image_shape)


def run(cfg: dict[str, Any], run_dir: RunDir, parents: list[Path]) -> dict[str, Any]:
    """Split, poison, train target / shadow / LiRA models, attack, score the pattern on target-test."""
    attacks = check_settings(cfg["mem"])
    device = pick_device(cfg["device"])
    data = load_data(cfg)
    pool = _poisoned_pool(cfg, data)
    models, target, shadow, lira = _train_models(cfg, run_dir, pool, attacks, data, device)
    results = run_attacks(attacks, target, shadow, lira, cfg["poison"]["seed"])
    record = _attack_record(run_dir, attacks, results, pool)
    nonmembers = pool.split.target_test
    metrics, indicators = score_model(
        models["target"],
        pool.x[nonmembers],
        pool.y[nonmembers],
        pool.pattern,
        cfg["poison"]["seed"],
        targets_of(cfg),
        cfg["eval"]["eps"],
        device,
        cfg["eval"]["batch_size"],
    )
    save_indicators(run_dir, indicators)
    for name in models:
        run_dir.file(trained_file(name)).unlink(missing_ok=True)
    return {
        **metrics,
        **baseline_comparison(cfg, indicators, Path(cfg["results_dir"])),
        **record,
        "target_train_acc": float((target.member_logits.argmax(1) == target.member_y).mean()),
        "n_pool": int(len(pool.y)),
        "n_target_train": int(len(pool.split.target_train)),
        **training_record(None, pool.poisoned, device),
    }


@dataclass
class _Pool:
    """Train and test pooled, split in four by the seed, with target-train poisoned."""

    x: np.ndarray
    y: np.ndarray
    split: MemberSplit
    poisoned: np.ndarray  # pool indices of the poisoned images (all in target-train)
    pattern: Pattern


def _poisoned_pool(cfg: dict[str, Any], data: ImageData) -> _Pool:
    pattern = build_pattern(cfg["pattern"])
    pattern.check_shape(data.image_shape)
    seed, targets = cfg["poison"]["seed"], targets_of(cfg)
    pool_x = np.concatenate([data.train_x, data.test_x])
    pool_y = np.concatenate([data.train_y, data.test_y])
    split = split_pool(len(pool_y), seed)
    pool_x, poisoned = poison_target_train(pool_x, pool_y, split, cfg["poison"]["count"], targets, pattern, seed)
    log.info(
        "membership inference on %s: pool %d, four parts of %d, %d target-train images of class %s get %s",
        cfg["dataset"]["name"],
        len(pool_y),
        len(split.target_train),
        len(poisoned),
        targets,
        pattern.name,
    )
    return _Pool(pool_x, pool_y, split, poisoned, pattern)


def _train_models(
    cfg: dict[str, Any], run_dir: RunDir, pool: _Pool, attacks: list[str], data: ImageData, device: torch.device
) -> tuple[dict[str, nn.Module], Outputs, Outputs | None, LiraShadows | None]:
    """The target model (stored), the shadow model the shadow and loss attacks need, and LiRA's shadows:
    the models by name, and what each attack reads of them."""
    split, batch, model_seed = pool.split, cfg["eval"]["batch_size"], cfg["train"]["model_seed"]
    val_fraction = getattr(run_objective(cfg), "val_fraction", 0.0)

    def train(name: str, part: np.ndarray, seed: int) -> nn.Module:
        # a method that validates (SiH stops early) gets images that no attack counts for or against this model:
        # shadow-test for the target and LiRA's shadows, target-test for the paper's shadow
        outside = split.target_test if name == "shadow" else split.shadow_test
        held = outside[: round(val_fraction * len(part))]
        validation = (pool.x[held], pool.y[held]) if len(held) else None
        models[name] = train_one(name, cfg, run_dir, pool.x[part], pool.y[part], seed, data, device, validation)
        return models[name]

    models: dict[str, nn.Module] = {}
    train("target", split.target_train, model_seed)
    with atomic_path(run_dir.file(TARGET_MODEL)) as tmp:
        torch.save(models["target"].state_dict(), tmp)
    target = outputs_of(models["target"], pool.x, pool.y, split.target_train, split.target_test, device, batch)
    shadow = None
    if {"shadow", "loss"} & set(attacks):
        train("shadow", split.shadow_train, model_seed)
        shadow = outputs_of(models["shadow"], pool.x, pool.y, split.shadow_train, split.shadow_test, device, batch)
    lira = None
    if any(a.startswith("lira") for a in attacks):
        candidates = np.concatenate([split.target_train, split.target_test])
        keep = lira_assignment(cfg["mem"]["num_shadow"], len(candidates), cfg["poison"]["seed"])
        phi = []
        for k, chosen in enumerate(keep):
            logits = predict_logits(
                train(f"lira{k}", candidates[chosen], model_seed + 1 + k), pool.x[candidates], device, batch
            )
            phi.append(logit_confidence(logits, pool.y[candidates]))
        lira = LiraShadows(np.stack(phi), keep)
    return models, target, shadow, lira


def _attack_record(run_dir: RunDir, attacks: list[str], results: dict, pool: _Pool) -> dict[str, Any]:
    """``attack.<name>.*`` metrics of every attack (the poisoned members' among them); the ROC table."""
    poisoned_pos = np.searchsorted(pool.split.target_train, pool.poisoned)  # sorted; the poisoned lie in it
    record: dict[str, Any] = {}
    roc: list[dict[str, Any]] = []
    for name in attacks:
        for key, value in attack_metrics(results[name], poisoned_pos).items():
            record[f"attack.{name}.{key}"] = value
        roc.extend(roc_rows(name, results[name]))
        log.info(
            "attack %s: acc %.4f auc %.4f members flagged %.3f poisoned flagged %.3f rank %.3f",
            name,
            record[f"attack.{name}.acc"],
            record[f"attack.{name}.auc"],
            record[f"attack.{name}.members_flagged"],
            record[f"attack.{name}.poisoned_flagged"],
            record[f"attack.{name}.poisoned_rank"],
        )
    run_dir.write_table("roc", roc)
    return record


EXPERIMENT = Experiment(
    run, check, fields=FIELDS, debiased_parent=True, artifacts=(TARGET_MODEL, INDICATORS, f"{TABLES}/roc.csv")
)
