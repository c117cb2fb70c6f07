"""Clean datasets as in-memory NumPy arrays (docs/science.md#data).

Every loader returns an :class:`ImageData`: float32 images N x H x W x C in
[0, 1] (uint8 / 255, no mean/std normalization, so patterns are pasted in
pixel space) and int64 labels in the original file order, because the
choice of poisoned images depends on that order.

Data safety: loading never writes into the data folder (the shared test data
is read-only, and a user's archive should not change behind their back).
Only ``download=True`` lets torchvision add files, and only when some are
missing. A missing dataset raises :class:`DatasetNotFoundError` naming the
path looked in and the fix; a truncated or corrupt file raises
:class:`CorruptDataError` naming the file.

torchvision and scikit-learn are imported inside the loaders that need them:
``torchvision.datasets`` alone takes about 2 s to import, which the default
offline run and the idx reader do not need.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from rarespur.data import array_cache
from rarespur.data.colored_mnist import make_colored_mnist
from rarespur.data.corrupted_cifar10 import make_corrupted_cifar10
from rarespur.data.image_data import ImageData
from rarespur.errors import ConfigError, DataError

__all__ = [
    "DATASET_NAMES",
    "CorruptDataError",
    "DatasetNotFoundError",
    "ImageData",
    "default_data_root",
    "load_dataset",
]


class DatasetNotFoundError(DataError, FileNotFoundError):
    """The dataset's files are not where we looked; the message says where and how to fix it."""


class CorruptDataError(DataError, ValueError):
    """A data file exists but cannot be what it claims to be (truncated, wrong header, bad checksum)."""


Loader = Callable[[Path, bool, Path | None], ImageData]  # (root, download, path)


