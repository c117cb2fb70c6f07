"""Names users type: model names and aliases, and the original code's dataset strings; no torch import.

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


MODELS: dict[str, ModelName] = {
    "mlp1x256": ModelName("mlp", "small MLP", ("small_mlp",)),
    "mlp2x256": ModelName("mlpv2", ""),
    "mlp3x256": ModelName("largemlp", "MLP", ("paper_mlp",)),
    "mlp3x512": ModelName("largemlpv2", "large MLP", ("large_mlp",)),
    "cnn": ModelName("cnn002", "CNN"),
    "resnet20": ModelName("resnet20", "ResNet20", ("altresnet20norm02",)),
    "resnet32": ModelName("resnet32", "ResNet32", ("altresnet32norm02",)),
    "resnet110": ModelName("resnet110", "ResNet110", ("altresnet110norm02",)),
    "vgg16": ModelName("vgg16", "Vgg16", ("vgg16norm02",)),
    # SiH's MLP VAE encoder + head (docs/science.md#signal-is-harder)
    "vae_mlp": ModelName("vae_mlp", "", ("sih_mlp",)),
    "vae_conv": ModelName("vae_conv", "", ("sih_conv",)),  # a convolutional one for 32x32 color images
}

_LOOKUP: dict[str, str] = {}
for _canonical, _entry in MODELS.items():
    for _name in (_canonical, _entry.store_name, *_entry.aliases):
        assert _LOOKUP.setdefault(_name, _canonical) == _canonical, f"model name {_name!r} is taken twice"


def resolve_model_name(name: str) -> str:
    """The canonical name of a canonical name or alias (any case); a typo lists the valid names."""
    if not isinstance(name, str):
        raise ConfigError(f"model.name must be a string, got {type(name).__name__}: {name!r}")
    try:
        return _LOOKUP[name.strip().lower()]
    except KeyError:
        raise ConfigError(f"model={name} is an unknown model; valid names: {', '.join(MODELS)}") from None


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
