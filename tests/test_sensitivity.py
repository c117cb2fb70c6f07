"""Model sensitivity (docs/science.md#sensitivity-and-weights): pixel removal as the original notebook does it, weight
maps, the experiment."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.integrate import trapezoid

from rarespur.methods.sensitivity import first_layer_weight_map, removal_images, remove_pixels
from rarespur.models import build_model

from conftest import job as shared_job

job = partial(shared_job, base=("device=cpu", "progress=false"))


def original_occlusion(images: np.ndarray, fraction: float, rng: np.random.RandomState) -> np.ndarray:
    """The notebook's per-image loop, restated: the reference remove_pixels must match bit for bit."""
    n, h, w, c = images.shape
    flat = images.reshape(n, h * w, c).copy()
    inds = np.where(flat != 0)
    blocked = rng.choice(np.arange(2), size=len(inds[1]), p=[1 - fraction, fraction], replace=True)
    out = []
    for i in range(n):
        pixel_no = inds[1][inds[0] == i][blocked[inds[0] == i] == 1]
        flat[i][pixel_no] = 0
        out.append(flat[i].reshape(1, h, w, c))
    return np.concatenate(out)


@pytest.mark.parametrize("channels", [1, 3])
def test_remove_pixels_matches_the_original_and_removes_the_right_share(channels):
    rng = np.random.default_rng(1)
    images = (rng.random((40, 8, 8, channels)) * (rng.random((40, 8, 8, 1)) < 0.6)).astype(np.float32)
    for fraction in (0.02, 0.3, 0.74):
        ours = remove_pixels(images, fraction, np.random.RandomState(0))
        assert np.array_equal(ours, original_occlusion(images, fraction, np.random.RandomState(0)))
    assert np.array_equal(remove_pixels(images, 0, np.random.RandomState(0)), images)
    assert not remove_pixels(images, 1, np.random.RandomState(0)).any()
    gray = images[..., :1]
    half = remove_pixels(gray, 0.5, np.random.RandomState(0))
    kept = (half != 0).sum() / (gray != 0).sum()
    assert 0.45 < kept < 0.55  # 1,536 Bernoulli(0.5) draws
    assert not half[gray == 0].any()  # blank pixels stay blank


def test_removal_images_are_the_notebooks_draw_without_replacement():
    """The original notebook draws RandomState(0).choice(arange(60000), 500, replace=False): the same first
    indices (pinned), no image twice even when all are drawn. A with-replacement choice(60000, 500) is another
    stream of images altogether."""
    chosen = removal_images(60000, 500, 0)
    assert chosen[:8].tolist() == [3048, 19563, 58303, 8870, 40228, 31488, 21860, 56864]
    assert len(set(chosen.tolist())) == 500
    assert np.array_equal(chosen, np.random.RandomState(0).choice(np.arange(60000), size=500, replace=False))
    assert np.random.RandomState(0).choice(60000, 500)[:8].tolist() == [
        2732,
        43567,
        42613,
        52416,
        45891,
        21243,
        30403,
        32103,
    ]
    assert sorted(removal_images(10, 10, 0).tolist()) == list(range(10))


def test_weight_map_reads_the_first_layer_per_pixel():
    torch.manual_seed(0)
    model = build_model("mlp", (1, 28, 28), 10)
    with torch.no_grad():
        model.hidden.weight.zero_()
        model.hidden.weight[7, 3 * 28 + 5] = 2.0  # pixel (3, 5)
    weight_map = first_layer_weight_map(model)
    assert weight_map.shape == (28, 28) and weight_map[3, 5] == 2.0 and weight_map.sum() == 2.0
    with pytest.raises(ValueError, match="weight maps need an MLP"):
        first_layer_weight_map(build_model("cnn002", (1, 28, 28), 10))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("sensitivity")


def test_sensitivity_of_a_trained_model(store, monkeypatch):
    record = job(
        store, "experiment=sensitivity", "model=mlp", "epochs=15", "sensitivity.images=300", "sensitivity.levels=11"
    )
    parent = json.loads((store / record["parent_run_id"] / "record.json").read_text())
    assert parent["experiment.name"] == "train" and record["test_acc"] == parent["test_acc"] > 0.85
    curve = pd.read_csv(store / record["run_id"] / "tables" / "pixel_removal.csv")
    assert list(curve["p"]) == pytest.approx([k / 10 for k in range(11)])
    probs = curve["mean_true_prob"].to_numpy()
    assert probs[0] > 0.8 and probs[-1] < 0.3 and probs[0] > probs[5] > probs[-1]
    assert curve["acc"].iloc[0] > 0.85
    assert record["pixel_removal_auc"] == pytest.approx(trapezoid(probs, curve["p"]))
    weight_map = np.load(store / record["run_id"] / record["weight_map_file"])
    assert weight_map.shape == (28, 28)

    # A second measurement of the same model does not train again.
    monkeypatch.setattr("rarespur.experiments.steps.train_model", lambda *a, **k: pytest.fail("retrained"))
    again = job(
        store, "experiment=sensitivity", "model=mlp", "epochs=15", "sensitivity.images=300", "sensitivity.levels=3"
    )
    assert again["parent_run_id"] == record["parent_run_id"] and again["run_id"] != record["run_id"]


def test_poisoned_corner_lights_up_in_the_weight_map(store, shared_data):
    """S3 (a white top-left square) planted in 100 of 5,000 MNIST images, Adam as in the paper's figure:
    the first layer's weights on the corner grow far above the clean model's (measured 0.20 vs 0.045)."""
    maps = {}
    for count in (0, 100):
        record = job(
            store,
            "experiment=sensitivity",
            "dataset=mnist",
            f"data.root={shared_data}",
            "data.train_limit=5000",
            "data.test_limit=1000",
            "model=mlp",
            "optim=adam",
            "pattern=s3",
            f"poison.count={count}",
            "epochs=5",
            "sensitivity.images=50",
            "sensitivity.levels=2",
        )
        maps[count] = np.load(store / record["run_id"] / "weight_map.npy")
    corner = (slice(0, 5), slice(0, 5))
    assert maps[100][corner].mean() > 3 * maps[0][corner].mean()
    rest = np.ones((28, 28), bool)
    rest[corner] = False
    assert abs(maps[100][rest].mean() - maps[0][rest].mean()) < 0.02  # the rest of the map barely moves


def test_bad_sensitivity_settings(store):
    with pytest.raises(ValueError, match="sensitivity.images=5000 but the training set has 1437"):
        job(store, "experiment=sensitivity", "model=mlp", "epochs=15", "sensitivity.images=5000")
    with pytest.raises(ValueError, match="sensitivity.levels must be >= 2"):
        job(store, "experiment=sensitivity", "model=mlp", "epochs=15", "sensitivity.levels=1")


def test_cnn_has_no_weight_map(store):
    record = job(
        store, "experiment=sensitivity", "model=cnn002", "epochs=1", "sensitivity.images=20", "sensitivity.levels=2"
    )
    assert "weight_map_file" not in record
    assert not (store / record["run_id"] / "weight_map.npy").exists()
