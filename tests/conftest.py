"""Shared fixtures and helpers: where the real datasets live (skipping, or failing on CI, when they do not),
composing and running jobs, launching run.py and ``python -m rarespur``, and tiny problems and models."""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Iterator, NoReturn

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

if TYPE_CHECKING:
    import pandas as pd
    import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# Tests copy datasets into their own folders; cached decodes of each copy would pile up in the user's cache.
# The cache's own test turns it on in a folder of its own.
os.environ.setdefault("RARESPUR_ARRAY_CACHE", "0")
SHARED_DATA = Path(os.environ.get("RARESPUR_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))
CONF_DIR = REPO_ROOT / "conf"


def load_benchmark(name: str) -> ModuleType:
    """A script of benchmarks/ as a module, for tests that check a baseline computes what ours does (the
    scripts import their shared helpers as ``common``, from their own folder)."""
    folder = str(REPO_ROOT / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def collect_runs(results_dir: str | Path) -> pd.DataFrame:
    """The store's table as ``python -m rarespur collect`` makes it (late clean baselines filled in)."""
    from rarespur.experiments import clean_twin_baselined
    from rarespur.store.collect import collect

    return collect(results_dir, clean_twin_baselined())


def compose_config(*overrides: str, return_hydra_config: bool = False, config_dir: Path = CONF_DIR) -> DictConfig:
    """The project's config composed with `overrides`, as `python run.py <overrides>` would see it."""
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def job(store: str | Path, *overrides: str, base: tuple[str, ...] = ("device=cpu",)) -> dict:
    """Run one job in-process into the store `store` (``python run.py results_dir=STORE *base *overrides``)
    and return its record; `base` is a test module's common overrides."""
    from rarespur.launch.runner import run_job

    return run_job(compose_config(f"results_dir={store}", *base, *overrides))


def run_py(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` from the project root, as a user types it; output captured as text."""
    return subprocess.run(
        [sys.executable, "run.py", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


def multirun(
    store: Path, sweep_dir: Path, *overrides: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python run.py -m OVERRIDES`` with its records in `store` and Hydra's sweep folder at `sweep_dir`."""
    return run_py("-m", *overrides, f"results_dir={store}", f"hydra.sweep.dir={sweep_dir}", timeout=timeout, env=env)


def rarespur_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m rarespur ARGS`` (collect, status, report) from the project root; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "rarespur", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


def tiny_problem(
    n: int = 64, *, side: int = 6, seed: int = 0, classes: int = 2, gaussian: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` random 1 x side x side images in [0, 1) labeled by their top-left pixel (> 0.5), plus their
    bottom-right pixel for classes=3; gaussian=True: float64 standard-normal images labeled by the sign of
    their sum. Seeded: the same call gives the same tensors."""
    import torch

    g = torch.Generator().manual_seed(seed)
    if gaussian:
        x = torch.randn(n, 1, side, side, generator=g, dtype=torch.float64)
        return x, (x.flatten(1).sum(1) > 0).long()
    x = torch.rand(n, 1, side, side, generator=g)
    y = (x[:, 0, 0, 0] > 0.5).long()
    if classes == 3:
        y = y + (x[:, 0, -1, -1] > 0.5).long()
    elif classes != 2:
        raise ValueError(f"tiny_problem has 2 or 3 classes, not {classes}")
    return x, y


def tiny_model(
    inputs: int = 36, hidden: int = 16, classes: int = 2, dtype: torch.dtype | None = None
) -> torch.nn.Module:
    """A seeded one-hidden-layer MLP on flattened images (inputs = pixels of tiny_problem's images)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, classes))
    return model if dtype is None else model.to(dtype)


def data_required() -> bool:
    """Whether missing real data fails the tests that need it instead of skipping them: on CI (CI set, as
    .ci/run does) or when RARESPUR_REQUIRE_DATA=1, so a CI run cannot pass by skipping every real-data test."""
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return ci or os.environ.get("RARESPUR_REQUIRE_DATA") == "1"


def missing_data(path: Path) -> NoReturn:
    """Skip the test that needs `path`, or fail it where the data is required (see data_required)."""
    message = f"real data not found: looked for {path}; set RARESPUR_TEST_DATA to the folder that holds it"
    if data_required():
        pytest.fail(f"{message} (required here: CI or RARESPUR_REQUIRE_DATA=1 is set)", pytrace=False)
    pytest.skip(message)


def require_data(path: Path) -> Path:
    """`path` if it exists; else the test skips, or fails where the data is required."""
    if not path.exists():
        missing_data(path)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only folder with real MNIST, Fashion-MNIST and the CIFAR-10 JPEG zip."""
    require_data(SHARED_DATA / "MNIST" / "raw")
    return SHARED_DATA


def extract_cifar_subset(shared_data: Path, dest: Path, classes: tuple[str, ...], per_split: dict[str, int]) -> Path:
    """Unpack the first images of some classes from the CIFAR-10 JPEG zip into `dest` (never into shared data)."""
    import zipfile

    with zipfile.ZipFile(require_data(shared_data / "cifar10-jpeg.zip")) as archive:
        names = archive.namelist()
        for split, count in per_split.items():
            for cls in classes:
                prefix = f"cifar10-jpeg/{split}/{cls}/"
                for name in sorted(n for n in names if n.startswith(prefix) and n.endswith(".jpg"))[:count]:
                    archive.extract(name, dest)
    return dest / "cifar10-jpeg"


@contextlib.contextmanager
def killed_after_epoch(epoch: int, error: type[BaseException] = KeyboardInterrupt) -> Iterator[None]:
    """Runs trained inside stop with `error` right after `epoch` (its checkpoint is written): KeyboardInterrupt
    as a killed job would, an Exception as a job that fails; a relaunch then resumes from that checkpoint. Packs too: their models' callbacks are
    called once every model's checkpoint of the epoch is written."""
    from rarespur.experiments import steps, train

    real = steps.epoch_callback

    def dying(total, enabled, run_dir, model=None):
        inner = real(total, enabled, run_dir, model)

        def on_epoch(row):
            inner(row)
            if row["epoch"] == epoch:
                raise error(f"stopped after epoch {epoch}")

        return on_epoch

    steps.epoch_callback = train.epoch_callback = dying
    try:
        yield
    finally:
        steps.epoch_callback = train.epoch_callback = real
