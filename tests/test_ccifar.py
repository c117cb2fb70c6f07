"""Corrupted CIFAR-10 (dataset=ccifar10): the authors' make-up (per-class conflict share, aligned images carry their
class's corruption, unbiased test set), the corruptions, the cache and the fingerprint. Built from a small subset of
the shared CIFAR-10 JPEG tree (the image-folder source); the archive source needs the real CIFAR-10 archive."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import compose_config, extract_cifar_subset, job

pytest.importorskip("cv2", reason="dataset=ccifar10 needs the ccifar extra: pip install -e '.[ccifar]'")
pytest.importorskip("skimage", reason="dataset=ccifar10 needs the ccifar extra: pip install -e '.[ccifar]'")

from rarespur.data import corrupted_cifar10 as ccifar  # noqa: E402
from rarespur.data.cifar_corruptions import CORRUPTION_TYPES, CORRUPTIONS, corrupt  # noqa: E402
from rarespur.data.fingerprint import data_fingerprint  # noqa: E402
from rarespur.data.loaders import data_files, load_dataset  # noqa: E402
from rarespur.errors import ConfigError  # noqa: E402

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_PER_CLASS, TEST_PER_CLASS = 40, 20
TYPE0 = CORRUPTION_TYPES["type0"]


@pytest.fixture(scope="module")
def cifar_tree(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 train + 20 test images of each class, as an image folder (train/<class>/*.jpg, test/<class>/*.jpg)."""
    dest = tmp_path_factory.mktemp("cifar")
    return extract_cifar_subset(shared_data, dest, CLASSES, {"train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS})


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own cache folder (corrupted splits and file checksums), never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "rarespur" / "ccifar10"


@pytest.fixture
def count_corruptions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The corruption names of every image corrupted from now on."""
    calls: list[str] = []
    real = ccifar.corrupt

    def counting(image, name, level, seed=0):
        calls.append(name)
        return real(image, name, level, seed)

    monkeypatch.setattr(ccifar, "corrupt", counting)
    return calls


def load(tree: Path, ratio: float = 0.1, limits: tuple = (None, None), **options):
    return load_dataset("ccifar10", path=tree, options={"conflict_ratio": ratio, "seed": 0, **options}, limits=limits)


def test_conflict_share_per_class_is_the_ratio(cifar_tree: Path) -> None:
    for ratio in (0.1, 0.05):
        data = load(cifar_tree, ratio)
        for c in range(10):
            bias = data.train_bias[data.train_y == c]
            assert len(bias) == TRAIN_PER_CLASS
            assert abs(np.mean(bias != c) - ratio) <= 1 / len(bias) + 1e-9, (ratio, c, np.bincount(bias))
            # the conflicting ones are spread over the other classes' corruptions, never more than one apart
            others = np.bincount(bias[bias != c], minlength=10)[np.arange(10) != c]
            assert others.max() - others.min() <= 1


def test_aligned_images_carry_their_class_corruption(cifar_tree: Path) -> None:
    clean = load_dataset("imagefolder", path=cifar_tree)
    data = load(cifar_tree, 0.1)
    assert np.array_equal(data.train_y, clean.train_y)  # no limit: every image, file order kept
    clean_u8, corrupted_u8 = ccifar.to_uint8(clean.train_x), ccifar.to_uint8(data.train_x)
    for c in range(10):
        aligned = np.flatnonzero((data.train_y == c) & (data.train_bias == c))
        assert len(aligned) == 36  # 0.9 of 40
        for i in aligned[:3]:
            assert np.array_equal(corrupted_u8[i], corrupt(clean_u8[i], TYPE0[c], 5, 0)), (c, i)
    conflicting = np.flatnonzero(data.train_bias != data.train_y)
    i = conflicting[0]
    assert np.array_equal(corrupted_u8[i], corrupt(clean_u8[i], TYPE0[data.train_bias[i]], 5, 0))


def test_test_set_is_unbiased(cifar_tree: Path) -> None:
    data = load(cifar_tree, 0.01)
    for c in range(10):
        counts = np.bincount(data.test_bias[data.test_y == c], minlength=10)
        assert counts.tolist() == [TEST_PER_CLASS // 10] * 10, (c, counts)


def test_cache_is_reused_and_keyed_by_the_ratio(cifar_tree: Path, own_cache: Path, count_corruptions: list) -> None:
    first = load(cifar_tree, 0.1)
    n_train, n_test = 10 * TRAIN_PER_CLASS, 10 * TEST_PER_CLASS
    assert len(count_corruptions) == n_train + n_test
    assert len(list(own_cache.glob("*.npy"))) == 2
    count_corruptions.clear()
    again = load(cifar_tree, 0.1)
    assert count_corruptions == []  # nothing corrupted a second time
    assert np.array_equal(first.train_x, again.train_x) and np.array_equal(first.test_bias, again.test_bias)
    other = load(cifar_tree, 0.05)
    assert len(count_corruptions) == n_train  # a new training split; the test split does not depend on the ratio
    assert len(list(own_cache.glob("train-*.npy"))) == 2 and len(list(own_cache.glob("test-*.npy"))) == 1
    assert not np.array_equal(first.train_bias, other.train_bias)
    count_corruptions.clear()
    load(cifar_tree, 0.1, severity=3)
    assert len(count_corruptions) == n_train + n_test  # the level is part of the key too


def test_limits_cut_per_class_before_corrupting(cifar_tree: Path, count_corruptions: list) -> None:
    data = load(cifar_tree, 0.1, limits=(25, 12))
    assert len(count_corruptions) == 25 + 12  # only the kept images were corrupted
    assert np.bincount(data.train_y, minlength=10).tolist() == [3] * 5 + [2] * 5
    assert np.bincount(data.test_y, minlength=10).tolist() == [2, 2] + [1] * 8
    full = load(cifar_tree, 0.1)
    # the kept images are the first of each class, and an image corrupted alike is the same in both
    assert np.array_equal(data.train_x[data.train_y == 0], full.train_x[full.train_y == 0][:3])


def test_fingerprint_changes_with_the_source(cifar_tree: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(cifar_tree, copy)
    assert data_fingerprint("ccifar10", path=cifar_tree) == data_fingerprint("ccifar10", path=copy)
    assert data_fingerprint("ccifar10", path=cifar_tree) != data_fingerprint("imagefolder", path=cifar_tree)
    victim = sorted((copy / "train" / "cat").iterdir())[0]
    victim.write_bytes(sorted((cifar_tree / "test" / "dog").iterdir())[0].read_bytes())
    assert data_fingerprint("ccifar10", path=cifar_tree) != data_fingerprint("ccifar10", path=copy)
    # without dataset.path the source is the CIFAR-10 archive under data.root
    assert data_files("ccifar10", root=tmp_path / "empty") == []
    assert all(p.parent.name == "cifar-10-batches-py" for p in data_files("ccifar10", root=tmp_path))


def test_corruptions_change_the_image_and_are_deterministic() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    for name in CORRUPTIONS:
        for level in range(1, 6):
            out = corrupt(image, name, level, seed=0)
            assert out.shape == image.shape and out.dtype == np.uint8
            assert np.array_equal(out, corrupt(image, name, level, seed=0)), (name, level)
            if name != "original":
                assert not np.array_equal(out, image), (name, level)
    random = ("snow", "frost", "fog", "spatter", "elastic_transform", "gaussian_noise", "glass_blur", "motion_blur")
    for name in random:
        assert not np.array_equal(corrupt(image, name, 5, seed=0), corrupt(image, name, 5, seed=1)), name
    with pytest.raises(ConfigError, match="severity"):
        corrupt(image, "snow", 6)


def test_missing_extra_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from rarespur.data import cifar_corruptions

    monkeypatch.setattr(cifar_corruptions.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"ccifar extra: pip install -e '\.\[ccifar\]'") as err:
        ccifar.corrupt_split(np.zeros((1, 32, 32, 3), np.uint8), np.zeros(1, int), TYPE0, 5, 0, "train")
    assert "\n" not in str(err.value)


def test_config_composes_and_checks_ranges() -> None:
    from rarespur.config.resolve import resolve

    cfg = resolve(compose_config("experiment=debias", "dataset=ccifar10"))
    assert cfg["dataset"]["severity"] == 5 and cfg["dataset"]["corruptions"] == "type0"
    for bad in ("dataset.severity=6", "dataset.corruptions=type2", "dataset.conflict_ratio=1.5"):
        with pytest.raises(ConfigError):
            resolve(compose_config("dataset=ccifar10", bad))


def test_example_grid_png(cifar_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    clean = load_dataset("imagefolder", path=cifar_tree)
    picks = [np.flatnonzero(clean.train_y == c)[0] for c in (0, 3, 7)]
    out = tmp_path_factory.mktemp("grid")
    for kind in CORRUPTION_TYPES:
        path = ccifar.save_corruption_grid(ccifar.to_uint8(clean.train_x[picks]), out / f"ccifar10-{kind}.png", kind)
        assert path.stat().st_size > 0
        print(f"ccifar10 {kind} corruption grid (clean, then class 0..9's corruption): {path}")


@pytest.mark.slow
def test_debias_run_splits_accuracy(cifar_tree: Path, tmp_path: Path) -> None:
    record = job(
        tmp_path / "store",
        "experiment=debias",
        "dataset=ccifar10",
        f"dataset.path={cifar_tree}",
        "dataset.conflict_ratio=0.1",
        "debias=vanilla",
        "model=vae_conv",
        "epochs=1",
    )
    assert {"test_acc", "test_acc_aligned", "test_acc_conflicting"} <= set(record)
    assert record["data_fingerprint"]

    # the report shows what each class's corruption does to its images, from the run's own data
    from rarespur.report import write_report
    from rarespur.report.data import load as load_report
    from rarespur.report.debias import corruption_examples

    fig = corruption_examples(load_report(tmp_path / "store"))
    rows = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert rows == [f"{name}\n{corruption}" for name, corruption in zip(CLASSES, TYPE0)]
    conflicting = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert conflicting and all(title.startswith("conflicting:") for title in conflicting)
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 10 * 5 + len(conflicting)
    from test_report import layout_problems

    assert layout_problems(fig) == []
    index = write_report(tmp_path / "store", tmp_path / "report")
    assert (index.parent / "ccifar10_corruptions.png").stat().st_size > 10_000


def test_without_path_the_archive_is_the_source(
    cifar_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count_corruptions: list
) -> None:
    from rarespur.data import loaders

    read = []

    def fake_archive(root, download, path):  # the CIFAR-10 reader, serving the tree's images
        read.append((root, path))
        return loaders._load_imagefolder(root, download, cifar_tree)

    monkeypatch.setitem(loaders._LOADERS, "cifar10", fake_archive)
    options = {"conflict_ratio": 0.1, "seed": 0}
    from_archive = load_dataset("ccifar10", root=tmp_path, options=options, limits=(20, 10))
    assert read == [(tmp_path, None)]
    assert np.bincount(from_archive.train_y).tolist() == [2] * 10
    count_corruptions.clear()
    from_folder = load_dataset("ccifar10", path=cifar_tree, options=options, limits=(20, 10))
    assert count_corruptions == []  # the same clean pixels: the cache is keyed by content, not by where it came from
    assert np.array_equal(from_archive.train_x, from_folder.train_x)
