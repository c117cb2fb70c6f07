"""Hydra config source for the names that have no YAML file of their own.

- ``dataset=mnistv8-3-0-0``: any original dataset string; the config comes from
  :func:`rarespur.config.resolve.dataset_name_config` (dataset, pattern and poison settings).
- ``model=largemlp``, ``model=paper_mlp``, ...: every alias of
  :mod:`rarespur.config.names`, so that table is the only place model names are listed.
- ``model=aug01-ce-tor-altResNet20Norm02``: any original model string; the config comes from
  :func:`rarespur.config.resolve.model_name_config` (the model and ``train.augment``).

Neither kind is listed (``--help`` shows the canonical options only). The
search-path plugin below puts ``rarespur-names://`` on every search path, so
both also work when a sweep file in sweeps/ is the primary config.
"""

from __future__ import annotations

import builtins
from typing import Any

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.errors import CompactHydraException
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

from rarespur.config.names import model_aliases
from rarespur.config.resolve import dataset_name_config, model_name_config
from rarespur.errors import ConfigError


def _split(config_path: str) -> tuple[str, str]:
    path = config_path[: -len(".yaml")] if config_path.endswith(".yaml") else config_path
    group, _, name = path.rpartition("/")
    return group, name


def _config(config_path: str) -> tuple[dict[str, Any], str] | None:
    """The config a name stands for and its package, or None when this source has no such name."""
    group, name = _split(config_path)
    if group == "model" and name.lower() in model_aliases():
        return {"name": model_aliases()[name.lower()]}, "model"
    original = {"dataset": dataset_name_config, "model": model_name_config}.get(group)
    if original is None:
        return None
    try:
        cfg = original(name)
    except ConfigError as err:  # an original string with a bad part: Hydra prints this line, no traceback
        raise CompactHydraException(f"error: {err}") from None
    return None if cfg is None else (cfg, "_global_")


class DatasetNameConfigSource(ConfigSource):
    @staticmethod
    def scheme() -> str:
        return "rarespur-names"

    def load_config(self, config_path: str) -> ConfigResult:
        found = _config(config_path)
        if found is None:
            raise ConfigLoadError(f"Config not found: {config_path}")
        cfg, package = found
        return ConfigResult(
            config=OmegaConf.create(cfg),
            path=f"{self.scheme()}://{self.path}",
            provider=self.provider,
            header={"package": package},
        )

    def available(self) -> bool:
        return True

    def is_group(self, config_path: str) -> bool:
        return config_path in ("", "dataset", "model")

    def is_config(self, config_path: str) -> bool:
        return _config(config_path) is not None

    def list(self, config_path: str, results_filter: ObjectType | None) -> builtins.list[str]:
        return []


class DatasetNameSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="rarespur", path=f"{DatasetNameConfigSource.scheme()}://")
