"""Debiasing (docs/science.md#signal-is-harder): Colored MNIST, the loss terms of SiH and LfF, their training protocol,
bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from rarespur.data.colored_mnist import COLORS, color_labels, make_colored_mnist
from rarespur.data.loaders import load_dataset
from rarespur.data.splits import validation_split
from rarespur.engine.loop import TrainSettings, train_model
from rarespur.launch.runner import run_job
from rarespur.methods.debias.lff import LearningFromFailure
from rarespur.methods.debias.losses import gce, kl_divergence, reconstruction, sih_weights
from rarespur.methods.debias.sih import SignalIsHarder
from rarespur.methods.debias.visualize import bias_swap, deepfool_latent, pick_examples
from rarespur.models import build_model

from conftest import collect_runs, compose_config, killed_after_epoch, load_benchmark, run_py, tiny_problem

CMNIST = ("experiment=debias", "dataset=cmnist", "device=cpu", "progress=false")


def cmnist_options(ratio: float = 0.01, seed: int = 0) -> dict:
    return {"conflict_ratio": ratio, "color_std": 0.005, "seed": seed}


# ---------------------------------------------------------------------------
# Colored MNIST


def test_color_labels_follow_the_authors_blocks():
    """Per class: the conflicting share spread evenly over the 9 other colors, in contiguous blocks."""
    labels = np.repeat(np.arange(10), 1000)
    colors = color_labels(labels, aligned_ratio=0.9)
    for c in range(10):
        mine = colors[labels == c]
        assert (mine == c).sum() == 900
        assert all(
            (mine == other).sum() == round(1000 * 0.1 / 9 * (other + 1)) - round(1000 * 0.1 / 9 * other)
            for other in range(c)
        )  # blocks before the own color
        assert (np.diff(mine) >= 0).all()  # contiguous blocks in color order
    test = color_labels(labels, aligned_ratio=0.1)
    assert (np.bincount(test[labels == 3], minlength=10) == 100).all()  # unbiased: each color 10 %


@pytest.fixture(scope="module")
def mnist(shared_data):
    return load_dataset("mnist", shared_data)


@pytest.mark.parametrize("ratio, seed", [(0.005, 0), (0.01, 1), (0.05, 2)])
def test_conflicting_fraction_equals_the_ratio(mnist, ratio, seed):
    data = make_colored_mnist(mnist, ratio, 0.005, seed)
    conflicting = data.train_bias != data.train_y
    for c in range(10):  # per class, up to the rounding of one block edge
        assert abs(conflicting[data.train_y == c].mean() - ratio) < 1 / (data.train_y == c).sum()
    assert abs(conflicting.mean() - ratio) < 1e-3


def test_test_color_is_independent_of_the_label(mnist):
    data = make_colored_mnist(mnist, 0.01, 0.005, 0)
    table = np.zeros((10, 10))
    np.add.at(table, (data.test_y, data.test_bias), 1)
    chi2, p, _, _ = stats.chi2_contingency(table)
    assert p > 0.99 and abs((data.test_bias == data.test_y).mean() - 0.1) < 1e-3
    train = np.zeros((10, 10))
    np.add.at(train, (data.train_y, data.train_bias), 1)
    assert stats.chi2_contingency(train)[1] < 1e-100  # the training set is biased


@pytest.mark.slow  # three Colored MNISTs of 70,000 images
def test_same_seed_same_arrays_and_color_on_the_digit_only(mnist):
    a, b = (make_colored_mnist(mnist, 0.02, 0.005, 3) for _ in range(2))
    c = make_colored_mnist(mnist, 0.02, 0.005, 4)
    assert np.array_equal(a.train_x, b.train_x) and np.array_equal(a.test_x, b.test_x)
    assert np.array_equal(a.train_bias, c.train_bias) and not np.array_equal(a.train_x, c.train_x)  # noise only
    assert a.train_x.shape == (60000, 28, 28, 3) and a.train_x.dtype == np.float32
    assert (a.train_x[mnist.train_x[..., 0] == 0] == 0).all()  # black background
    brightest = mnist.train_x[..., 0] == 1.0
    i = int(np.flatnonzero(brightest.any((1, 2)))[0])
    pixel = a.train_x[i][brightest[i]][0]
    assert np.abs(pixel - COLORS[a.train_bias[i]]).max() < 0.03  # a full-intensity stroke shows the color


def test_validation_split_keeps_the_poisoned_images_in_training():
    plain_train, plain_val = validation_split(100, 0.2, seed=0)
    assert len(plain_val) == 20 and len(plain_train) == 80 and not np.intersect1d(plain_train, plain_val).size
    keep = np.r_[plain_val[:2], 99]  # two held-out images poisoned, one already training
    train, val = validation_split(100, 0.2, seed=0, keep=keep)
    assert np.isin(keep, train).all()
    assert np.array_equal(val, plain_val[2:])  # the clean baseline holds out the same images, less the poisoned
    assert not np.array_equal(validation_split(100, 0.2, seed=1)[1], plain_val)


def test_a_limited_colored_mnist_keeps_its_ratio_and_an_unbiased_test_set(shared_data):
    data = load_dataset("cmnist", shared_data, options=cmnist_options(0.05), limits=(3000, 500))
    assert len(data.train_y) == 3000 and len(data.test_y) == 500
    assert abs((data.train_bias != data.train_y).mean() - 0.05) < 0.01
    assert abs((data.test_bias == data.test_y).mean() - 0.1) < 0.03 and len(np.unique(data.test_bias)) == 10
    assert load_dataset("cmnist", shared_data, limits=(100, 100)).train_x.shape == (100, 28, 28, 3)  # defaults


# ---------------------------------------------------------------------------
# loss terms, by hand


def test_loss_terms_equal_a_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    y = torch.tensor([0, 2])
    p = [math.exp(2) / (math.exp(2) + 1 + math.exp(-1)), 1 / (2 * math.exp(0.5) + 1)]
    ce = [-math.log(v) for v in p]
    assert torch.allclose(gce(logits, y, 0.7), torch.tensor([ce[i] * p[i] ** 0.7 for i in range(2)]))
    assert torch.allclose(gce(logits, y, 0.7, scale=0.7), torch.tensor([ce[i] * p[i] ** 0.7 * 0.7 for i in range(2)]))
    assert torch.allclose(sih_weights(logits, y, 0.7), torch.tensor([(1 - v) ** 0.7 for v in p]))
    assert not sih_weights(logits.requires_grad_(True), y, 0.7).requires_grad  # the weights are detached

    x = torch.tensor([[[[0.0, 1.0], [0.5, 0.25]]]])  # 1 x 1 x 2 x 2
    x_rec = torch.tensor([[[[0.1, 0.9], [0.5, 0.5]]]])
    bce = -(
        math.log(0.9)
        + math.log(0.9)
        + (0.5 * math.log(0.5) + 0.5 * math.log(0.5))
        + (0.25 * math.log(0.5) + 0.75 * math.log(0.5))
    )
    logits = torch.logit(x_rec)  # the decoder's output before its sigmoid
    assert reconstruction(logits, x, "bce").item() == pytest.approx(bce / 4, rel=1e-5)
    assert reconstruction(logits, x, "mse").item() == pytest.approx((0.01 + 0.01 + 0 + 0.0625) / 4, rel=1e-5)
    saturated = torch.full_like(x, 30.0)  # sigmoid(30) is 1.0 in float32: torch's BCE would clamp at 100
    assert reconstruction(saturated, torch.zeros_like(x), "bce").item() == pytest.approx(30.0, rel=1e-5)
    mu, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(4.0)]])
    kl = -0.5 * ((1 + 0 - 1 - 1) + (1 + math.log(4) - 0 - 4))
    assert kl_divergence(mu, logvar, pixels=4).item() == pytest.approx(kl / 4)


def test_sih_loss_is_the_sum_of_its_terms():
    torch.manual_seed(0)
    model = build_model("vae_mlp", (1, 4, 4), 3)
    sih = SignalIsHarder(q=0.7, rec_weight=100.0)
    x, y = torch.rand(5, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1])
    sih.setup(model, y)
    with torch.no_grad():
        terms = sih.terms(model, x, y, sample=False)
        mu_s, lv_s = model.encode(x)
        mu_b, lv_b = sih.bias_model.encode(x)
        logits_s, logits_b = model.classifier(mu_s), sih.bias_model.classifier(mu_b)
        p_b = torch.softmax(logits_b, 1)[torch.arange(5), y]
        rec = F.binary_cross_entropy(sih.decoder(torch.cat([mu_s, mu_b], 1)), x, reduction="none").sum((1, 2, 3)) / 16
        kl = (
            -0.5
            * (1 + torch.cat([lv_s, lv_b], 1) - torch.cat([mu_s, mu_b], 1) ** 2 - torch.cat([lv_s, lv_b], 1).exp()).sum(
                1
            )
            / 16
        )
        ce_s, ce_b = F.cross_entropy(logits_s, y, reduction="none"), F.cross_entropy(logits_b, y, reduction="none")
        hand = ce_s * (1 - p_b) ** 0.7 + ce_b * p_b**0.7 + 100 * rec + kl
    assert torch.allclose(terms["total"], hand, atol=1e-6)
    assert torch.allclose(sih.validation_loss(model, x, y), hand, atol=1e-6)
    assert sih.reconstruction == "bce" and set(sih.modules()) == {"bias_model", "decoder"}


def test_lff_weights_from_class_normalized_loss_averages():
    torch.manual_seed(0)
    model = build_model("mlp1x256", (1, 2, 2), 2)
    lff = LearningFromFailure(q=0.7, ema_alpha=0.7)
    y_all = torch.tensor([0, 0, 1, 1])
    lff.setup(model, y_all)
    x = torch.rand(4, 1, 2, 2)
    ce = [torch.stack([F.cross_entropy(m(x), y_all, reduction="none") for m in (lff.bias_model, model)]).detach()]
    lff.step(model, x[:2], y_all[:2], torch.tensor([0, 1]))
    assert torch.allclose(lff.ema[:, :2], ce[0][:, :2]) and (lff.ema[:, 2:] == 0).all()  # first update: the loss
    lff.step(model, x[[0, 2]], y_all[[0, 2]], torch.tensor([0, 2]))
    expected0 = 0.7 * ce[0][:, 0] + 0.3 * ce[0][:, 0]  # same weights, same loss: the average stays
    assert torch.allclose(lff.ema[:, 0], expected0) and torch.allclose(lff.ema[:, 2], ce[0][:, 2])
    # the weight of sample 0: each average divided by its class's largest, then b / (b + d)
    b = lff.ema[0, 0] / lff.ema[0, :2].max()
    d = lff.ema[1, 0] / lff.ema[1, :2].max()
    out = lff.step(model, x[[0]], y_all[[0]], torch.tensor([0]))
    ce_d = F.cross_entropy(model(x[[0]]), y_all[[0]])
    loss_b = gce(lff.bias_model(x[[0]]), y_all[[0]], 0.7, scale=0.7).mean()
    assert out.loss.item() == pytest.approx((loss_b + ce_d * b / (b + d + 1e-8)).item(), rel=1e-5)


# ---------------------------------------------------------------------------
# the protocol on the shared loop


@pytest.mark.slow  # SiH's decoder under Adam for ~30 epochs; the loop's early stopping and resume: test_train.py
def test_sih_trains_stops_on_its_validation_loss_and_resumes_exactly(tmp_path):
    x, y = tiny_problem(96, side=4, classes=3)
    val = tiny_problem(40, side=4, classes=3)
    s = TrainSettings(epochs=30, batch_size=16, lr=0.01, optimizer="adam", seed=1)

    def fresh():
        torch.manual_seed(2)
        return build_model("vae_mlp", (1, 4, 4), 3), SignalIsHarder(
            early_stopping=2, monitor="val_loss", lr_schedule="plateau"
        )

    model, sih = fresh()
    history = train_model(model, x, y, s, objective=sih, validation=val)
    best = min(history, key=lambda row: row["val_loss"])
    assert len(history) - best["epoch"] == 2 and len(history) < 30  # stopped two epochs after the best loss
    lrs = [row["lr"] for row in history]
    assert lrs[0] == 0.01 and min(lrs) < 0.01  # the plateau schedule decayed
    with torch.no_grad():
        assert sih.validation_loss(model, *val).mean().item() == pytest.approx(best["val_loss"], rel=1e-5)
    assert {"rec", "kl", "bias_acc", "weight_mean"} <= set(history[0])

    class Stop(Exception):
        pass

    def stop_after(k):
        def on_epoch(row):
            if row["epoch"] == k:
                raise Stop

        return on_epoch

    ckpt = tmp_path / "state.pt"
    model2, sih2 = fresh()
    with pytest.raises(Stop):
        train_model(model2, x, y, s, checkpoint=ckpt, on_epoch=stop_after(2), objective=sih2, validation=val)
    model3, sih3 = fresh()
    resumed = train_model(model3, x, y, s, checkpoint=ckpt, objective=sih3, validation=val)
    assert resumed == history
    for a, b in zip(model.state_dict().values(), model3.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(sih.decoder[0].weight, sih3.decoder[0].weight)


def test_lff_state_resumes_exactly(tmp_path):
    x, y = tiny_problem(96, side=4, classes=3)
    s = TrainSettings(epochs=4, batch_size=16, lr=0.01, optimizer="adam", seed=1)

    def fresh():
        torch.manual_seed(2)
        return build_model("mlp1x256", (1, 4, 4), 3), LearningFromFailure()

    model, lff = fresh()
    history = train_model(model, x, y, s, objective=lff)
    ckpt = tmp_path / "state.pt"
    model2, lff2 = fresh()
    train_model(model2, x, y, TrainSettings(**{**s.__dict__, "epochs": 2}), checkpoint=ckpt, objective=lff2)
    model3, lff3 = fresh()
    assert train_model(model3, x, y, s, checkpoint=ckpt, objective=lff3) == history
    assert torch.equal(lff.ema, lff3.ema) and torch.equal(model.fc.weight, model3.fc.weight)


def test_a_continuation_takes_over_lff_s_biased_model_and_the_kept_samples_loss_averages(tmp_path):
    """Incremental retraining of a debiased model goes on with the method as it stood: its biased network,
    and the loss averages of the images it keeps (at their new positions), not fresh ones."""
    x, y = tiny_problem(96, side=4, classes=3)
    s = TrainSettings(epochs=2, batch_size=16, lr=0.01, optimizer="adam", seed=1)
    torch.manual_seed(2)
    model, lff = build_model("mlp1x256", (1, 4, 4), 3), LearningFromFailure()
    final = tmp_path / "final_state.pt"
    train_model(model, x, y, s, final_state=final, objective=lff)
    state = torch.load(final, weights_only=True)
    keep = torch.arange(96)[torch.arange(96) % 4 != 0]  # a quarter removed
    state["objective"] = lff.restrict_state(state["objective"], keep)
    assert torch.equal(state["objective"]["ema"], lff.ema[:, keep])

    continued = LearningFromFailure()
    frozen = TrainSettings(**{**s.__dict__, "epochs": 1, "lr": 0.0, "lr_schedule": "constant"})
    train_model(model, x[keep], y[keep], frozen, start_from=state, objective=continued)
    for theirs, ours in zip(lff.bias_model.parameters(), continued.bias_model.parameters()):
        assert torch.equal(theirs, ours)  # lr 0: the parent's biased network, unchanged
    # the kept images' averages went on from the parent's: one more EMA step (alpha 0.7) of the unchanged losses
    with torch.no_grad():
        losses = [F.cross_entropy(net(x[keep]), y[keep], reduction="none") for net in (lff.bias_model, model)]
    assert torch.allclose(continued.ema, 0.7 * lff.ema[:, keep] + 0.3 * torch.stack(losses), atol=1e-6)


def test_deepfool_reaches_the_target_class():
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(8, 4))
    z = torch.randn(20, 8)
    target = (head(z).argmax(1) + 1) % 4
    moved = deepfool_latent(head, z, target)
    reached = head(moved).argmax(1) == target
    assert reached.float().mean() >= 0.75  # a ReLU head has no gradient along negative coordinates: some stall
    assert ((moved - z).norm(dim=1)[reached] > 0).all()


# ---------------------------------------------------------------------------
# runs end to end


@pytest.mark.slow  # SiH on real Colored MNIST, trained twice
def test_debias_runs_on_colored_mnist_and_resumes_to_the_same_record(shared_data, tmp_path):
    overrides = [*CMNIST, f"data.root={shared_data}", "data.train_limit=3000", "data.test_limit=1000", "epochs=3"]
    straight = run_job(compose_config(*overrides, f"results_dir={tmp_path / 'a'}"))
    assert straight["debias.name"] == "sih" and straight["model.name"] == "vae_mlp"
    for key in ("test_acc", "test_acc_aligned", "test_acc_conflicting", "bias_test_acc", "train_conflict_fraction"):
        assert 0 <= straight[key] <= 1, key
    assert straight["n_train"] == 2700 and straight["n_val"] == 300
    run_dir = next((tmp_path / "a").glob(f"{straight['run_id']}"))
    assert (run_dir / "bias_visualization.png").stat().st_size > 10_000

    # kill after the second epoch (the checkpoint is written), then relaunch
    with killed_after_epoch(2), pytest.raises(KeyboardInterrupt):
        run_job(compose_config(*overrides, f"results_dir={tmp_path / 'b'}"))
    resumed = run_job(compose_config(*overrides, f"results_dir={tmp_path / 'b'}"))
    assert not (tmp_path / "b" / straight["run_id"] / "error.txt").exists()
    for key in ("test_acc", "test_acc_conflicting", "bias_test_acc", "train_loss", "epochs_trained", "spurious_score"):
        assert resumed[key] == straight[key], key


def test_debias_on_a_poisoned_dataset_scores_the_pattern_with_its_baseline(shared_data, tmp_path):
    base = [
        "experiment=debias",
        "dataset=mnist",
        f"data.root={shared_data}",
        "device=cpu",
        "progress=false",
        "data.train_limit=2000",
        "data.test_limit=500",
        "epochs=2",
        "debias=vanilla",
        "pattern=s3",
        f"results_dir={tmp_path}",
    ]
    poisoned = run_job(compose_config(*base, "poison.count=50"))  # before its baseline: collect fills the p-value
    assert len(poisoned["poisoned_indices"]) == 50 and poisoned["n_train"] == 2000 and poisoned["n_val"] == 0
    assert "p_value" not in poisoned
    assert "test_acc_aligned" not in poisoned and "bias_test_acc" not in poisoned  # no bias label, no bias model
    clean = run_job(compose_config(*base, "poison.count=0"))
    table = collect_runs(tmp_path).set_index("run_id")
    assert table.loc[poisoned["run_id"], "baseline_run_id"] == clean["run_id"]
    assert table.loc[poisoned["run_id"], "baseline_score"] == clean["spurious_score"]
    assert 0 <= table.loc[poisoned["run_id"], "p_value"] <= 1


def test_sih_trains_the_convolutional_vae_on_color_images_with_mse():
    torch.manual_seed(0)
    x, y = torch.rand(64, 3, 32, 32), torch.randint(0, 4, (64,))
    model, sih = build_model("vae_conv", (3, 32, 32), 4), SignalIsHarder()
    history = train_model(model, x, y, TrainSettings(epochs=3, batch_size=32, optimizer="adam", lr=1e-3), objective=sih)
    assert sih.reconstruction == "mse" and history[-1]["rec"] < history[0]["rec"]
    assert sih.decoder(torch.zeros(2, 256)).shape == (2, 3, 32, 32)


def bad(*overrides: str) -> str:
    done = run_py(*overrides, timeout=120)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    return done.stderr


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["debias=foo"], ["debias", "foo", "vanilla", "sih"]),
        (["dataset=cmnist", "dataset.conflict_ratio=1.5"], ["dataset.conflict_ratio", "1.5", "<= 1"]),
        (["dataset=cmnist", "dataset.conflict_ratio=-0.1"], ["dataset.conflict_ratio", "-0.1"]),
        (["dataset=cmnist", "model=mlp3x256"], ["debias=sih", "model=vae_mlp", "MLP"]),
        (["dataset=cmnist", "data.root=/nonexistent"], ["MNIST", "/nonexistent", "data.root"]),
        (["dataset=cmnist", "regularizer=l2"], ["regularizer=l2", "regularizer=none"]),
        (["dataset=cmnist", "debias.val_fraction=0"], ["debias.val_fraction", "early_stopping"]),
        (["dataset=cmnist", "model=vae_conv"], ["model=vae_conv", "divide by 8"]),
    ],
)
@pytest.mark.slow  # one run.py launch per case (~5 s)
def test_bad_input_fails_in_one_message_and_leaves_nothing(overrides, words, tmp_path, shared_data):
    root = [] if any(o.startswith("data.root") for o in overrides) else [f"data.root={shared_data}"]
    message = bad("experiment=debias", *root, *overrides, f"results_dir={tmp_path}", "data.train_limit=100")
    for word in words:
        assert word in message, (word, message)
    assert not any(p.name != ".locks" for p in tmp_path.glob("*"))


def luminance(images: np.ndarray) -> torch.Tensor:
    """A colored decode as a grey digit for an MNIST classifier: brightest channel, scaled to a maximum of 1."""
    grey = torch.from_numpy(images).amax(1, keepdim=True)
    return grey / grey.flatten(1).amax(1).clamp_min(1e-6)[:, None, None, None]


def hue_towards(images: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Cosine between each image's mean foreground color and the given color, per image."""
    out = []
    for image, color in zip(images, colors):
        mean = image[:, image.max(0) > 0.3].mean(1)
        out.append(mean @ color / (np.linalg.norm(mean) * np.linalg.norm(color)))
    return np.array(out)


