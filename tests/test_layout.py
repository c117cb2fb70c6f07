"""The package's layout is its architecture: role folders only, each one in the layers contract."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "rarespur"
tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")


def test_the_top_level_holds_no_module_but_the_entry_points_and_errors():
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert modules == ["__init__.py", "__main__.py", "errors.py"]


def test_every_role_folder_is_a_layer_of_the_import_contract():
    contracts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [c for c in contracts if c["type"] == "layers"]
    named = {name.strip() for layer in layers["layers"] for name in layer.split("|")}
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert folders == named, "put a new folder into pyproject.toml's layers contract, where it belongs"
