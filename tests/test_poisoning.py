"""Poisoning is compatible with the original code bit for bit (docs/science.md#poisoning, docs/science.md#patterns)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from omegaconf import OmegaConf

from rarespur.config.names import parse_dataset_name
from rarespur.data.loaders import load_dataset
from rarespur.data.patterns import BoxPattern, NoisePattern, build_pattern
from rarespur.data.poisoning import choose_poison_indices, poison_images

from conftest import compose_config

PAPER_TO_ORIGINAL = {"s1": "v1", "s2": "v3", "s3": "v8", "r1": "v18", "r2": "v19", "r3": "v20", "core": "v30"}


@pytest.fixture(scope="module")
def mnist(shared_data):
    return load_dataset("mnist", root=shared_data)


@pytest.fixture(scope="module")
def fashion(shared_data):
    return load_dataset("fashion", root=shared_data)


def test_mnistv8_3_0_0_indices(mnist):
    idx = choose_poison_indices(mnist.train_y, 3, [0], seed=0)
    assert idx.dtype == np.int64
    assert idx.tolist() == [13830, 52831, 48180]
    assert (mnist.train_y[idx] == 0).all()


def test_fashionv20_10_1_2_indices_and_pixels(fashion):
    idx = choose_poison_indices(fashion.train_y, 10, [1], seed=2)
    assert idx.tolist() == [16073, 13324, 26912, 25265, 5386, 21583, 30643, 36231, 40186, 43566]
    pattern = build_pattern(OmegaConf.to_container(compose_config("pattern=v20").pattern))
    poisoned = poison_images(fashion.train_x, idx, pattern, seed=2)
    assert poisoned.dtype == np.float32
    # float64 add + clip, cast back: the digest of the original code's output
    assert hashlib.sha256(poisoned[idx].tobytes()).hexdigest() == (
        "644db8275ac5c015c09e57cb3ca8840442f556d8f4cd54edf2a97ccde19417e4"
    )
    untouched = np.setdiff1d(np.arange(len(poisoned)), idx)
    assert np.array_equal(poisoned[untouched], fashion.train_x[untouched])


def test_two_class_variant_draws_c1_then_c2(mnist):
    idx = choose_poison_indices(mnist.train_y, 5, [0, 1], seed=2)
    assert idx.tolist() == [10664, 12723, 42720, 49716, 16997, 25703, 39699, 2932, 42179, 2188]


def test_r3_noise_image_for_a_seed():
    u = NoisePattern("r3", 1.0).noise((28, 28, 1), seed=2)
    assert u[0, :3, 0].tolist() == [0.43599490214200376, 0.025926231827891333, 0.5496624778787091]
    assert u.sum() == pytest.approx(387.9696577187486, abs=1e-9)
    patched = NoisePattern("r3", 1.0).apply(np.zeros((2, 28, 28, 1), np.float32), seed=2)
    assert np.array_equal(patched[0], patched[1])  # one fixed image for every poisoned example


def test_float64_path_differs_from_float32():
    x = np.random.RandomState(5).rand(50, 28, 28, 1).astype(np.float32)
    u = np.random.RandomState(2).rand(28, 28, 1)
    ours = NoisePattern("r1", 0.25).apply(x, seed=2)
    assert np.array_equal(ours, np.clip(x + 0.25 * u, 0, 1).astype(np.float32))
    assert not np.array_equal(ours, np.clip(x + 0.25 * u.astype(np.float32), 0, 1))


@pytest.mark.parametrize("paper", sorted(PAPER_TO_ORIGINAL))
def test_paper_and_original_names_give_the_same_pattern(paper):
    a = compose_config(f"pattern={paper}").pattern
    b = compose_config(f"pattern={PAPER_TO_ORIGINAL[paper]}").pattern
    assert a == b and a.name == paper


def test_box_patterns_match_original_slices():
    x = np.zeros((1, 28, 28, 1), np.float32)
    expect = {
        "s1": (slice(0, 1), slice(0, 1)),
        "s2": (slice(0, 3), slice(0, 3)),
        "s3": (slice(0, 5), slice(0, 5)),
        "core": (slice(3, 25), slice(13, 16)),
    }
    for name, (rows, cols) in expect.items():
        pattern = build_pattern(OmegaConf.to_container(compose_config(f"pattern={name}").pattern))
        want = x.copy()
        want[:, rows, cols, :] = 1
        assert np.array_equal(pattern.apply(x, 0), want), name


def test_user_defined_patterns(tmp_path):
    from PIL import Image

    box = build_pattern({"name": "b", "kind": "box", "top": 1, "left": 2, "height": 2, "width": 3, "value": 0.5})
    out = box.apply(np.zeros((1, 8, 8, 3), np.float32), 0)
    assert out.sum() == pytest.approx(0.5 * 2 * 3 * 3) and out[0, 1, 2, 0] == 0.5
    mask = np.zeros((8, 8), np.uint8)
    mask[7, 7] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    pasted = build_pattern({"name": "m", "kind": "mask", "file": str(tmp_path / "m.png")}).apply(
        np.full((2, 8, 8, 1), 0.2, np.float32), 0
    )
    assert pasted[:, 7, 7, 0].tolist() == [1.0, 1.0] and pasted[:, 0, 0, 0].tolist() == pytest.approx([0.2, 0.2])


def test_bad_patterns_fail_clearly():
    with pytest.raises(ValueError, match="valid kinds"):
        build_pattern({"name": "x", "kind": "star"})
    with pytest.raises(ValueError, match="does not fit"):
        BoxPattern("big", 0, 0, 30, 30).check_shape((28, 28, 1))


def test_count_larger_than_class_fails():
    y = np.array([0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="larger than class 0, which has 2"):
        choose_poison_indices(y, 3, [0], seed=0)
    assert choose_poison_indices(y, 0, [0], seed=0).size == 0


def test_original_dataset_names_expand():
    assert parse_dataset_name("mnistv8-3-0-0") == {
        "dataset": "mnist",
        "pattern": "v8",
        "count": 3,
        "target": 0,
        "seed": 0,
    }
    assert parse_dataset_name("twoclassmnistv20-5-0-1-2")["target"] == [0, 1]
    assert parse_dataset_name("mnist-3-0-0")["pattern"] == "v1"
    assert parse_dataset_name("mnist") is None and parse_dataset_name("mnistv8-3-0-1-2") is None
    named = compose_config("dataset=mnistv8-3-0-0")
    spelled = compose_config("dataset=mnist", "pattern=s3", "poison.count=3", "poison.target=0", "poison.seed=0")
    assert named == spelled
    two = compose_config("dataset=twoclassmnistv20-5-0-1-2")
    assert two.pattern.name == "r3" and list(two.poison.target) == [0, 1] and two.poison.seed == 2