@pytest.mark.slow
def test_bias_visualization_changes_the_color_not_the_digit(shared_data):
    """SiH on Colored MNIST (1 %, 12 epochs): moving the bias latent recolors the decode towards the new
    class's color, and an MNIST digit classifier reads the same digit before and after (~3 min)."""
    data = load_dataset("cmnist", shared_data, options=cmnist_options())
    x, y = torch.from_numpy(data.train_x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(data.train_y)
    torch.manual_seed(0)
    model, sih = build_model("vae_mlp", (3, 28, 28), 10), SignalIsHarder()
    train_model(
        model,
        x,
        y,
        TrainSettings(epochs=12, batch_size=256, optimizer="adam", lr=1e-3, lr_schedule="constant"),
        objective=sih,
    )
    test_x = torch.from_numpy(data.test_x).permute(0, 3, 1, 2).contiguous()
    test_y = torch.from_numpy(data.test_y)

    chosen = pick_examples(model, sih.bias_model, test_x, test_y, per_class=2)
    swap = bias_swap(model, sih.bias_model, sih.decoder, test_x[chosen], test_y[chosen], seed=0)
    assert swap.flipped.mean() >= 0.9
    towards = hue_towards(swap.perturbed, COLORS[swap.target]) - hue_towards(swap.reconstruction, COLORS[swap.target])
    assert (towards > 0).mean() >= 0.75, towards

    mnist = load_dataset("mnist", shared_data)
    torch.manual_seed(0)
    digits = build_model("mlp1x256", (1, 28, 28), 10)
    grey_x = torch.from_numpy(mnist.train_x[:20000]).permute(0, 3, 1, 2).contiguous()
    settings = TrainSettings(epochs=2, batch_size=128, optimizer="adam", lr=1e-3, lr_schedule="constant")
    train_model(digits, grey_x, torch.from_numpy(mnist.train_y[:20000]), settings)
    digits.eval()
    with torch.no_grad():
        before = digits(luminance(swap.reconstruction)).argmax(1)
        after = digits(luminance(swap.perturbed)).argmax(1)
    assert (before.numpy() == swap.label).mean() >= 0.9  # the reconstructions are readable digits
    assert (before == after).float().mean() >= 0.9  # and moving the bias keeps the digit


def test_one_epoch_of_the_authors_loop_and_of_our_engine_gives_the_same_losses(shared_data):
    """benchmarks/bench_sih.py times the two against each other: they must compute the same thing. Same
    initial weights, batches and latent draws; the authors' sigmoid + BCE and two plain Adams against our
    BCE on logits and one fused Adam, so equal to float precision, batch after batch (the epoch means
    follow every batch's weights)."""
    bench_sih = load_benchmark("bench_sih")
    images, attrs, x_np = bench_sih.colored_mnist(str(shared_data), 3 * bench_sih.BATCH)
    x, y = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous(), attrs[:, 0]
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))  # the engine's first epoch
    authors = bench_sih.authors_style_epoch(
        bench_sih.authors_networks(tuple(x.shape[1:]), 0), images, attrs, torch.device("cpu"), order
    )
    ours = bench_sih.engine_epochs(SignalIsHarder(), x, y, 1)[0]
    assert len(authors) == 3
    for term in ("loss", "loss_s", "loss_b", "rec", "kl"):
        assert np.mean([batch[term] for batch in authors]) == pytest.approx(ours[term], rel=1e-5), term
