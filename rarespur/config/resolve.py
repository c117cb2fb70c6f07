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

from rarespur.config.names import parse_dataset_name, parse_model_name, resolve_model_name
from rarespur.config.schema import Field, check_fields, count, non_negative, positive, positive_int
from rarespur.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

# train.augment: none; aug01 = random crop (4 px zero padding) + horizontal flip on the float images;
# aug01_pil = the original's aug01, which also quantizes to uint8 (docs/science.md#training).
AUGMENTS = ("none", "aug01", "aug01_pil")

# Keys that say where or how a job runs, not what it computes: left out of the run-store key.
RUNTIME_KEYS = ("data.root", "data.download", "device", "results_dir", "progress", "checkpoint_every", "pack", "logger")


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
    if "notify" in out:  # the value is not repeated: it is likely a URL with a password in it
        raise ConfigError(
            "notify.* is set in the job's config, which every run saves; a notification URL can hold a password: "
            "select notify=apprise and put the URL in the environment (export RARESPUR_NOTIFY_URL=...)"
        )
    train, recipe, optim = out["train"], out["dataset"]["recipe"], out["optim"]
    if optim["name"] not in recipe["lr"]:
        raise ConfigError(f"optim={optim['name']} unknown; valid optimizers: {sorted(recipe['lr'])}")
    if train["lr"] is None:
        train["lr"] = recipe["lr"][optim["name"]]
    if train["augment"] is None:
        train["augment"] = recipe["augment"]
    out["model"]["name"] = resolve_model_name(out["model"]["name"])
    if isinstance(out["dataset"].get("path"), str):  # one run whatever the spelling (../data, ~/data, ./data)
        out["dataset"]["path"] = str(Path(out["dataset"]["path"]).expanduser().resolve())
    check_fields(out, COMMON_FIELDS)
    if not isinstance(out.get("results_dir"), str) or not out["results_dir"].strip():
        raise ConfigError(
            f"results_dir={out.get('results_dir')!r} is not a directory; give the run store's folder, "
            "e.g. results_dir=results (the default)"
        )
    if Path(out["results_dir"]).expanduser().is_file():
        raise ConfigError(
            f"results_dir={out['results_dir']} is a file, not a folder; give the run store's folder, "
            "e.g. results_dir=results (the default)"
        )
    reg = out["regularizer"]
    if reg["name"] == "l2":
        if train["weight_decay"] not in (None, reg["strength"]):  # equal: an already resolved config
            raise ConfigError("regularizer=l2 sets the weight decay: give regularizer.strength, not train.weight_decay")
        train["weight_decay"] = reg["strength"]
    if train["weight_decay"] is None:
        train["weight_decay"] = recipe["weight_decay"]
    targets = targets_of(out)
    if not targets or len(set(targets)) != len(targets):
        raise ConfigError(f"poison.target must be a class or a list of distinct classes, got {out['poison']['target']}")
    for target in targets:
        Field(int, low=0).cast("poison.target", target)
    return out


# The keys every experiment has: their types and valid ranges (an experiment's own keys are declared
# with the experiment). Floats are cast, so grad_clip=0 and grad_clip=0.0 are one run.
COMMON_FIELDS: dict[str, Field] = {
    "epochs": positive_int(),
    "pack.size": positive_int(),
    "pack.chain": positive_int(),
    "checkpoint_every": positive_int(),
    "train.batch_size": positive_int(),
    "train.lr": positive(),
    "train.weight_decay": Field(float, low=0, nullable=True, null_means="the dataset's recipe"),
    "train.augment": Field(str, choices=AUGMENTS),
    "train.grad_clip": Field(float, low=0, what=">= 0 (0 = off)"),
    "train.model_seed": count(),
    "optim.momentum": Field(float, low=0, high=1),
    "regularizer.strength": non_negative(),
    "poison.count": count(),
    "poison.seed": count(),
    "eval.eps": Field(float, low=0, high=1),
    "eval.batch_size": positive_int(),
    "dataset.conflict_ratio": Field(float, low=0, high=1),
    "dataset.color_std": non_negative(),
    "dataset.seed": count(),
    "dataset.severity": Field(int, low=1, high=5),
    "dataset.corruptions": Field(str, choices=("type0", "type1")),
    "data.train_limit": Field(int, low=1, nullable=True, null_means="all images", what="a positive number of images"),
    "data.test_limit": Field(int, low=1, nullable=True, null_means="all images", what="a positive number of images"),
}


def targets_of(cfg: dict[str, Any]) -> list[int]:
    """The poisoned classes as a list (one class, or two for the two-class variant)."""
    target = cfg["poison"]["target"]
    return list(target) if isinstance(target, list) else [target]


def without_keys(cfg: dict[str, Any], dotted_keys: tuple[str, ...]) -> dict[str, Any]:
    """A deep copy of `cfg` without the (dotted) keys or whole nodes named; names it lacks are ignored."""
    out = copy.deepcopy(cfg)
    for dotted in dotted_keys:
        *parents, leaf = dotted.split(".")
        node = out
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return out


def identity(cfg: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that determines the result (what the run store keys on)."""
    out = without_keys(cfg, RUNTIME_KEYS)
    for group in ("regularizer", "debias", "experiment"):  # the code that implements the name, not a setting
        out.get(group, {}).pop("_target_", None)
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
    if not (CONF_DIR / "pattern" / f"{parsed['pattern']}.yaml").exists():
        known = sorted(p.stem for p in (CONF_DIR / "pattern").glob("v*.yaml"))
        raise ConfigError(
            f"dataset={name}: pattern version {parsed['pattern']} unknown; an original dataset string is "
            f"{{twoclass}}{{dataset}}{{version}}-{{n}}-{{target(s)}}-{{seed}} with version one of {', '.join(known)} "
            "(e.g. dataset=mnistv8-3-0-0)"
        )
    return {
        "defaults": [f"/dataset/{parsed['dataset']}@dataset", {"override /pattern": parsed["pattern"]}],
        "poison": {"count": parsed["count"], "target": parsed["target"], "seed": parsed["seed"]},
    }


def model_name_config(name: str) -> dict[str, Any] | None:
    """The Hydra config an original model string stands for, or None if `name` is not one.

    ``aug01-ce-tor-altResNet20Norm02`` becomes model resnet20 and ``train.augment=aug01_pil``; without
    an augmentation part (``ce-tor-LargeMLP``) the original trained without one, so ``train.augment=none``.
    A package-global config like :func:`dataset_name_config`'s, so it also works in sweeps.
    """
    parsed = parse_model_name(name)
    if parsed is None:
        return None
    return {"defaults": [f"/model/{parsed['model']}@model"], "train": {"augment": parsed["augment"]}}
