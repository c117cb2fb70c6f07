"""From a composed Hydra config to the exact, validated values a job runs with.

Hydra composes; this module decides. Nulls that mean "the dataset's recipe"
are filled in here, so two configs that train the same thing resolve to the
same values and therefore the same run-store key. It imports no torch, so the
Hydra plugin that expands original dataset names stays light.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rarespur.errors import ConfigError
from rarespur.model_names import resolve_model_name
from rarespur.poisoning import parse_dataset_name

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# Keys that say where or how a job runs, not what it computes: left out of the run-store key.
RUNTIME_KEYS = ("data.root", "data.download", "device", "results_dir", "progress", "checkpoint_every")


def _group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def resolve(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """Plain dict of the job's config with recipe defaults filled in and values checked."""
    if isinstance(cfg, DictConfig):
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(f"config values missing: {', '.join(missing)}; set them on the command line")
        out = OmegaConf.to_container(cfg, resolve=True)
    else:
        out = copy.deepcopy(cfg)
    out.pop("hydra", None)
    _cast_floats(out)
    train, recipe, optim = out["train"], out["dataset"]["recipe"], out["optim"]
    if optim["name"] not in recipe["lr"]:
        raise ConfigError(f"optim={optim['name']} unknown; valid optimizers: {sorted(recipe['lr'])}")
    if train["lr"] is None:
        train["lr"] = recipe["lr"][optim["name"]]
    if train["augment"] is None:
        train["augment"] = recipe["augment"]
    out["model"]["name"] = resolve_model_name(out["model"]["name"])
    reg = out["regularizer"]
    if reg["name"] == "l2":
        if train["weight_decay"] not in (None, reg["strength"]):  # equal: an already resolved config
            raise ConfigError("regularizer=l2 sets the weight decay: give regularizer.strength, not train.weight_decay")
        train["weight_decay"] = reg["strength"]
    elif reg["name"] not in ("none", "gaussian_noise"):
        raise ConfigError(f"regularizer={reg['name']} unknown; valid: {_group_options('regularizer')}")
    if train["weight_decay"] is None:
        train["weight_decay"] = recipe["weight_decay"]
    if train["augment"] not in ("none", "aug01"):
        raise ConfigError(f"train.augment={train['augment']!r} unknown; valid: none, aug01")
    poison = out["poison"]
    targets = targets_of(out)
    if not targets or len(set(targets)) != len(targets):
        raise ConfigError(f"poison.target must be a class or a list of distinct classes, got {poison['target']}")
    for key in ("count", "seed"):
        if not isinstance(poison[key], int) or poison[key] < 0:
            raise ConfigError(f"poison.{key} must be a non-negative integer, got {poison[key]!r}")
    for key in ("train_limit", "test_limit"):
        limit = out["data"][key]
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"data.{key} must be a positive number of images or null, got {limit!r}")
    if out["epochs"] < 1 or train["batch_size"] < 1 or out["checkpoint_every"] < 1:
        raise ConfigError("epochs, train.batch_size and checkpoint_every must be >= 1")
    return out


# Values that are floats whatever the user typed: grad_clip=0 and grad_clip=0.0 are one run.
FLOAT_KEYS = (
    "train.lr",
    "train.weight_decay",
    "train.grad_clip",
    "eval.eps",
    "regularizer.strength",
    "regularizer.sigma",
    "optim.momentum",
)


def _cast_floats(cfg: dict[str, Any]) -> None:
    for dotted in FLOAT_KEYS:
        group, key = dotted.split(".")
        node = cfg.get(group, {})
        if isinstance(node.get(key), (int, float)) and not isinstance(node.get(key), bool):
            node[key] = float(node[key])


def targets_of(cfg: dict[str, Any]) -> list[int]:
    """The poisoned classes as a list (one class, or two for the two-class variant)."""
    target = cfg["poison"]["target"]
    return list(target) if isinstance(target, list) else [target]


def identity(cfg: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that determines the result (what the run store keys on)."""
    out = copy.deepcopy(cfg)
    for dotted in RUNTIME_KEYS:
        *parents, leaf = dotted.split(".")
        node = out
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return out


def training_identity(cfg: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that determines the trained weights.

    Evaluation settings never do; for a clean run (poison.count=0) neither do the
    pattern, target and data seed, which only matter for scoring. Runs that share
    this identity can share one trained model.
    """
    out = identity(cfg)
    out.pop("eval", None)
    if out["poison"]["count"] == 0:
        out.pop("pattern", None)
        out["poison"] = {"count": 0}
    return out


def dataset_name_config(name: str) -> dict[str, Any] | None:
    """The Hydra config an original dataset string stands for, or None if `name` is not one.

    ``mnistv8-3-0-0`` becomes the mnist dataset, pattern v8 and poison
    count/target/seed 3/0/0, as a package-global config with a defaults list,
    so it also works inside multirun sweeps (``dataset=mnistv8-3-0-0,mnistv8-5-0-0``).
    """
    parsed = parse_dataset_name(name)
    if parsed is None:
        return None
    return {
        "defaults": [f"/dataset/{parsed['dataset']}@dataset", {"override /pattern": parsed["pattern"]}],
        "poison": {"count": parsed["count"], "target": parsed["target"], "seed": parsed["seed"]},
    }
