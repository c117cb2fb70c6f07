"""Clean datasets (docs/science.md#data): file order, shapes, [0, 1] pixels, clear errors, and no writes into the data
folder."""

from __future__ import annotations

import gzip
import os
import pickle
import re
import shutil
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rarespur.data.loaders import (
    DATASET_NAMES,
    CorruptDataError,
    DatasetNotFoundError,
    default_data_root,
    load_dataset,
)

from conftest import CONF_DIR, SHARED_DATA, extract_cifar_subset, require_data


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under `folder` with its size and mtime: any write shows up as a difference."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def write_idx(path: Path, array: np.ndarray) -> None:
    """An unsigned-byte idx file, gzipped when the name ends in .gz."""
    data = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def write_tiny_mnist(root: Path, suffix: str = ".gz") -> tuple[np.ndarray, np.ndarray]:
    """A 6-train / 2-test MNIST-layout dataset of 4x5 images; returns the train images and labels."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.RandomState(0)
    train_x, train_y = rng.randint(0, 256, (6, 4, 5)), np.array([3, 1, 4, 1, 5, 9])
    write_idx(raw / f"train-images-idx3-ubyte{suffix}", train_x)
    write_idx(raw / f"train-labels-idx1-ubyte{suffix}", train_y)
    write_idx(raw / f"t10k-images-idx3-ubyte{suffix}", rng.randint(0, 256, (2, 4, 5)))
    write_idx(raw / f"t10k-labels-idx1-ubyte{suffix}", np.array([2, 6]))
    return train_x, train_y


@pytest.fixture(scope="module")
def mnist(shared_data):
    return load_dataset("mnist", root=shared_data)


# ---------------------------------------------------------------------------
# real MNIST and Fashion-MNIST


def test_mnist_real_files(mnist):
    assert mnist.train_x.shape == (60000, 28, 28, 1) and mnist.test_x.shape == (10000, 28, 28, 1)
    assert mnist.train_x.dtype == np.float32 and mnist.train_y.dtype == np.int64
    assert mnist.train_x.min() == 0.0 and mnist.train_x.max() == 1.0
    assert mnist.train_y[:5].tolist() == [5, 0, 4, 1, 9] and mnist.test_y[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(mnist.train_y)[0] == 5923 and np.bincount(mnist.test_y).sum() == 10000
    assert mnist.image_shape == (28, 28, 1) and mnist.num_classes == 10
    # uint8 / 255 exactly: every pixel is k / 255 in float32
    assert np.array_equal(mnist.train_x[0], np.round(mnist.train_x[0] * 255).astype(np.float32) / np.float32(255))


def test_fashion_real_files(shared_data):
    fashion = load_dataset("fashion", root=shared_data)
    assert fashion.train_x.shape == (60000, 28, 28, 1) and fashion.test_x.shape == (10000, 28, 28, 1)
    assert fashion.train_x.dtype == np.float32 and 0.0 <= fashion.train_x.min() and fashion.train_x.max() <= 1.0
    assert fashion.train_y[:5].tolist() == [9, 0, 0, 3, 0]
    assert np.bincount(fashion.train_y).tolist() == [6000] * 10
    assert fashion.classes[0] == "T-shirt/top" and fashion.num_classes == 10


def test_loading_gz_files_writes_nothing(shared_data, tmp_path, mnist):
    shutil.copytree(shared_data / "MNIST" / "raw", tmp_path / "MNIST" / "raw")
    before, shared_before = snapshot(tmp_path), snapshot(shared_data)
    copy = load_dataset("mnist", root=tmp_path)
    assert snapshot(tmp_path) == before and snapshot(shared_data) == shared_before
    assert np.array_equal(copy.train_y, mnist.train_y)


# ---------------------------------------------------------------------------
# idx reader on tiny files


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_idx_files_gz_or_uncompressed_in_file_order(tmp_path, suffix):
    train_x, train_y = write_tiny_mnist(tmp_path, suffix)
    data = load_dataset("mnist", root=tmp_path)
    assert data.train_x.shape == (6, 4, 5, 1) and data.test_x.shape == (2, 4, 5, 1)
    assert np.array_equal(data.train_x[..., 0], train_x.astype(np.float32) / np.float32(255))
    assert data.train_y.tolist() == train_y.tolist() and data.test_y.tolist() == [2, 6]


def test_missing_folder_names_path_and_fix(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("fashion", root=root)
    assert isinstance(err.value, DatasetNotFoundError)
    assert str(root / "FashionMNIST" / "raw") in str(err.value)
    assert "data.root" in str(err.value) and "data.download=true" in str(err.value)
    assert not root.exists()


def test_one_missing_file_is_named(tmp_path):
    write_tiny_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", root=tmp_path)


def test_truncated_gz_is_a_clear_error(tmp_path):
    write_tiny_mnist(tmp_path)
    bad = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:20])
    with pytest.raises(CorruptDataError, match="train-images-idx3-ubyte.gz"):
        load_dataset("mnist", root=tmp_path)


def test_truncated_real_gz_is_a_clear_error(shared_data, tmp_path):
    shutil.copytree(shared_data / "MNIST" / "raw", tmp_path / "MNIST" / "raw")
    bad = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-100])
    with pytest.raises(CorruptDataError, match="truncated or corrupt"):
        load_dataset("mnist", root=tmp_path)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:-3], "header says 6 x 4 x 5 = 120 bytes"),  # data cut short
        (lambda b: struct.pack(">I", 0x0801) + b[4:], "magic number 0x00000801"),  # a labels file in its place
        (lambda b: b[:6], "shorter than the idx header"),
    ],
)
def test_corrupt_uncompressed_idx(tmp_path, damage, message):
    write_tiny_mnist(tmp_path, suffix="")
    bad = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    bad.write_bytes(damage(bad.read_bytes()))
    with pytest.raises(CorruptDataError, match=message):
        load_dataset("mnist", root=tmp_path)


def test_images_and_labels_must_match(tmp_path):
    write_tiny_mnist(tmp_path)
    write_idx(tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz", np.array([1, 2, 3]))
    with pytest.raises(CorruptDataError, match="6 images but .* 3 labels"):
        load_dataset("mnist", root=tmp_path)


# ---------------------------------------------------------------------------
# digits, names, root


def test_digits_embedded_split_and_determinism():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.train_x.shape == (1437, 28, 28, 1) and a.test_x.shape == (360, 28, 28, 1)
    assert a.train_x.dtype == np.float32 and a.train_y.dtype == np.int64
    assert a.train_y[:5].tolist() == [0, 1, 2, 3, 4] and a.num_classes == 10
    assert 0.0 <= a.train_x.min() and a.train_x.max() == 1.0
    assert np.array_equal(a.train_x * 255, np.round(a.train_x * 255))  # quantized like a real image
    assert np.array_equal(a.train_x, b.train_x) and np.array_equal(a.test_y, b.test_y)


def test_unknown_name_lists_valid_names():
    assert DATASET_NAMES == tuple(sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml")))  # one file each
    with pytest.raises(ValueError, match=", ".join(DATASET_NAMES)):
        load_dataset("svhn")


@pytest.mark.parametrize(
    "env, outcome",
    [
        ({}, pytest.skip.Exception),
        ({"CI": "true"}, pytest.fail.Exception),
        ({"RARESPUR_REQUIRE_DATA": "1"}, pytest.fail.Exception),
    ],
)
def test_missing_real_data_skips_but_fails_on_ci(monkeypatch, tmp_path, env, outcome):
    """The tests' own rule (conftest.require_data): a run without the datasets skips them, CI must not."""
    for name in ("CI", "RARESPUR_REQUIRE_DATA"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    missing = tmp_path / "MNIST" / "raw"
    with pytest.raises(outcome, match=re.escape(f"looked for {missing}; set RARESPUR_TEST_DATA")):
        require_data(missing)
    assert require_data(tmp_path) == tmp_path


def test_default_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("RARESPUR_DATA", str(tmp_path / "data"))
    assert default_data_root() == tmp_path / "data"
    monkeypatch.delenv("RARESPUR_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_data_root() == tmp_path / "cache" / "rarespur" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_data_root() == Path.home() / ".cache" / "rarespur" / "data"


def test_image_data_rejects_inconsistent_arrays():
    digits = load_dataset("digits")
    with pytest.raises(ValueError, match="one label each"):
        replace(digits, train_y=digits.train_y[:10])
    with pytest.raises(ValueError, match="labels must lie in 0..9"):
        replace(digits, test_y=digits.test_y + 1)


# ---------------------------------------------------------------------------
# image folders


def write_tree(root: Path, split: str, images: dict[str, list[np.ndarray]]) -> None:
    """<root>/<split>/<class>/NN.png from uint8 arrays (H x W -> mode L, H x W x 3 -> RGB)."""
    for cls, arrays in images.items():
        (root / split / cls).mkdir(parents=True)
        for i, array in enumerate(arrays):
            Image.fromarray(array).save(root / split / cls / f"{i:02d}.png")


def gray(value: int, shape=(6, 5)) -> np.ndarray:
    return np.full(shape, value, dtype=np.uint8)


def test_imagefolder_grayscale_tree(tmp_path):
    write_tree(tmp_path, "train", {"b": [gray(10), gray(20)], "a": [gray(30)]})
    write_tree(tmp_path, "test", {"a": [gray(40)], "b": [gray(50)]})
    data = load_dataset("imagefolder", path=tmp_path)
    assert data.classes == ("a", "b") and data.image_shape == (6, 5, 1)
    assert data.train_y.tolist() == [0, 1, 1] and data.test_y.tolist() == [0, 1]
    assert (np.round(data.train_x[:, 0, 0, 0] * 255)).tolist() == [30, 10, 20]


def test_imagefolder_color_tree_converts_gray_images(tmp_path):
    color = np.zeros((6, 5, 3), dtype=np.uint8)
    color[..., 0], color[..., 2] = 200, 7
    write_tree(tmp_path, "train", {"a": [gray(30), color]})
    write_tree(tmp_path, "test", {"a": [gray(40)]})
    data = load_dataset("imagefolder", path=tmp_path)
    assert data.image_shape == (6, 5, 3) and data.test_x.shape == (1, 6, 5, 3)
    assert np.round(data.train_x[:, 0, 0] * 255).tolist() == [[30, 30, 30], [200, 0, 7]]
    assert np.round(data.test_x[0, 0, 0] * 255).tolist() == [40, 40, 40]


def test_imagefolder_sizes_must_match(tmp_path):
    write_tree(tmp_path, "train", {"a": [gray(1), gray(2)]})
    write_tree(tmp_path, "test", {"a": [gray(3, shape=(7, 5))]})
    with pytest.raises(ValueError, match=r"one size: .*test.a.00\.png is 5x7"):
        load_dataset("imagefolder", path=tmp_path)


def test_imagefolder_classes_must_match(tmp_path):
    write_tree(tmp_path, "train", {"a": [gray(1)], "b": [gray(2)]})
    write_tree(tmp_path, "test", {"a": [gray(3)]})
    with pytest.raises(ValueError, match="same class folders"):
        load_dataset("imagefolder", path=tmp_path)


def test_imagefolder_missing_split_and_path(tmp_path):
    write_tree(tmp_path, "train", {"a": [gray(1)]})
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "test")):
        load_dataset("imagefolder", path=tmp_path)
    with pytest.raises(ValueError, match="dataset.path"):
        load_dataset("imagefolder")


