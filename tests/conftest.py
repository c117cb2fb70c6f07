"""Shared fixtures: where the real datasets live, and skipping when they do not."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RARESPUR_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))
CONF_DIR = REPO_ROOT / "conf"


def compose_config(*overrides: str, return_hydra_config: bool = False, config_dir: Path = CONF_DIR) -> DictConfig:
    """The project's config composed with `overrides`, as `python run.py <overrides>` would see it."""
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only folder with real MNIST, Fashion-MNIST and the CIFAR-10 JPEG zip."""
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA}; set RARESPUR_TEST_DATA to ../shared/data")
    return SHARED_DATA


def extract_cifar_subset(shared_data: Path, dest: Path, classes: tuple[str, ...], per_split: dict[str, int]) -> Path:
    """Unpack the first images of some classes from the CIFAR-10 JPEG zip into `dest` (never into shared data)."""
    import zipfile

    with zipfile.ZipFile(shared_data / "cifar10-jpeg.zip") as archive:
        names = archive.namelist()
        for split, count in per_split.items():
            for cls in classes:
                prefix = f"cifar10-jpeg/{split}/{cls}/"
                for name in sorted(n for n in names if n.startswith(prefix) and n.endswith(".jpg"))[:count]:
                    archive.extract(name, dest)
    return dest / "cifar10-jpeg"


@contextlib.contextmanager
def killed_after_epoch(epoch: int) -> Iterator[None]:
    """Runs trained inside stop with KeyboardInterrupt right after `epoch` (its checkpoint is written), as a
    killed job would; a relaunch then resumes from that checkpoint. Packs too: their models' callbacks are
    called once every model's checkpoint of the epoch is written."""
    from rarespur.experiments import common, train

    real = common.epoch_callback

    def dying(total, enabled, run_dir):
        inner = real(total, enabled, run_dir)

        def on_epoch(row):
            inner(row)
            if row["epoch"] == epoch:
                raise KeyboardInterrupt

        return on_epoch

    common.epoch_callback = train.epoch_callback = dying
    try:
        yield
    finally:
        common.epoch_callback = train.epoch_callback = real
