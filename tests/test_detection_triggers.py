"""Template-free detection (reverse-engineered triggers, docs/experiments.md#detect-and-xbl) and XBL along a
noise direction: the regions, the similarity that makes a training image carry a trigger, the flagging, and
on real MNIST a grey box no patch of the bank has."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_detection import CLASSES, MNIST, SIDE, SPOT, SPURIOUS, shortcut_model, tiny_data
from torch import nn

from rarespur.launch.runner import run_job
from rarespur.methods.detection.carriers import rank_carriers
from rarespur.methods.detection.evidence import add_evidence, natural_rate
from rarespur.methods.detection.scan import ScanSettings, finding_mask, rank_findings
from rarespur.methods.detection.triggers import (
    TRIGGER,
    TriggerSettings,
    content_of,
    encode,
    grow_to_copies,
    mask_regions,
    paste,
    region_of,
    trigger_carrying,
    trigger_rows,
)
from rarespur.methods.detection.xbl import DirectionPenalty, noise_direction

from conftest import compose_config


def test_mask_regions_are_eight_connected_and_kept_by_mask_mass():
    m = np.zeros((8, 8))
    m[0, 0] = m[1, 1] = m[0, 2] = 0.9  # cells touching at corners: one region
    m[5:8, 5:8] = 0.6  # a larger but fainter block: more mass (5.4 against 2.7)
    m[4, 0] = 0.4  # below the threshold
    regions = mask_regions(m, threshold=0.5, keep=2)
    assert [int(r.sum()) for r in regions] == [9, 3]
    assert regions[1][0, 0] and regions[1][1, 1] and regions[1][0, 2]
    assert len(mask_regions(m, threshold=0.5, keep=1)) == 1


def box_images(n: int = 400, carriers: int = 6, value: float = 0.6) -> tuple[torch.Tensor, np.ndarray]:
    """Random stroke-like images with a grey 3x3 box at (0, 0) in the first `carriers`, and a faint,
    uneven stain there in the next 20 (they resemble the box, but no two are copies of each other)."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(n, 1, SIDE, SIDE, generator=g) < 0.2).float()
    x[:, :, :3, :3] = 0
    x[:carriers, :, :3, :3] = value
    x[carriers : carriers + 20, :, :3, :3] = torch.rand(20, 1, 3, 3, generator=g) * 0.8 + 0.2
    region = np.zeros((SIDE, SIDE), dtype=bool)
    region[:3, :3] = True
    return x, region


def test_an_image_carries_a_trigger_when_it_copies_the_content_the_images_resembling_it_share():
    x, region = box_images()
    model_version = torch.full((1, 9), 0.95)  # the model's trigger: brighter than the planted 0.6
    carries, near = trigger_carrying(x, region, model_version, TriggerSettings())
    assert carries.nonzero().flatten().tolist() == list(range(6))  # the stains resemble it, but differ
    assert near[:6].all() and 6 < int(near.sum()) <= 26  # most stains come near: the content as it occurs naturally
    assert not trigger_carrying(x, region, torch.zeros(1, 9), TriggerSettings())[1].any()  # no deviation
    off = torch.tensor([[0.95, 0, 0, 0, 0, 0, 0, 0, 0.95]])  # points elsewhere: cosine 0.67 < 0.8
    assert not trigger_carrying(x, region, off, TriggerSettings())[1].any()


def test_the_null_of_a_trigger_is_the_larger_of_the_base_rate_and_the_class_share_of_similar_content():
    assert natural_rate(np.zeros(10), 0, 0.1) == 0.1  # nothing resembles it: the base rate alone
    assert natural_rate(np.array([0, 0, 0, 0, 0, 0, 2, 0, 0, 0]), 0, 0.1) == 0.1  # a letter T's two class-6 strokes
    r3_strokes = np.array([0, 0, 11, 1, 0, 0, 9, 0, 0, 0])  # saturated strokes on an R3 model: 11 of 21 of class 2
    assert natural_rate(r3_strokes, 2, 0.1) == pytest.approx(11.1 / 22)
    assert natural_rate(np.array([1, 0]), 0, 0.1) == pytest.approx(0.55)  # one pseudo-image at the base rate, not 1


