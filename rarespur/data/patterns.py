"""Spurious patterns: what gets pasted onto an image, and the one place that pastes it.

Images are float32 arrays N x H x W x C in [0, 1] (channels last, as in the
original code), so a pattern defined here means the same on MNIST and CIFAR.
The paper's seven patterns are ordinary config entries (``conf/pattern``; the
original code's names v1..v30 are alias files there);
users add new ones in YAML with the same three kinds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from rarespur.errors import ConfigError, MissingFileError


class Pattern:
    """A transformation P(x) of a batch of images; `seed` is the poisoning seed."""

    name: str

    def apply(self, images: np.ndarray, seed: int) -> np.ndarray:
        """Return patched copies of `images` (float32, N x H x W x C); the input is not modified."""
        raise NotImplementedError

    def check_shape(self, image_shape: tuple[int, int, int]) -> None:
        """Raise ValueError when the pattern cannot be placed on images of this (H, W, C) shape."""

    def support(self, image_shape: tuple[int, int, int]) -> np.ndarray:
        """H x W, True where the pattern may change a pixel: the truth a detector is graded against."""
        raise NotImplementedError


@dataclass(frozen=True)
class BoxPattern(Pattern):
    """A rectangle of constant value: S1, S2, S3 and the core bar are boxes."""

    name: str
    top: int
    left: int
    height: int
    width: int
    value: float = 1.0

    def check_shape(self, image_shape: tuple[int, int, int]) -> None:
        h, w, _ = image_shape
        if self.top < 0 or self.left < 0 or self.height < 1 or self.width < 1:
            raise ConfigError(f"pattern {self.name!r}: box needs top, left >= 0 and height, width >= 1")
        if self.top + self.height > h or self.left + self.width > w:
            raise ConfigError(
                f"pattern {self.name!r}: box rows {self.top}..{self.top + self.height - 1}, columns "
                f"{self.left}..{self.left + self.width - 1} does not fit images of {h}x{w}; "
                "change pattern.top/left/height/width"
            )

    def support(self, image_shape: tuple[int, int, int]) -> np.ndarray:
        mask = np.zeros(image_shape[:2], dtype=bool)
        mask[self.top : self.top + self.height, self.left : self.left + self.width] = True
        return mask

    def apply(self, images: np.ndarray, seed: int) -> np.ndarray:
        out = np.array(images, dtype=np.float32, copy=True)
        out[:, self.top : self.top + self.height, self.left : self.left + self.width, :] = self.value
        return out


@dataclass(frozen=True)
class NoisePattern(Pattern):
    """x + amplitude * u, clipped, with ONE noise image u ~ U[0,1)^(H,W,C) fixed by the seed.

    The addition and clip run in float64 and the result is cast to float32, exactly
    as the original code does; adding in float32 differs by an ulp in some pixels.
    """

    name: str
    amplitude: float

    def noise(self, image_shape: tuple[int, int, int], seed: int) -> np.ndarray:
        """The fixed noise image u: a fresh RandomState(seed).rand(H, W, C)."""
        return np.random.RandomState(seed).rand(*image_shape)

    def support(self, image_shape: tuple[int, int, int]) -> np.ndarray:
        return np.ones(image_shape[:2], dtype=bool)

    def apply(self, images: np.ndarray, seed: int) -> np.ndarray:
        u = self.noise(tuple(images.shape[1:]), seed)
        patched = np.clip(images + self.amplitude * u[np.newaxis], 0, 1)
        return patched.astype(np.float32)


@dataclass(frozen=True)
class MaskPattern(Pattern):
    """A user image file: pasted where the mask is non-zero (mode 'paste') or added and clipped ('add').

    The file is read as grayscale (or RGB for 3-channel data), scaled to [0,1], and
    must have the images' height and width.
    """

    name: str
    file: str
    mode: str = "paste"

    def _mask(self, image_shape: tuple[int, int, int]) -> np.ndarray:
        from PIL import Image

        path = Path(self.file).expanduser()
        if not path.is_file():
            raise MissingFileError(f"pattern {self.name!r}: mask file {path} not found; set pattern.file")
        h, w, c = image_shape
        with Image.open(path) as img:
            arr = np.asarray(img.convert("L" if c == 1 else "RGB"), dtype=np.float32) / 255.0
        if arr.shape[:2] != (h, w):
            raise ConfigError(
                f"pattern {self.name!r}: mask {path} is {arr.shape[1]}x{arr.shape[0]}, images are {w}x{h}"
            )
        return arr.reshape(h, w, c)

    def check_shape(self, image_shape: tuple[int, int, int]) -> None:
        if self.mode not in ("paste", "add"):
            raise ConfigError(f"pattern {self.name!r}: mode must be 'paste' or 'add', got {self.mode!r}")
        self._mask(image_shape)

    def support(self, image_shape: tuple[int, int, int]) -> np.ndarray:
        return (self._mask(image_shape) > 0).any(axis=2)

    def apply(self, images: np.ndarray, seed: int) -> np.ndarray:
        mask = self._mask(tuple(images.shape[1:]))
        if self.mode == "add":
            return np.clip(images + mask[np.newaxis], 0, 1).astype(np.float32)
        return np.where(mask[np.newaxis] > 0, mask[np.newaxis], images).astype(np.float32)


PATTERN_KINDS: dict[str, Callable[..., Pattern]] = {
    "box": BoxPattern,
    "noise": NoisePattern,
    "mask": MaskPattern,
}


def build_pattern(cfg: Mapping[str, Any]) -> Pattern:
    """Make a Pattern from its config node (``name``, ``kind`` and the kind's fields)."""
    fields = dict(cfg)
    kind = fields.pop("kind", None)
    if kind not in PATTERN_KINDS:
        raise ConfigError(f"pattern kind {kind!r} unknown; valid kinds: {sorted(PATTERN_KINDS)}")
    try:
        return PATTERN_KINDS[kind](**fields)
    except TypeError as err:
        raise ConfigError(f"pattern {fields.get('name')!r} of kind {kind!r}: {err}") from None
