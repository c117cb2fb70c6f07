"""The training engine follows the paper's recipe (docs/science.md#training): schedule, augmentation, noise, clipping,
resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rarespur.engine.loop import (
    TrainSettings,
    augment_batch,
    augment_crop_flip,
    milestones,
    quantize_uint8,
    train_model,
)
from rarespur.engine.objective import Objective, StepOutput

from conftest import tiny_model, tiny_problem


def test_milestone_table():
    assert milestones(3) == [15, 25]
    assert milestones(30) == [15, 25]
    assert milestones(40) == [20, 30]
    assert milestones(50) == [25, 40]
    assert milestones(60) == [30, 50]
    assert milestones(70) == [40, 50, 60]
    assert milestones(80) == [40, 60, 70]
    assert milestones(120) == [50, 90, 110]
    assert milestones(140) == [60, 100, 120]
    assert milestones(160) == [40, 80, 120, 140]
    assert milestones(200) == [80, 140, 180]
    assert milestones(201) == [60, 120]


def stop_at(epoch: int):
    """An epoch callback that interrupts training after `epoch` (as a kill or requeue would)."""

    def on_epoch(row: dict) -> None:
        if row["epoch"] == epoch:
            raise KeyboardInterrupt

    return on_epoch


def test_lr_decays_at_milestones_and_learns():
    x, y = tiny_problem()
    history = train_model(tiny_model(), x, y, TrainSettings(epochs=30, batch_size=16, lr=0.1))
    lrs = [row["lr"] for row in history]
    assert lrs[0] == lrs[14] == pytest.approx(0.1)
    assert lrs[15] == lrs[24] == pytest.approx(0.01)
    assert lrs[25] == lrs[29] == pytest.approx(0.001)
    assert history[-1]["acc"] > 0.9 > history[0]["acc"] - 0.3  # it learned the rule


def test_aug01_is_a_padded_crop_with_optional_flip():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(40, 3, 8, 8, generator=g) + 0.1  # no zeros, so padding is visible
    out = augment_crop_flip(x, g, pad=4)
    assert out.shape == x.shape
    padded = nn.functional.pad(x, (4, 4, 4, 4))
    flips = 0
    for i in range(len(x)):
        found = None
        for dy in range(9):
            for dx in range(9):
                crop = padded[i, :, dy : dy + 8, dx : dx + 8]
                if torch.equal(out[i], crop):
                    found = "plain"
                elif torch.equal(out[i], crop.flip(-1)):
                    found = "flip"
        assert found is not None, f"image {i} is not a crop of its padded input"
        flips += found == "flip"
    assert 5 < flips < 35  # both branches are taken


@pytest.mark.parametrize("channels", [3, 1])
def test_aug01_pil_is_the_originals_pil_round_trip_bit_for_bit(channels):
    """train.augment=aug01_pil equals the original's aug01 (ToPILImage, RandomCrop(32, padding=4),
    RandomHorizontalFlip, ToTensor) applied image by image with the same offsets and flips. The images
    carry R1 and R3 as the patterns paste them (off the 1/255 grid) and exact 0 and 1 pixels."""
    import numpy as np
    import torchvision.transforms.functional as TF
    from torchvision.transforms import ToPILImage, ToTensor

    from rarespur.data.patterns import NoisePattern

    rng = np.random.RandomState(0)
    clean = rng.randint(0, 256, (30, 32, 32, channels)).astype(np.float32) / np.float32(255)
    clean[:, :2] = 0.0
    clean[:, -2:] = 1.0
    images = np.concatenate(
        [clean[:10], NoisePattern("r1", 0.25).apply(clean[10:20], 0), NoisePattern("r3", 1.0).apply(clean[20:], 0)]
    )
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())  # N x C x H x W float32, as the loop's batches
    assert not torch.equal(x, quantize_uint8(x))  # the noise is off the grid: the test can fail

    g = torch.Generator().manual_seed(3)
    out = augment_batch(x, "aug01_pil", g)
    g.manual_seed(3)  # the same draws as augment_crop_flip makes: row offsets, column offsets, flips
    dy = torch.randint(0, 9, (len(x), 1), generator=g)
    dx = torch.randint(0, 9, (len(x), 1), generator=g)
    flip = torch.rand((len(x), 1), generator=g) < 0.5
    for i in range(len(x)):
        pil = TF.pad(ToPILImage()(x[i]), 4, fill=0)  # RandomCrop(32, padding=4): zero padding, then a crop
        pil = TF.crop(pil, int(dy[i]), int(dx[i]), 32, 32)
        if flip[i]:
            pil = TF.hflip(pil)
        want = ToTensor()(pil)
        assert torch.equal(out[i], want), f"image {i}"
    assert flip.any() and not flip.all()
    g.manual_seed(3)
    plain = augment_batch(x, "aug01", g)  # the same crops and flips, without the truncation
    assert torch.equal(quantize_uint8(plain), out) and not torch.equal(plain, out)
    assert torch.equal(quantize_uint8(torch.from_numpy(clean)), torch.from_numpy(clean))  # clean: unchanged


def test_gaussian_noise_and_clipping_change_training():
    x, y = tiny_problem()
    base = TrainSettings(epochs=2, batch_size=16, lr=0.1)
    weights = {}
    for name, s in {
        "plain": base,
        "noise": TrainSettings(**{**base.__dict__, "noise_sigma": 0.5}),
        "clip": TrainSettings(**{**base.__dict__, "grad_clip": 1e-4}),
    }.items():
        model = tiny_model()
        train_model(model, x, y, s)
        weights[name] = model[1].weight.detach().clone()
    start = tiny_model()[1].weight.detach()
    assert not torch.equal(weights["plain"], weights["noise"])
    # clipping by value bounds every step: 2 epochs x 4 batches, momentum at most ~10x
    assert (weights["clip"] - start).abs().max() < 8 * 10 * 0.1 * 1e-4
    assert (weights["plain"] - start).abs().max() > 1e-2


def test_same_seed_same_result_and_resume_equals_uninterrupted(tmp_path):
    x, y = tiny_problem()
    s = TrainSettings(epochs=6, batch_size=16, lr=0.1, optimizer="adam", weight_decay=1e-3, seed=3)
    straight = tiny_model()
    full = train_model(straight, x, y, s)

    ckpt = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        train_model(tiny_model(), x, y, s, checkpoint=ckpt, on_epoch=stop_at(3))
    resumed = tiny_model()
    history = train_model(resumed, x, y, s, checkpoint=ckpt)
    assert history == full
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    x, y = tiny_problem()
    ckpt = tmp_path / "state.pt"
    train_model(tiny_model(), x, y, TrainSettings(epochs=1, batch_size=16), checkpoint=ckpt)
    other = nn.Sequential(nn.Flatten(), nn.Linear(36, 2))
    with pytest.raises(ValueError, match="does not match"):
        train_model(other, x, y, TrainSettings(epochs=2, batch_size=16), checkpoint=ckpt)


def test_checkpoint_every_n_epochs_resumes_from_the_last_one(tmp_path):
    x, y = tiny_problem()
    s = TrainSettings(epochs=5, batch_size=16, lr=0.1, seed=1)
    straight = train_model(tiny_model(), x, y, s)
    ckpt = tmp_path / "state.pt"

    with pytest.raises(KeyboardInterrupt):
        train_model(tiny_model(), x, y, s, checkpoint=ckpt, on_epoch=stop_at(3), checkpoint_every=2)
    assert len(torch.load(ckpt, weights_only=True)["history"]) == 2  # epoch 3 was not saved
    assert train_model(tiny_model(), x, y, s, checkpoint=ckpt, checkpoint_every=2) == straight


def test_resume_restores_the_dropout_generator(tmp_path):
    x, y = tiny_problem()
    s = TrainSettings(epochs=4, batch_size=16, lr=0.1, seed=2)

    def dropout_model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(36, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 2))

    straight = dropout_model()
    full = train_model(straight, x, y, s)

    ckpt = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        train_model(dropout_model(), x, y, s, checkpoint=ckpt, on_epoch=stop_at(2))
    torch.rand(100)  # whatever else the new process draws before resuming
    resumed = dropout_model()
    assert train_model(resumed, x, y, s, checkpoint=ckpt) == full
    assert all(torch.equal(a, b) for a, b in zip(straight.parameters(), resumed.parameters()))


def test_checkpoint_from_another_device_is_a_clear_error(tmp_path):
    x, y = tiny_problem()
    ckpt = tmp_path / "state.pt"
    train_model(tiny_model(), x, y, TrainSettings(epochs=1, batch_size=16), checkpoint=ckpt)
    state = torch.load(ckpt, weights_only=True)
    torch.save({**state, "device_type": "cuda"}, ckpt)
    with pytest.raises(ValueError, match="written on cuda, this run is on cpu; relaunch with device=cuda"):
        train_model(tiny_model(), x, y, TrainSettings(epochs=2, batch_size=16), checkpoint=ckpt)


class Reconstructing(Objective):
    """A toy objective with an extra module (a decoder on the logits), its own parameter group
    and a per-epoch metric: the shape SiH's VAEs and decoder need."""

    name = "reconstructing"

    def __init__(self) -> None:
        torch.manual_seed(5)
        self.decoder = nn.Linear(2, 36)
        self.rec_sum, self.batches = 0.0, 0

    def modules(self) -> dict[str, nn.Module]:
        return {"decoder": self.decoder}

    def step(self, model, x, y, index) -> StepOutput:
        logits = model(x)
        rec = ((self.decoder(logits) - x.flatten(1)) ** 2).mean()
        self.rec_sum, self.batches = self.rec_sum + rec.item(), self.batches + 1
        return StepOutput(F.cross_entropy(logits, y) + rec, logits)

    def end_epoch(self) -> dict[str, float]:
        out = {"rec": self.rec_sum / self.batches}
        self.rec_sum, self.batches = 0.0, 0
        return out


