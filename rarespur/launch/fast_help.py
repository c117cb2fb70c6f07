"""``run.py --help`` in half a second instead of more than one.

Hydra's help lists the options of every config group, its own and ours (about 90), and for
each it rebuilds the config repository from a deep copy of its whole config store: about
0.7 s of a 1.1 s ``--help``. Within one help command nothing is added to that store, so one
repository per (config name, overrides) serves every group; the text printed is the same.
"""

from __future__ import annotations

import sys
from typing import Any

HELP_FLAGS = ("--help", "-h", "--hydra-help")


def speed_up_help(argv: list[str] | None = None) -> None:
    """When `argv` (default: sys.argv) asks for help, let Hydra's config loader reuse one repository per
    (config name, overrides) for the group listings; otherwise change nothing."""
    if not any(flag in (sys.argv if argv is None else argv) for flag in HELP_FLAGS):
        return
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.object_type import ObjectType

    repos: dict[tuple[Any, ...], Any] = {}

    def get_group_options(
        self: ConfigLoaderImpl,
        group_name: str,
        results_filter: ObjectType | None = ObjectType.CONFIG,
        config_name: str | None = None,
        overrides: list[str] | None = None,
    ) -> list[str]:
        key = (id(self), config_name, tuple(overrides or ()))
        if key not in repos:
            repos[key] = self._parse_overrides_and_create_caching_repo(config_name, list(overrides or []))[1]
        return repos[key].get_group_options(group_name, results_filter)

    ConfigLoaderImpl.get_group_options = get_group_options  # type: ignore[method-assign]