def trigger_row(region: np.ndarray, content: torch.Tensor, cls: int = 0) -> dict:
    """A trigger row as trigger_rows gives it (the evidence reads its class, pixels and content)."""
    rows, cols = np.nonzero(region)
    box = dict(top=int(rows.min()), left=int(cols.min()), bottom=int(rows.max()) + 1, right=int(cols.max()) + 1)
    return dict(
        kind=TRIGGER,
        family=TRIGGER,
        value=float(content.mean()),
        size=int(region.sum()),
        **box,
        **{"class": cls, "delta": 0.1, "pixels": encode(np.flatnonzero(region)), "content": encode(content.numpy(), 3)},
    )


def test_copies_of_a_trigger_are_pure_however_many_images_resemble_it_and_are_tested_against_them():
    """6 copies of a grey box in class 0 and 20 uneven stains that resemble it: the stains do not make the copies
    impure (a planted letter T with 2 similar class-6 strokes had purity 30/32 < 0.95 when they counted); where
    the stains are spread over the classes the copies are tested against the base rate and flagged, where they
    are of class 0 too (the class has such content naturally) the same copies are unremarkable."""
    x, region = box_images()
    content = torch.full((1, 9), 0.95)
    y = torch.arange(len(x)) % 10
    y[:6] = 0  # 45 images of class 0: base rate 0.1125
    row = trigger_row(region, content)
    add_evidence([row], x, y, 10, outlier_z=10.0)
    assert (row["carriers"], row["carrying"], row["purity"], row["base_rate"]) == (6, 6, 1.0, 0.1125)
    assert row["similar"] == 20 and row["null_rate"] == 0.1125  # 2 of the 20 similar stains are of class 0
    assert row["p_value"] == pytest.approx(0.1125**6)
    assert rank_findings([row], ScanSettings())[0]["flagged"]

    y[6:26] = 0  # the stains are of class 0 too
    natural = trigger_row(region, content)
    add_evidence([natural], x, y, 10, outlier_z=10.0)
    assert (natural["carriers"], natural["carrying"], natural["similar"]) == (6, 6, 20)
    assert natural["null_rate"] == pytest.approx((20 + natural["base_rate"]) / 21)
    assert natural["p_value"] > 0.7 and not rank_findings([natural], ScanSettings())[0]["flagged"]


def test_a_trigger_grows_over_the_pixels_its_copies_share_and_its_delta_is_measured_again():
    """The mask of a weakly learned box covers part of it (my_box on MNIST: 6 of 16 pixels, delta 0.012): the
    copies agree on all of it, so the row grows to the whole box and its delta is that of the whole box."""
    x, region = box_images()  # the grey 0.6 box at (0, 0), 3x3, in the first 6 images; stains in the next 20
    y = torch.arange(len(x)) % CLASSES
    model = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, CLASSES))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
        model[1].weight[1] = torch.from_numpy(region.ravel()).float() * 0.5  # class 1 reads the box
    part = np.zeros_like(region)
    part[1:3, 1:3] = True  # the 4 pixels the mask found
    row = trigger_row(part, torch.full((1, 4), 0.95), cls=1)
    row["delta"] = float(_rise(model, x, y, part, 0.95))
    unrelated = trigger_row(part, torch.full((1, 4), 0.95), cls=1) | {"kind": "patch"}  # only triggers grow
    grow_to_copies([row, unrelated], model, x, y, x, TriggerSettings())
    assert np.array_equal(region_of(row, SIDE, SIDE), region) and row["size"] == 9
    assert (row["top"], row["left"], row["bottom"], row["right"]) == (0, 0, 3, 3)
    assert content_of(row, 1)[0].tolist() == pytest.approx([0.6] * 9)  # the copies' content, not the model's 0.95
    assert row["delta"] == pytest.approx(float(_rise(model, x, y, region, 0.6)), abs=1e-6)
    assert row["delta"] > 1.2 * float(_rise(model, x, y, part, 0.95))  # 9 pixels of 0.6 against 4 of 0.95
    assert unrelated["size"] == 4
    noisy = x.clone()
    noisy[:6] = 0.6  # the copies agree everywhere: whole-image content, the noise family's
    wide = trigger_row(part, torch.full((1, 4), 0.95), cls=1)
    grow_to_copies([wide], model, x, y, noisy, TriggerSettings())
    assert wide["size"] == 4
    lone = trigger_row(part, torch.full((1, 4), 0.95), cls=1)
    grow_to_copies([lone], model, x, y, x[5:], TriggerSettings())  # one copy: nothing to agree on
    assert lone["size"] == 4


