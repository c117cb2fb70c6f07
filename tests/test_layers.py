"""The layering of pyproject.toml's import-linter contracts holds, and the code is in the house style."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

BIN = Path(sys.executable).parent


def test_import_contracts_hold():
    out = subprocess.run([str(BIN / "lint-imports")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "4 kept, 0 broken" in out.stdout


def test_ruff_lint_and_format_are_clean():
    paths = ["rarespur", "tests", "hydra_plugins", "benchmarks", "run.py"]
    lint = subprocess.run([str(BIN / "ruff"), "check", *paths], cwd=REPO_ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout[-3000:]
    fmt = subprocess.run(
        [str(BIN / "ruff"), "format", "--check", *paths], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout[-3000:]
