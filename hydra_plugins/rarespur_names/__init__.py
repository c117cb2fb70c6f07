"""Hydra config source that makes the original dataset strings valid dataset options.

``dataset=mnistv8-3-0-0`` has no YAML file; this source answers for any name
that matches the original pattern and hands Hydra the config from
:func:`rarespur.config.dataset_name_config`. The search-path plugin below puts
``rarespur-names://`` on every search path, so it also works when a sweep file
in sweeps/ is the primary config.
"""
from __future__ import annotations

from typing import List, Optional

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

from rarespur.config import dataset_name_config


def _name(config_path: str) -> Optional[str]:
    path = config_path[: -len(".yaml")] if config_path.endswith(".yaml") else config_path
    group, _, name = path.rpartition("/")
    return name if group == "dataset" else None


class DatasetNameConfigSource(ConfigSource):
    @staticmethod
    def scheme() -> str:
        return "rarespur-names"

    def load_config(self, config_path: str) -> ConfigResult:
        name = _name(config_path)
        cfg = dataset_name_config(name) if name else None
        if cfg is None:
            raise ConfigLoadError(f"Config not found: {config_path}")
        return ConfigResult(
            config=OmegaConf.create(cfg),
            path=f"{self.scheme()}://{self.path}",
            provider=self.provider,
            header={"package": "_global_"},
        )

    def available(self) -> bool:
        return True

    def is_group(self, config_path: str) -> bool:
        return config_path in ("", "dataset")

    def is_config(self, config_path: str) -> bool:
        name = _name(config_path)
        return bool(name) and dataset_name_config(name) is not None

    def list(self, config_path: str, results_filter: Optional[ObjectType]) -> List[str]:
        return []


class DatasetNameSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="rarespur", path=f"{DatasetNameConfigSource.scheme()}://")