def _rise(model: nn.Module, x: torch.Tensor, y: torch.Tensor, region: np.ndarray, value: float) -> torch.Tensor:
    """Mean rise of p(1) over the images not of class 1 when `region` is set to `value`."""
    hosts = x[y != 1]
    with torch.no_grad():
        before = torch.softmax(model(hosts), dim=1)[:, 1]
        return (
            torch.softmax(model(paste(hosts, region, torch.full((1, int(region.sum())), value))), dim=1)[:, 1] - before
        ).mean()


def test_paste_region_and_content_round_trip_through_a_table_row():
    region = np.zeros((SIDE, SIDE), dtype=bool)
    region[2, 3:5] = True
    content = torch.tensor([[0.25, 0.5]])
    row = {"pixels": encode(np.flatnonzero(region)), "content": encode(content.numpy(), 3)}
    assert np.array_equal(region_of(row, SIDE, SIDE), region)
    assert np.flatnonzero(region_of({"pixels": 19.0}, SIDE, SIDE)).tolist() == [19]  # one pixel, read from a table
    assert torch.equal(content_of(row, 1), content)
    pasted = paste(torch.zeros(2, 1, SIDE, SIDE), region, content)
    assert pasted[:, 0, 2, 3:5].tolist() == [[0.25, 0.5]] * 2 and pasted.sum() == 1.5


@pytest.mark.slow  # 150 optimisation steps: a few seconds on a busy 2-core machine
def test_the_reverse_engineered_trigger_of_the_built_in_shortcut_is_flagged_with_its_carriers():
    model, (x, y) = shortcut_model(), tiny_data()
    settings = ScanSettings()
    rows = trigger_rows(model, x, y, CLASSES, TriggerSettings(steps=50))
    add_evidence(rows, x, y, CLASSES, settings.evidence_z)
    ranked = rank_findings(rows, settings)
    top = ranked[0]
    assert top["flagged"] and top["kind"] == TRIGGER and top["class"] == SPURIOUS
    assert finding_mask(ranked, top, SIDE, SIDE)[SPOT] and top["size"] <= 2
    assert top["carriers"] == top["carrying"] == 6
    assert sum(row["flagged"] for row in ranked) == 1
    ranking = rank_carriers(model, x, y, top, hosts=x[y != SPURIOUS][:8])
    carriers = torch.nonzero(x[:, 0, SPOT[0], SPOT[1]] == 1).flatten().tolist()
    assert {r["index"] for r in ranking[:6]} == set(carriers)


def test_the_trigger_family_is_off_with_zero_steps():
    model, (x, y) = shortcut_model(), tiny_data()
    assert trigger_rows(model, x, y, CLASSES, TriggerSettings(steps=0)) == []


def test_the_noise_direction_is_what_the_carriers_share_and_its_penalty_trains_the_model_to_ignore_it():
    torch.manual_seed(0)
    noise = torch.rand(1, 1, SIDE, SIDE)
    others = torch.rand(50, 1, SIDE, SIDE) * 0.2
    carriers = others[:5] + noise
    direction = noise_direction(carriers, others[5:])
    assert direction.shape == (1, 1, SIDE, SIDE)
    assert (direction - noise).abs().max() < 0.1  # the images' own content averages out

    model = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, CLASSES))
    with torch.no_grad():
        centred = direction - direction.mean()  # reads the noise, not the brightness
        model[1].weight.copy_(centred.flatten()[None].repeat(CLASSES, 1) * torch.tensor([[8.0], [0.0], [0.0]]))
    xs, ys = torch.rand(256, 1, SIDE, SIDE) * 0.3, torch.randint(0, CLASSES, (256,))
    penalty = DirectionPenalty(direction, strength=10.0)
    penalty.setup(model, ys)
    assert penalty.method(model) == "noise_direction"
    before = penalty.explanation_loss(model, xs, ys)[1].item()
    from rarespur.engine.loop import TrainSettings, train_model

    history = train_model(
        model, xs, ys, TrainSettings(epochs=10, batch_size=64, optimizer="adam", lr=0.1), objective=penalty
    )
    after = penalty.explanation_loss(model, xs, ys)[1].item()
    assert before > 10 and after < 0.05 * before
    assert {"ce", "explanation_loss"} <= set(history[-1])