def test_objective_with_an_extra_module_trains_it_and_resumes_exactly(tmp_path):
    x, y = tiny_problem()
    s = TrainSettings(epochs=5, batch_size=16, lr=0.05, optimizer="adam", seed=4)
    straight_obj = Reconstructing()
    before = straight_obj.decoder.weight.detach().clone()
    straight = tiny_model()
    full = train_model(straight, x, y, s, objective=straight_obj)
    assert not torch.equal(before, straight_obj.decoder.weight)  # the decoder is in the optimizer
    assert full[-1]["rec"] < full[0]["rec"] and all("rec" in row for row in full)

    ckpt = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        train_model(tiny_model(), x, y, s, checkpoint=ckpt, on_epoch=stop_at(2), objective=Reconstructing())
    assert set(torch.load(ckpt, weights_only=True)["objective"]) == {"decoder"}
    resumed_obj = Reconstructing()  # a fresh process: decoder at its initial weights
    resumed = tiny_model()
    assert train_model(resumed, x, y, s, checkpoint=ckpt, objective=resumed_obj) == full
    assert torch.equal(straight_obj.decoder.weight, resumed_obj.decoder.weight)
    assert all(torch.equal(a, b) for a, b in zip(straight.parameters(), resumed.parameters()))


def test_early_stopping_restores_the_best_epoch_and_resumes_exactly(tmp_path):
    x, y = tiny_problem(96)
    val = tiny_problem(64, seed=1)
    s = TrainSettings(epochs=40, batch_size=16, lr=0.5, optimizer="adam", seed=0, early_stopping=3)
    model = tiny_model()
    history = train_model(model, x, y, s, validation=val)
    best = max(history, key=lambda row: row["val_acc"])
    assert len(history) < 40 and len(history) - best["epoch"] == 3  # stopped 3 epochs after the best one
    assert history.index(best) == next(i for i, r in enumerate(history) if r["val_acc"] == best["val_acc"])
    with torch.no_grad():
        assert (model(val[0]).argmax(1) == val[1]).float().mean().item() == best["val_acc"]  # best weights back

    ckpt = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        train_model(tiny_model(), x, y, s, checkpoint=ckpt, on_epoch=stop_at(best["epoch"] + 1), validation=val)
    resumed = tiny_model()
    assert train_model(resumed, x, y, s, checkpoint=ckpt, validation=val) == history
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters()))
    with pytest.raises(ValueError, match="validation data"):
        train_model(tiny_model(), x, y, s)
