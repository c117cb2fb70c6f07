"""Names users type: model names and aliases, and the original code's dataset and model strings; no torch import.

Canonical names say what a network is (``mlp3x256``: three hidden layers of
256); the paper's and the original code's names stay accepted as aliases,
matched case-insensitively. The run store keys a run by the original code's
name (``store_name``), so runs stored before a rename are still found.
Torch-free so that config resolution and the Hydra plugin that turns every
alias into a ``model=`` option stay light.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any

from rarespur.errors import ConfigError


@dataclass(frozen=True)
class ModelName:
    store_name: str  # the original code's class name, lowercase: what run keys are made of
    paper: str  # what the paper calls it ("" if it has no name there)
    aliases: tuple[str, ...] = ()
    original: str = ""  # the original code's architecture name, as in its model strings ("" if it has none)


MODELS: dict[str, ModelName] = {
    "mlp1x256": ModelName("mlp", "small MLP", ("small_mlp",), "MLP"),
    "mlp2x256": ModelName("mlpv2", "", (), "MLPv2"),
    "mlp3x256": ModelName("largemlp", "MLP", ("paper_mlp",), "LargeMLP"),
    "mlp3x512": ModelName("largemlpv2", "large MLP", ("large_mlp",), "LargeMLPv2"),
    "cnn": ModelName("cnn002", "CNN", (), "CNN002"),
    "resnet20": ModelName("resnet20", "ResNet20", ("altresnet20norm02",), "altResNet20Norm02"),
    "resnet32": ModelName("resnet32", "ResNet32", ("altresnet32norm02",), "altResNet32Norm02"),
    "resnet110": ModelName("resnet110", "ResNet110", ("altresnet110norm02",), "altResNet110Norm02"),
    "vgg16": ModelName("vgg16", "Vgg16", ("vgg16norm02",), "Vgg16Norm02"),
    # SiH's MLP VAE encoder + head (docs/science.md#signal-is-harder)
    "vae_mlp": ModelName("vae_mlp", "", ("sih_mlp",)),
    "vae_conv": ModelName("vae_conv", "", ("sih_conv",)),  # a convolutional one for 32x32 color images
    "vae_resnet": ModelName("vae_resnet", "", ("sih_resnet",)),  # SiH's ResNet18 VAE (Corrupted CIFAR-10)
}

_LOOKUP: dict[str, str] = {}
for _canonical, _entry in MODELS.items():
    for _name in (_canonical, _entry.store_name, *_entry.aliases):
        assert _LOOKUP.setdefault(_name, _canonical) == _canonical, f"model name {_name!r} is taken twice"


def resolve_model_name(name: str) -> str:
    """The canonical name of a canonical name or alias (any case); a typo lists the valid names."""
    if not isinstance(name, str):
        raise ConfigError(f"model.name must be a string, got {type(name).__name__}: {name!r}")
    canonical = _LOOKUP.get(name.strip().lower())
    if canonical is not None:
        return canonical
    if parse_model_name(name) is not None:  # checked in full: a bad part raises its own message
        raise ConfigError(
            f"model.name={name} is an original model string, which sets train.augment too: "
            f"give it as the model option, model={name}"
        )
    raise ConfigError(f"model={name} is an unknown model; valid names: {', '.join(MODELS)}")


def model_aliases() -> dict[str, str]:
    """Every accepted spelling that is not canonical (lowercase) -> its canonical name."""
    return {alias: canonical for alias, canonical in _LOOKUP.items() if alias != canonical}


def store_name(canonical: str) -> str:
    """The name a run's key is built from (the original code's), so renames never orphan stored runs."""
    return MODELS[canonical].store_name


_NAME_RE = re.compile(
    r"^(?P<twoclass>twoclass)?(?P<dataset>mnist|fashion|cifar10)(?P<version>v[0-9a-z]+)?"
    r"-(?P<count>[0-9]+)-(?P<targets>[0-9](?:-[0-9])?)-(?P<seed>[0-9]+)$"
)


def parse_dataset_name(name: str) -> dict[str, Any] | None:
    """Split an original dataset string (``mnistv8-3-0-0``, ``twoclassmnistv20-5-0-1-2``).

    Returns the config values it stands for, or None when `name` is not such a
    string. As in the original, a missing version means v1 (S1).
    """
    match = _NAME_RE.match(name)
    if match is None:
        return None
    targets = [int(t) for t in match["targets"].split("-")]
    if bool(match["twoclass"]) != (len(targets) == 2):
        return None
    return {
        "dataset": match["dataset"],
        "pattern": match["version"] or "v1",
        "count": int(match["count"]),
        "target": targets if match["twoclass"] else targets[0],
        "seed": int(match["seed"]),
    }


# The original's augmentation names -> train.augment: its aug01 quantizes to uint8 (docs/science.md#training).
ORIGINAL_AUGMENTS = {"aug01": "aug01_pil"}
ORIGINAL_LOSSES = ("ce",)  # the original's cross-entropy; its mse and kld losses are not implemented here
_MODEL_RE = re.compile(r"^(?:(?P<augment>[^-]+)-)?(?P<loss>[^-]+)-tor-(?P<arch>.*)$")


def parse_model_name(name: str) -> dict[str, str] | None:
    """Split an original model string (``aug01-ce-tor-altResNet20Norm02``, ``ce-tor-LargeMLP``):
    {augmentation-}loss-tor-architecture.

    Returns our model and ``train.augment`` (``none`` without an augmentation part, as the original
    then trains without one), or None when `name` is not such a string. A part we do not implement
    is a ConfigError that names it and lists what is valid.
    """
    match = _MODEL_RE.match(name)
    if match is None:
        return None
    originals = {entry.original.lower(): canonical for canonical, entry in MODELS.items() if entry.original}
    augment, loss, arch = match["augment"], match["loss"], match["arch"]
    if augment is not None and augment.lower() not in ORIGINAL_AUGMENTS:
        bad = f"augmentation {augment} unknown (valid: {', '.join(ORIGINAL_AUGMENTS)}, or leave it out for none)"
    elif loss.lower() not in ORIGINAL_LOSSES:
        bad = f"loss {loss} unknown (valid: {', '.join(ORIGINAL_LOSSES)})"
    elif arch.lower() not in originals:
        valid = ", ".join(entry.original for entry in MODELS.values() if entry.original)
        bad = f"architecture {arch} unknown (valid: {valid})"
    else:
        return {
            "model": originals[arch.lower()],
            "augment": ORIGINAL_AUGMENTS[augment.lower()] if augment is not None else "none",
        }
    raise ConfigError(
        f"model={name}: {bad}; an original model string is {{augmentation-}}{{loss}}-tor-{{architecture}} "
        "(e.g. model=aug01-ce-tor-altResNet20Norm02), or give one of our names (model=resnet20)"
    )


def import_target(group: str, node: dict[str, Any], what: str, example: str) -> Any:
    """The object a config node's ``_target_`` (``module.NAME``) names: a regularizer's or debias method's
    class, an experiment kept outside the package. A path that does not import is a ConfigError naming the
    key, the path and what it must point at (`what`, e.g. `example`)."""
    target = str(node["_target_"])
    module_name, _, attribute = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(
            f"{group}._target_={target!r} ({group}={node.get('name')}) cannot be imported ({err}); "
            f"give the import path of {what}, e.g. {example}"
        ) from None