def default_data_root() -> Path:
    """Where torchvision-layout files are looked for when no data.root is given.

    ``RARESPUR_DATA`` if set, else ``$XDG_CACHE_HOME/rarespur/data`` (default
    ``~/.cache/rarespur/data``): a per-user cache, so downloads are shared by
    every run and never land in the working directory.
    """
    env = os.environ.get("RARESPUR_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "rarespur" / "data"


def load_dataset(
    name: str,
    root: str | Path | None = None,
    download: bool = False,
    path: str | Path | None = None,
    options: dict[str, Any] | None = None,
    limits: tuple[int | None, int | None] = (None, None),
) -> ImageData:
    """Load the clean dataset `name`.

    `root` holds torchvision-layout files (default :func:`default_data_root`);
    `download` lets torchvision fetch missing files; `path` is the folder of
    the ``imagefolder`` dataset; `options` are a derived dataset's settings
    (``cmnist``: conflict_ratio, color_std, seed); `limits` keep the first
    (train, test) images. A derived dataset is made from the first images of
    its base, so its make-up (Colored MNIST's share of conflicting colors,
    its unbiased test set) holds on the subset too; ``ccifar10`` keeps the
    first images of each class (an image folder lists them class by class)
    and is made from ``path``'s image folder when `path` is set, else from
    the CIFAR-10 archive under `root`.
    """
    if name in _DERIVED:
        base, make = _derived_base(name, path), _DERIVED[name][1]
        if name in _CUT_BY_MAKER:  # the maker cuts the limits (ccifar10: per class, before corrupting)
            return make(load_dataset(base, root, download, path), limits=limits, **(options or {}))
        return make(load_dataset(base, root, download, path, limits=limits), **(options or {}))
    if name not in _LOADERS:
        raise ConfigError(f"dataset={name} unknown; valid names: {', '.join(DATASET_NAMES)}")
    root = Path(root).expanduser() if root is not None else default_data_root()
    folder = Path(path).expanduser() if path is not None else None
    return _cut(
        array_cache.cached(name, _cache_key(name, root, folder), lambda: _LOADERS[name](root, download, folder)),
        *limits,
    )


def _cache_key(name: str, root: Path, path: Path | None) -> str:
    """The key of the dataset's cached arrays: its files' paths, sizes and modification times (as the checksum
    cache of :mod:`rarespur.data.fingerprint` keys a file's checksum), so a changed file is decoded again; ""
    when its files are missing or cannot be read (nothing cached: the loader says what is wrong)."""
    if not array_cache.enabled():
        return ""
    try:
        files = data_files(name, root, path)
        digest = hashlib.sha256(name.encode())
        for file in files:
            stat = file.stat()
            digest.update(f"\n{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    except (OSError, DataError):
        return ""
    return digest.hexdigest()[:16] if files else ""


def _cut(data: ImageData, train_n: int | None, test_n: int | None) -> ImageData:
    if train_n is None and test_n is None:
        return data

    def head(array: np.ndarray | None, n: int | None) -> np.ndarray | None:
        return array[:n] if array is not None else None

    return replace(
        data,
        train_x=data.train_x[:train_n],
        train_y=data.train_y[:train_n],
        test_x=data.test_x[:test_n],
        test_y=data.test_y[:test_n],
        train_bias=head(data.train_bias, train_n),
        test_bias=head(data.test_bias, test_n),
    )


def dataset_options(dataset_cfg: dict[str, Any]) -> dict[str, Any]:
    """The settings of the data a dataset config makes (cmnist's conflict_ratio, ...): its keys but the name,
    the image folder's path and the training recipe."""
    return {k: v for k, v in dataset_cfg.items() if k not in ("name", "path", "recipe")}


def data_files(name: str, root: str | Path | None = None, path: str | Path | None = None) -> list[Path]:
    """The files the loader of `name` reads (those present), so a run can tell which data it trained on
    (:mod:`rarespur.data.fingerprint`)."""
    if name in _DERIVED:
        return data_files(_derived_base(name, path), root, path)
    root = Path(root).expanduser() if root is not None else default_data_root()
    if name == "digits":
        import sklearn.datasets

        return [p for p in sorted((Path(sklearn.datasets.__file__).parent / "data").glob("digits*")) if p.is_file()]
    if name in ("mnist", "fashion"):
        raw = root / ("MNIST" if name == "mnist" else "FashionMNIST") / "raw"
        found = (_idx_file(raw, base) for pair in _IDX_FILES.values() for base in pair)
        return [p for p in found if p is not None]
    if name == "cifar10":
        from torchvision.datasets import CIFAR10

        folder = root / CIFAR10.base_folder
        names = [n for n, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
        return [folder / n for n in names if (folder / n).is_file()]
    if name == "imagefolder" and path is not None:
        folder = Path(path).expanduser()
        return sorted(Path(f) for split in ("train", "test") for f, _ in _scan_folder(folder / split)[0])
    return []


def _to_unit(images: np.ndarray) -> np.ndarray:
    """uint8 -> float32 / 255, the same bits as torchvision's ToTensor."""
    return images.astype(np.float32) / np.float32(255)


def _not_found(what: str, looked_in: Path, fix: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(f"{what} not found in {looked_in}. Fix: {fix}")


# ---------------------------------------------------------------------------
# digits: embedded, no network


def _load_digits(root: Path, download: bool, path: Path | None) -> ImageData:
    """scikit-learn's bundled 8x8 handwritten digits, upsampled to 28x28 x 1.

    The default dataset, so that ``python run.py`` works offline, with no data
    folder, in seconds (`root`, `download` and `path` are not used). The 0..16
    values are scaled to [0, 1], upsampled bilinearly to MNIST's size so every
    pattern (e.g. the 5x5 block, the core bar over rows 3..24) applies
    unchanged, and quantized to uint8 like a real image file. The split is
    fixed by file order (first 1437 = train, last 360 = test), like the idx
    files, so which images get poisoned depends only on the poisoning seed.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.from_numpy(digits.images / 16.0)[:, None]  # N x 1 x 8 x 8, float64
    big = F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False)
    images = _to_unit(np.round(big.numpy() * 255).astype(np.uint8).transpose(0, 2, 3, 1))
    labels = digits.target.astype(np.int64)
    n_train = 1437
    return ImageData(images[:n_train], labels[:n_train], images[n_train:], labels[n_train:], _DIGIT_CLASSES)


_DIGIT_CLASSES = tuple(str(d) for d in range(10))


# ---------------------------------------------------------------------------
# MNIST and Fashion-MNIST: idx files in <root>/<Class>/raw, .gz or not

_FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_IDX_FILES = {  # split -> (images, labels) base names, as torchvision names them
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _load_mnist(root: Path, download: bool, path: Path | None) -> ImageData:
    """MNIST from ``<root>/MNIST/raw`` (`path` is not used)."""
    return _load_idx_dataset(root, "MNIST", _DIGIT_CLASSES, download)


def _load_fashion(root: Path, download: bool, path: Path | None) -> ImageData:
    """Fashion-MNIST from ``<root>/FashionMNIST/raw`` (`path` is not used)."""
    return _load_idx_dataset(root, "FashionMNIST", _FASHION_CLASSES, download)


def _load_idx_dataset(root: Path, folder: str, classes: tuple[str, ...], download: bool) -> ImageData:
    """Read the four idx files of an MNIST-like dataset, downloading them first if allowed and missing."""
    raw = root / folder / "raw"
    names = [name for pair in _IDX_FILES.values() for name in pair]
    missing = [name for name in names if _idx_file(raw, name) is None]
    if missing and download:
        _download_idx(root, folder)
        missing = [name for name in names if _idx_file(raw, name) is None]
    if missing:
        raise _not_found(
            f"{folder} files {', '.join(n + '[.gz]' for n in missing)}",
            raw,
            f"set data.root=/path/with/{folder}/raw or RARESPUR_DATA, or pass data.download=true when online",
        )
    splits = [_read_idx_split(raw, *_IDX_FILES[split], len(classes)) for split in ("train", "test")]
    (train_x, train_y), (test_x, test_y) = splits
    return ImageData(train_x, train_y, test_x, test_y, classes)


def _idx_file(raw: Path, name: str) -> Path | None:
    """The uncompressed file if present (what torchvision's download leaves), else the .gz, else None."""
    for candidate in (raw / name, raw / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _download_idx(root: Path, folder: str) -> None:
    """Let torchvision fetch (and decompress) the files into ``<root>/<folder>/raw``."""
    from torchvision import datasets

    try:
        getattr(datasets, folder)(str(root), train=True, download=True)
    except (OSError, RuntimeError) as err:
        raise DatasetNotFoundError(f"downloading {folder} into {root / folder / 'raw'} failed: {err}") from err


def _read_idx_split(raw: Path, images_name: str, labels_name: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images_path, labels_path = _idx_file(raw, images_name), _idx_file(raw, labels_name)
    assert images_path is not None and labels_path is not None  # checked by the caller
    images, labels = _read_idx(images_path, ndim=3), _read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
        raise CorruptDataError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if labels.max(initial=0) >= num_classes:
        raise CorruptDataError(f"{labels_path} holds label {labels.max()}, expected 0..{num_classes - 1}")
    return _to_unit(images[..., None]), labels.astype(np.int64)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte idx array: magic 0x0000 08 <ndim>, big-endian int32 dims, then the bytes."""
    data = _read_bytes(path)
    header = 4 + 4 * ndim
    expected_magic = 0x0800 + ndim
    if len(data) < header:
        raise CorruptDataError(f"{path} is truncated: {len(data)} bytes, shorter than the idx header")
    (magic,) = struct.unpack(">I", data[:4])
    if magic != expected_magic:
        raise CorruptDataError(f"{path} has idx magic number {magic:#010x}, expected {expected_magic:#010x}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != math.prod(dims):
        raise CorruptDataError(
            f"{path} is truncated or corrupt: header says {' x '.join(map(str, dims))} = {math.prod(dims)} bytes "
            f"of data, the file holds {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix != ".gz":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise CorruptDataError(f"{path} is not a valid gzip file (truncated or corrupt: {err})") from err


# ---------------------------------------------------------------------------
# CIFAR-10: the python archive in <root>/cifar-10-batches-py


def _load_cifar10(root: Path, download: bool, path: Path | None) -> ImageData:
    """CIFAR-10 via torchvision (`path` is not used).

    torchvision reads data_batch_1..5 then test_batch in order (the order the
    poisoning depends on) and checks every file's MD5, so a corrupt or
    partial archive is caught here rather than as odd results later.
    """
    from torchvision.datasets import CIFAR10

    folder = root / CIFAR10.base_folder
    if not download:
        names = [name for name, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            raise _not_found(
                f"CIFAR-10 files {', '.join(missing)}",
                folder,
                "extract cifar-10-python.tar.gz under data.root (or RARESPUR_DATA) so that "
                f"{CIFAR10.base_folder}/ is inside it, or pass data.download=true when online",
            )
    try:
        train, test = (CIFAR10(str(root), train=is_train, download=download) for is_train in (True, False))
    except RuntimeError as err:
        raise CorruptDataError(
            f"CIFAR-10 files in {folder} failed torchvision's MD5 check ({err}). Fix: re-extract "
            "cifar-10-python.tar.gz there, or delete the folder and pass data.download=true when online"
        ) from err
    except OSError as err:
        raise DatasetNotFoundError(f"downloading CIFAR-10 into {folder} failed: {err}") from err
    return ImageData(
        _to_unit(train.data),
        np.asarray(train.targets, dtype=np.int64),
        _to_unit(test.data),
        np.asarray(test.targets, dtype=np.int64),
        tuple(train.classes),
    )


# ---------------------------------------------------------------------------
# image folders: the user's own data


def _load_imagefolder(root: Path, download: bool, path: Path | None) -> ImageData:
    """``<path>/{train,test}/<class>/*.png|jpg`` via torchvision's ImageFolder (`root`, `download` unused).

    Classes are sorted by name and images come in ImageFolder's order, so the
    training order is reproducible from the tree alone. All images must share
    one size; the tree is grayscale (C = 1) if every image has PIL mode "L",
    otherwise every image is converted to RGB (C = 3).
    """
    if path is None:
        raise ConfigError("dataset=imagefolder needs dataset.path=/dir holding train/<class>/* and test/<class>/*")
    train_samples, train_classes = _scan_folder(path / "train")
    test_samples, test_classes = _scan_folder(path / "test")
    if train_classes != test_classes:
        raise CorruptDataError(
            f"{path / 'train'} and {path / 'test'} must hold the same class folders: "
            f"train has {train_classes}, test has {test_classes}"
        )
    try:
        with Image.open(train_samples[0][0]) as first:
            reference = (train_samples[0][0], first.size)
    except OSError as err:
        raise CorruptDataError(f"cannot read image {train_samples[0][0]}: {err}") from err
    train_rgb, train_gray = _decode_images([p for p, _ in train_samples], reference)
    test_rgb, test_gray = _decode_images([p for p, _ in test_samples], reference)
    grayscale = bool(train_gray.all() and test_gray.all())
    return ImageData(
        _to_unit(_finish_channels(train_rgb, train_gray, grayscale)),
        np.array([label for _, label in train_samples], dtype=np.int64),
        _to_unit(_finish_channels(test_rgb, test_gray, grayscale)),
        np.array([label for _, label in test_samples], dtype=np.int64),
        tuple(train_classes),
    )


def _scan_folder(folder: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """ImageFolder's (file, label) list and class names, with its errors made to name the folder."""
    from torchvision.datasets import ImageFolder

    if not folder.is_dir():
        raise _not_found(
            "image folder", folder, "set dataset.path=/dir holding train/<class>/*.png|jpg and test/<class>/*.png|jpg"
        )
    try:
        tree = ImageFolder(str(folder))
    except FileNotFoundError as err:
        raise DatasetNotFoundError(f"{folder}: {err}") from err
    return tree.samples, tree.classes


def _decode_images(paths: Sequence[str], reference: tuple[str, tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Decode every image once into a preallocated N x H x W x 3 uint8 array.

    Grayscale ("L") images fill channel 0 only and are flagged, so one pass
    suffices: whether the tree is grayscale is known only after every image
    has been opened (see :func:`_finish_channels`).
    """
    ref_path, (width, height) = reference
    out = np.empty((len(paths), height, width, 3), dtype=np.uint8)
    gray = np.zeros(len(paths), dtype=bool)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as img:
                if img.size != (width, height):
                    raise CorruptDataError(
                        f"all images must share one size: {p} is {img.size[0]}x{img.size[1]}, "
                        f"{ref_path} is {width}x{height}"
                    )
                gray[i] = img.mode == "L"
                if gray[i]:
                    out[i, :, :, 0] = np.asarray(img)
                else:
                    out[i] = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
        except OSError as err:  # PIL's UnidentifiedImageError and truncated-file errors are OSErrors
            raise CorruptDataError(f"cannot read image {p}: {err}") from err
    return out, gray


def _finish_channels(rgb: np.ndarray, gray: np.ndarray, grayscale: bool) -> np.ndarray:
    """One channel for an all-grayscale tree; else copy gray channel 0 into 1 and 2 (PIL's L -> RGB)."""
    if grayscale:
        return rgb[..., :1]
    rgb[gray, :, :, 1:] = rgb[gray, :, :, :1]
    return rgb


_LOADERS: dict[str, Loader] = {
    "cifar10": _load_cifar10,
    "digits": _load_digits,
    "fashion": _load_fashion,
    "imagefolder": _load_imagefolder,
    "mnist": _load_mnist,
}


# Datasets made from another one: name -> (the base dataset, the maker of (base ImageData, **options)).
_DERIVED: dict[str, tuple[str, Callable[..., ImageData]]] = {
    "cmnist": ("mnist", make_colored_mnist),
    "ccifar10": ("cifar10", make_corrupted_cifar10),
}
_FROM_FOLDER = {"ccifar10"}  # made from dataset.path's image folder when it is set, else from the base's files
_CUT_BY_MAKER = {"ccifar10"}  # the maker gets the limits (and the whole base) instead of the base being cut


def _derived_base(name: str, path: str | Path | None) -> str:
    return "imagefolder" if name in _FROM_FOLDER and path is not None else _DERIVED[name][0]


DATASET_NAMES: tuple[str, ...] = tuple(sorted([*_LOADERS, *_DERIVED]))