@pytest.fixture(scope="module")
def grey_box(shared_data, tmp_path_factory):
    """detect on a real-MNIST model with a grey 0.6 box (n = 10 of 6000, 6 epochs) and on its clean twin."""
    results = tmp_path_factory.mktemp("grey")
    base = [*MNIST, f"data.root={shared_data}", "epochs=6", f"results_dir={results}", "experiment=detect"]
    base = [o if o != "pattern=s3" else "pattern=grey_box" for o in base]
    fast = ["detect.patch_values=[1.0]", "detect.stride=2", "detect.num_images=128"]
    poisoned = run_job(compose_config(*base, *fast, "poison.count=10"))
    clean = run_job(compose_config(*base, *fast, "poison.count=0"))
    return poisoned, clean


@pytest.mark.slow  # `grey_box`: detect on two real-MNIST models
def test_a_grey_box_no_patch_has_is_found_by_its_trigger_and_the_clean_model_flags_nothing(grey_box):
    poisoned, clean = grey_box
    assert poisoned["detect.hit_at_1"] == 1.0 and poisoned["detect.top_family"] == TRIGGER
    assert poisoned["detect.top_class"] == 0 and poisoned["detect.top_carriers"] == 10
    assert poisoned["detect.precision_at_n"] >= 0.9
    assert clean["detect.num_flagged"] == 0


def test_xbl_corrects_a_detected_noise_finding_along_its_carriers_noise_and_a_trigger_inside_its_pixels(tmp_path):
    import pandas as pd

    from rarespur.experiments.xbl import correction

    (tmp_path / "tables").mkdir()
    noise = torch.rand(1, 1, SIDE, SIDE)
    train_x = torch.rand(20, 1, SIDE, SIDE) * 0.1
    train_x[[3, 7]] = (train_x[[3, 7]] + noise).clamp(0, 1)
    row = {"kind": "noise", "family": "noise", "class": 0, "top": 0, "left": 0, "bottom": SIDE, "right": SIDE}
    pd.DataFrame([dict(row, carriers=2, flagged=True)]).to_csv(tmp_path / "tables" / "findings.csv", index=False)
    pd.DataFrame({"rank": [1, 2, 3], "index": [7, 3, 0]}).to_csv(tmp_path / "tables" / "carriers.csv", index=False)
    support = np.ones((SIDE, SIDE), dtype=bool)
    train_y = torch.tensor([0, 1] * 10)
    train_y[[3, 7]] = 0
    x_cfg = {"strength": 10.0, "direction_strength": 1.0, "explanation": "auto"}
    objective, mask = correction(x_cfg, tmp_path, support, train_x, train_y)
    assert isinstance(objective, DirectionPenalty) and mask.all() and objective.strength == 1.0
    others = [i for i in range(20) if train_y[i] == 0 and i not in (3, 7)]  # the top 2 carriers, not index 0
    assert torch.allclose(objective.mask, noise_direction(train_x[[3, 7]], train_x[others]))

    pixels = encode(np.array([2 * SIDE + 3, 2 * SIDE + 4]))
    trigger = dict(row, kind=TRIGGER, family=TRIGGER, bottom=3, right=5, pixels=pixels, content="1 1", flagged=True)
    pd.DataFrame([trigger]).to_csv(tmp_path / "tables" / "findings.csv", index=False)
    objective, mask = correction(x_cfg, tmp_path, support, train_x, train_y)
    assert not isinstance(objective, DirectionPenalty) and mask.sum() == 2 and mask[2, 3] and mask[2, 4]