def test_imagefolder_unreadable_image(tmp_path):
    write_tree(tmp_path, "train", {"a": [gray(1)]})
    write_tree(tmp_path, "test", {"a": [gray(2)]})
    (tmp_path / "test" / "a" / "00.png").write_bytes(b"not a png")
    with pytest.raises(CorruptDataError, match="00.png"):
        load_dataset("imagefolder", path=tmp_path)


def test_imagefolder_real_cifar_jpeg_subset(shared_data, tmp_path):
    classes = ("airplane", "bird", "cat")
    tree = extract_cifar_subset(shared_data, tmp_path, classes, {"train": 20, "test": 5})
    data = load_dataset("imagefolder", path=tree)
    assert data.classes == classes and data.image_shape == (32, 32, 3)
    assert data.train_x.shape == (60, 32, 32, 3) and data.test_x.shape == (15, 32, 32, 3)
    assert data.train_y.tolist() == [0] * 20 + [1] * 20 + [2] * 20
    first = sorted((tree / "train" / "airplane").iterdir())[0]
    assert np.array_equal(np.round(data.train_x[0] * 255), np.asarray(Image.open(first).convert("RGB")))


# ---------------------------------------------------------------------------
# CIFAR-10: a fake python archive
#
# The loader goes through torchvision's CIFAR10, which checks every file's MD5
# against the real archive's. A fake archive cannot match, so these tests
# replace only that comparison (file present = intact); the reading and the
# batch order are torchvision's own code, as with real data.

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_fake_cifar(root: Path, per_batch: int = 2) -> list[np.ndarray]:
    """data_batch_1..5, test_batch and batches.meta as pickles; returns each batch's N x 3072 rows."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        rows = np.random.RandomState(i).randint(0, 256, (per_batch, 3072)).astype(np.uint8)
        labels = [(i + j) % 10 for j in range(per_batch)]
        (folder / name).write_bytes(pickle.dumps({"data": rows, "labels": labels}))
        batches.append(rows)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR_CLASSES}))
    return batches


@pytest.fixture
def skip_md5(monkeypatch):
    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    monkeypatch.setenv("RARESPUR_ARRAY_CACHE", "0")  # data that skipped its checks must not be cached


def test_cifar10_batch_order_and_layout(tmp_path, skip_md5):
    batches = write_fake_cifar(tmp_path)
    data = load_dataset("cifar10", root=tmp_path)
    assert data.train_x.shape == (10, 32, 32, 3) and data.test_x.shape == (2, 32, 32, 3)
    assert data.train_y.tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5] and data.test_y.tolist() == [5, 6]
    assert data.classes == tuple(CIFAR_CLASSES)
    # rows are R, G, B planes of 32x32; image 2 is the first of data_batch_2
    expected = batches[1][0].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(data.train_x[2], expected.astype(np.float32) / np.float32(255))


def test_cifar10_failing_md5_is_a_clear_error(tmp_path):
    write_fake_cifar(tmp_path)
    with pytest.raises(CorruptDataError, match="MD5"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar10_missing_names_folder_and_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("cifar10", root=tmp_path)
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value) and "data.download=true" in str(err.value)


def test_decoded_arrays_are_cached_under_the_fingerprint_and_mapped_on_the_next_load(tmp_path, monkeypatch):
    from rarespur.data import array_cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("RARESPUR_ARRAY_CACHE", "1")  # the suite turns it off elsewhere (tests/conftest.py)
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(require_data(SHARED_DATA / "MNIST" / "raw"), raw)
    decoded = load_dataset("mnist", root=tmp_path)
    assert not isinstance(decoded.train_x, np.memmap)
    (folder,) = array_cache.cache_root().iterdir()
    assert folder.name.startswith("mnist-") and folder.name.endswith(f"-v{array_cache.VERSION}")
    mapped = load_dataset("mnist", root=tmp_path, limits=(1000, 10))
    assert isinstance(mapped.train_x, np.memmap) and mapped.train_x.shape == (1000, 28, 28, 1)
    assert np.array_equal(mapped.train_x, decoded.train_x[:1000]) and np.array_equal(mapped.test_y, decoded.test_y[:10])
    mapped.train_x[0] = 1.0  # copy-on-write: the job's own copy changes, not the cache
    assert np.array_equal(load_dataset("mnist", root=tmp_path).train_x[0], decoded.train_x[0])

    serving = (folder / "train_x.npy").stat().st_ino  # a job that decoded it too keeps the copy in place
    array_cache._write(folder, decoded)
    assert (folder / "train_x.npy").stat().st_ino == serving and len(list(folder.parent.iterdir())) == 1

    (folder / "train_x.npy").write_bytes(b"damaged")  # damaged: decoded again and replaced
    assert np.array_equal(load_dataset("mnist", root=tmp_path).train_x, decoded.train_x)
    assert isinstance(load_dataset("mnist", root=tmp_path).train_x, np.memmap)

    labels = raw / "t10k-labels-idx1-ubyte.gz"  # other files, another fingerprint: decoded, not served stale
    content = bytearray(gzip.decompress(labels.read_bytes()))
    content[8] = (content[8] + 1) % 10
    labels.write_bytes(gzip.compress(bytes(content)))
    changed = load_dataset("mnist", root=tmp_path)
    assert changed.test_y[0] == (decoded.test_y[0] + 1) % 10 and len(list(array_cache.cache_root().iterdir())) == 2

    monkeypatch.setenv("RARESPUR_ARRAY_CACHE", "0")
    shutil.rmtree(array_cache.cache_root())
    assert not isinstance(load_dataset("mnist", root=tmp_path).train_x, np.memmap)
    assert not array_cache.cache_root().exists()
