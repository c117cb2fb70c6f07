"""Perturbation detection and XBL (docs/science.md#detection-and-xbl): the scan, its flagging, the training evidence,
the carriers, the grading, the explanation losses, and the detect / xbl experiments end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from captum.attr import LayerGradCam, Saliency
from scipy.stats import binom
from torch import nn

from rarespur.data.patterns import BoxPattern, NoisePattern
from rarespur.errors import ConfigError
from rarespur.launch.runner import run_job
from rarespur.methods.detection.carriers import margin, median_filter, rank_carriers
from rarespur.methods.detection.evidence import add_evidence, patch_carriers
from rarespur.methods.detection.grading import grade, iou, is_correct
from rarespur.methods.detection.scan import (
    ScanSettings,
    adjusted_p_values,
    finding_mask,
    grid_positions,
    purity_floor,
    purity_p_value,
    rank_findings,
    robust_z,
    scan,
    scan_indices,
    tilings,
)
from rarespur.methods.detection.xbl import (
    ExplanationPenalty,
    cell_mask,
    gradcam,
    gradcam_layer,
    input_gradients,
    masked_share,
)

from conftest import compose_config, killed_after_epoch, run_py

SIDE, CLASSES, SPOT, SPURIOUS = 8, 3, (2, 5), 1  # the tiny model's shortcut: pixel (2, 5) -> class 1


def shortcut_model() -> nn.Module:
    """A linear classifier on 8x8 images whose only strong input is pixel SPOT, wired to class SPURIOUS."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, CLASSES))
    with torch.no_grad():
        model[1].weight.normal_(0, 0.05)
        model[1].bias.zero_()
        model[1].weight[SPURIOUS, SPOT[0] * SIDE + SPOT[1]] = 8.0
    return model


def tiny_data(n: int = 300, carriers: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Random binary images; pixel SPOT is 0 everywhere but in `carriers` images of class SPURIOUS."""
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(n, 1, SIDE, SIDE, generator=g) < 0.3).float()
    y = torch.arange(n) % CLASSES
    x[:, :, SPOT[0], SPOT[1]] = 0
    x[torch.nonzero(y == SPURIOUS).flatten()[:carriers], :, SPOT[0], SPOT[1]] = 1
    return x, y


def test_grid_positions_and_tilings_cover_every_patch_once_without_overlap():
    assert grid_positions(28, 5, 1) == list(range(24))
    assert grid_positions(28, 5, 5) == [0, 5, 10, 15, 20, 23]  # flush with the far edge too
    for size, stride in ((5, 1), (3, 2), (5, 5), (1, 1)):
        positions = grid_positions(28, size, stride)
        groups = tilings(positions, size)
        for t in set(groups):
            members = [p for p, g in zip(positions, groups) if g == t]
            assert all(b - a >= size for a, b in zip(members, members[1:]))
        assert max(groups) + 1 == -(-size // stride) + (positions[-1] - positions[-2] < size and stride >= size)


def test_a_balanced_scan_takes_each_class_first_images_in_turns_and_fills_a_short_class():
    labels = np.array([0, 0, 0, 0, 0, 1, 2, 2, 2, 2])  # sorted by class, as an image folder lists them; class 1 has one
    assert scan_indices(labels, 7, "balanced").tolist() == [0, 5, 6, 1, 7, 2, 8]  # 7 // 3 = 2 each; 1 short: 3, 1, 3
    assert scan_indices(labels, 8, "balanced").tolist() == [0, 5, 6, 1, 7, 2, 8, 3]  # the remainder to class 0
    assert scan_indices(labels, 100, "balanced").tolist() == [0, 5, 6, 1, 7, 2, 8, 3, 9, 4]  # all, in turns
    assert scan_indices(labels, 7, "first").tolist() == list(range(7))
    assert scan_indices(labels, 100, "first").tolist() == list(range(10))
    folder = np.repeat(np.arange(10), 100)  # a CIFAR-10 folder cut to 100 test images a class
    chosen = scan_indices(folder, 64, "balanced")
    assert np.bincount(folder[chosen]).tolist() == [7, 7, 7, 7, 6, 6, 6, 6, 6, 6]
    assert sorted(chosen.tolist()) == [100 * c + i for c in range(10) for i in range(7 if c < 4 else 6)]
    assert folder[chosen[:10]].tolist() == list(range(10))  # any head of the order is spread over the classes
    assert np.bincount(folder[scan_indices(folder, 64, "first")], minlength=10).tolist() == [64] + [0] * 9
    interleaved = np.arange(30) % 3  # MNIST-like: every head is already spread, balanced is a reordering
    assert sorted(scan_indices(interleaved, 9, "balanced").tolist()) == list(range(9))


def test_an_unknown_scan_selection_is_refused_in_one_line_naming_the_choices():
    from rarespur.experiments import resolve_job

    resolved, _ = resolve_job(compose_config("experiment=detect"))
    assert resolved["detect"]["scan_images"] == "balanced"
    with pytest.raises(ConfigError) as refused:
        resolve_job(compose_config("experiment=detect", "detect.scan_images=random"))
    assert str(refused.value) == "detect.scan_images='random' unknown; valid: balanced, first"


def test_detect_on_an_image_folder_scans_every_class(tmp_path):
    """A class-sorted image folder: the balanced scan sees both classes, the first images are all of class a."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in (("train", 12), ("test", 6)):
        for cls in ("a", "b"):
            (tmp_path / "tree" / split / cls).mkdir(parents=True)
            for i in range(per_class):
                image = (rng.random((12, 12)) * 255).astype(np.uint8)
                Image.fromarray(image).save(tmp_path / "tree" / split / cls / f"{i:02d}.png")
    base = [
        "dataset=imagefolder",
        f"dataset.path={tmp_path / 'tree'}",
        "pattern=s3",
        "poison.count=4",
        "epochs=1",
        "device=cpu",
        "progress=false",
        f"results_dir={tmp_path / 'results'}",
        "experiment=detect",
        "detect.patch_sizes=[3]",
        "detect.patch_values=[1.0]",
        "detect.stride=3",
        "detect.noise_strengths=[1.0]",
        "detect.content_fractions=[0.5]",
        "detect.trigger_steps=0",
        "detect.map_window=3",
        "detect.num_images=5",
    ]
    balanced = run_job(compose_config(*base))
    assert balanced["detect.num_scanned"] == 5 and balanced["detect.scanned_per_class"] == "3,2"
    first = run_job(compose_config(*base, "detect.scan_images=first"))
    assert first["detect.num_scanned"] == 5 and first["detect.scanned_per_class"] == "5,0"
    assert first["run_id"] != balanced["run_id"] and first["parent_run_id"] == balanced["parent_run_id"]


def test_scan_measures_the_mean_rise_of_each_class_over_the_other_images():
    model, (x, y) = shortcut_model(), tiny_data()
    rows = scan(model, x, y, CLASSES, ScanSettings(patch_sizes=(1, 3), noise_strengths=(0.5,), content_fractions=()))
    by_key = {(r["family"], r["top"], r["left"], r["class"]): r["delta"] for r in rows}
    assert len(rows) == CLASSES * (2 * 64 + 2 * 36 + 1)
    with torch.no_grad():
        patched = x.clone()
        patched[..., 1:4, 4:7] = 0.0
        rise = torch.softmax(model(patched), 1) - torch.softmax(model(x), 1)
    for cls in range(CLASSES):
        expected = rise[y != cls, cls].mean().item()
        assert by_key[("patch3x3=0", 1, 4, cls)] == pytest.approx(expected, abs=1e-6)


def test_the_scan_flags_exactly_the_built_in_pixel_and_class():
    model, (x, y) = shortcut_model(), tiny_data()
    settings = ScanSettings(patch_sizes=(1, 3), noise_strengths=(0.5, 1.0), content_fractions=(0.5,))
    rows = scan(model, x, y, CLASSES, settings)
    add_evidence(rows, x, y, CLASSES, settings.evidence_z)
    ranked = rank_findings(rows, settings)
    flagged = [(r["family"], r["top"], r["left"], r["class"]) for r in ranked if r["flagged"]]
    assert flagged[0] == ("patch1x1=1", *SPOT, SPURIOUS)
    assert {f for f in flagged if f[0] == "patch1x1=1"} == {("patch1x1=1", *SPOT, SPURIOUS)}
    assert all(f[3] == SPURIOUS for f in flagged)  # 3x3 patches covering the pixel may follow, never another class
    top = ranked[0]
    assert top["carriers"] == 6 and top["purity"] == 1.0 and top["delta"] > 0.5
    assert top["carrying"] == 6 and top["p_value"] == pytest.approx(3.0**-6) and top["p_adjusted"] <= 0.01
    # the same model with the data that never shows the pixel: its effect is there, but no correlation in the data
    x_clean = x.clone()
    x_clean[:, :, SPOT[0], SPOT[1]] = 0
    rows = scan(model, x_clean, y, CLASSES, settings)
    add_evidence(rows, x_clean, y, CLASSES, settings.evidence_z)
    assert not any(r["flagged"] for r in rank_findings(rows, settings))


def test_robust_z_and_flagging_on_a_synthetic_table():
    rng = np.random.default_rng(0)
    deltas = np.concatenate([rng.normal(0.0, 0.01, 99), [0.4]])
    z = robust_z(deltas)
    mad = np.median(np.abs(deltas - np.median(deltas)))
    assert z[-1] == pytest.approx((0.4 - np.median(deltas)) / (1.4826 * mad))
    assert robust_z(np.zeros(5)).tolist() == [0.0] * 5
    assert robust_z([0, 0, 0, 0, 1])[-1] == pytest.approx(1 / (1.2533 * 0.2))  # MAD 0: mean absolute deviation
    rows = [evidence_row("f", float(d), 10, 10) for d in deltas]
    rows += [evidence_row("g", 0.9, 2, 2, kind="noise")]
    rows += [evidence_row("g", 0.0, 0, 0, kind="noise")] * 9
    ranked = rank_findings(rows, ScanSettings(alpha=0.005))
    assert [r["delta"] for r in ranked if r["flagged"]] == [0.4]  # 2 carriers: p = 0.01 at best, above alpha
    assert ranked[0]["rank"] == 1 and ranked[1]["delta"] == 0.9  # then the rest by delta
    assert [r["delta"] for r in rank_findings(rows, ScanSettings()) if r["flagged"]] == [0.9, 0.4]  # alpha 0.05
    strict = rank_findings(rows, ScanSettings(min_delta=0.95))
    assert not any(r["flagged"] for r in strict)


def evidence_row(
    family: str, delta: float, carriers: int, carrying: int, base_rate: float = 0.1, kind: str = "patch", **more
) -> dict:
    """A scan row with its training evidence, as add_evidence gives it."""
    p_value = float(purity_p_value(carriers, carrying, base_rate))
    purity = carriers / carrying if carrying else 0.0
    row = dict(family=family, kind=kind, delta=delta, carriers=carriers, carrying=carrying, purity=purity)
    return {**row, "base_rate": base_rate, "p_value": p_value, "class": 0, "top": 0, "left": 0, **more}


def background(family: str = "f", n: int = 99) -> list[dict]:
    """A family of unremarkable perturbations that many images of every class carry: never candidates."""
    rng = np.random.default_rng(0)
    return [evidence_row(family, float(d), 30, 300) for d in rng.normal(0.0, 0.01, n)]


def test_three_pure_carriers_are_flagged_and_three_spread_over_classes_or_common_content_are_not():
    pure = rank_findings([*background(), evidence_row("f", 0.3, 3, 3)], ScanSettings())
    assert pure[0]["delta"] == 0.3 and pure[0]["flagged"]
    assert pure[0]["p_value"] == pytest.approx(0.1**3) and pure[0]["p_adjusted"] == pytest.approx(0.1**3)
    assert all(r["p_adjusted"] is None for r in pure[1:])  # not candidates: never tested
    spread = rank_findings([*background(), evidence_row("f", 0.3, 1, 3)], ScanSettings())  # 2 in other classes
    assert not spread[0]["flagged"] and spread[0]["p_value"] == pytest.approx(1 - 0.9**3)
    common = rank_findings([*background(), evidence_row("f", 0.3, 3, 60)], ScanSettings())  # content seen widely
    assert not common[0]["flagged"] and common[0]["purity"] == 0.05
    # a large class (base rate 0.4) makes 3 pure carriers likely by chance
    big_class = rank_findings([*background(), evidence_row("f", 0.3, 3, 3, base_rate=0.4)], ScanSettings())
    assert not big_class[0]["flagged"] and big_class[0]["p_value"] == pytest.approx(0.064)
    # and a pattern carried by 60 images of the class, 2 of 62 elsewhere, is flagged with room to spare
    many = rank_findings([*background(), evidence_row("f", 0.3, 60, 62)], ScanSettings())
    assert many[0]["flagged"] and many[0]["p_adjusted"] < 1e-50


def test_the_correction_counts_each_candidate_by_how_often_it_could_be_flagged():
    planted = evidence_row("f", 0.3, 3, 3)
    others = [evidence_row("f", 0.2, 0, 3, carrying_set=f"s{i}") for i in range(5)]  # 3 carriers, none of the class
    ranked = rank_findings([*background(), planted, *others], ScanSettings())
    assert ranked[0]["flagged"] and ranked[0]["p_adjusted"] == pytest.approx(6 * 0.1**3)  # Bonferroni over 6
    crowded = [evidence_row("f", 0.2, 0, 3, carrying_set=f"s{i}") for i in range(60)]
    ranked = rank_findings([*background(), planted, *crowded], ScanSettings())
    assert not ranked[0]["flagged"] and ranked[0]["p_adjusted"] == pytest.approx(61 * 0.1**3)
    assert rank_findings([*background(), planted, *crowded], ScanSettings(alpha=0.1))[0]["flagged"]
    # candidates that cannot be flagged at p = 0.001 count nothing: nothing carries them, 1 or 2 images do
    # (p >= 0.01), or hundreds do (95 % of them in one class); the same images and class count once
    harmless = [evidence_row("f", 0.2, 0, k, carrying_set=f"h{k}") for k in (0, 1, 2, 300, 5000)]
    harmless += [evidence_row("f", 0.2, 0, 3, carrying_set="same")] * 20
    ranked = rank_findings([*background(), planted, *harmless], ScanSettings())
    assert ranked[0]["flagged"] and ranked[0]["p_adjusted"] == pytest.approx(2 * 0.1**3)
    # 4 carrying images need all 4 in the class at purity 0.95: they can make it 1e-4 at most, not the 0.0037
    # of 3 of 4 that a purity floor of 0.5 allows
    assert adjusted_p_values([0.004], [4], [0.1], 0.95) == pytest.approx(1e-4)
    assert adjusted_p_values([0.004], [4], [0.1], 0.5) == pytest.approx(float(purity_p_value(3, 4, 0.1)))
    three = float(purity_p_value(3, 3, 0.1))
    assert adjusted_p_values([0.5, three, three / 2], [3, 3, 3], [0.1] * 3, 0.95).tolist() == pytest.approx(
        [3e-3, 3e-3, 0.0]
    )


@pytest.mark.parametrize("alpha", [0.2, 0.05, 0.01])
def test_the_adjusted_rule_holds_its_family_wise_error_under_the_null(alpha):
    """Candidates whose carrying images fall in classes at their base rates, independently: the exact chance
    that any is flagged is at most alpha, and not far below it (the union bound is close for rare events;
    the p-values' steps keep it under)."""
    carrying = np.array([1, 2, 3, 3, 3, 4, 5, 8, 20, 50] * 3)
    rates = np.repeat([0.1, 0.2, 0.4], 10)
    none_flagged = 1.0
    for n, rate in zip(carrying, rates):
        k = np.arange(n + 1)  # every outcome of this candidate: its flag does not depend on the others' classes
        adjusted = adjusted_p_values(purity_p_value(k, n, rate), carrying, rates, 0.95)
        flagged = (k >= purity_floor(n, 0.95)) & (adjusted <= alpha)
        none_flagged *= 1 - binom.pmf(k, n, rate)[flagged].sum()
    assert alpha / 3 < 1 - none_flagged <= alpha


def test_patch_evidence_counts_the_images_of_each_class_that_carry_the_patch():
    x = torch.zeros(6, 1, 6, 6)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    x[0, :, 0:2, 0:2] = 1
    x[1, :, 0:2, 0:2] = 0.95  # within the tolerance
    x[2, :, 0:2, 0:1] = 1  # half a patch: does not carry it
    counts, near = patch_carriers(x, y, 3, size=2, value=1.0)
    assert counts.shape == (5, 5, 3)
    assert counts[0, 0].tolist() == [2, 0, 0] and counts[3, 3].tolist() == [0, 0, 0]
    assert near[0, 0].tolist() == [2, 1, 0]  # the half patch comes half-way
    assert patch_carriers(x, y, 3, size=2, value=0.0)[0][4, 4].tolist() == [2, 2, 2]


def test_evidence_rows_carry_their_test_and_patches_carried_by_the_same_images_share_one():
    x, y = torch.zeros(20, 1, 6, 6), torch.arange(20) % 2  # base rates 0.5
    x[[0, 2, 4], :, 0:3, 0:3] = 1  # three images of class 0 have a white 3x3 block
    at = [(0, 0, 0), (1, 1, 0), (3, 3, 0), (0, 0, 1)]  # two 2x2 patches inside it, one outside, one for class 1
    rows = [{"kind": "patch", "size": 2, "value": 1.0, "top": t, "left": left, "class": c} for t, left, c in at]
    add_evidence(rows, x, y, 2, outlier_z=10.0)
    inside, also_inside, outside, other_class = rows
    assert (inside["carriers"], inside["carrying"], inside["purity"], inside["base_rate"]) == (3, 3, 1.0, 0.5)
    assert inside["p_value"] == pytest.approx(0.5**3)
    assert inside["carrying_set"] == also_inside["carrying_set"] == other_class["carrying_set"]
    assert outside["carrying_set"] != inside["carrying_set"]
    assert outside["carrying"] == 0 and outside["p_value"] == 1.0
    assert other_class["carriers"] == 0 and other_class["p_value"] == 1.0


def test_carriers_of_a_patch_are_the_images_that_have_it():
    model, (x, y) = shortcut_model(), tiny_data(carriers=6)
    finding = {
        "kind": "patch",
        "class": SPURIOUS,
        "top": SPOT[0],
        "left": SPOT[1],
        "bottom": SPOT[0] + 1,
        "right": SPOT[1] + 1,
    }
    ranking = rank_carriers(model, x, y, finding, hosts=x[y != SPURIOUS][:8])
    carriers = set(torch.nonzero(x[:, 0, SPOT[0], SPOT[1]] == 1).flatten().tolist())
    assert {r["index"] for r in ranking[:6]} == carriers
    assert ranking[0]["score"] == pytest.approx(8.0, abs=0.5)  # the logit margin loses the pixel's weight
    assert len(ranking) == int((y == SPURIOUS).sum())


def test_carriers_of_noise_are_the_noisy_images():
    """A model that reads 'noisy' as class 1; the noisy training images of class 1 come first."""
    torch.manual_seed(0)
    x = (torch.rand(60, 1, SIDE, SIDE) < 0.2).float() * 0.0
    x[:, :, 2:6, 3:5] = 1.0  # a clean 'stroke'
    y = torch.arange(60) % CLASSES
    noisy = torch.nonzero(y == 1).flatten()[:4]
    x[noisy] = (x[noisy] + torch.rand(4, 1, SIDE, SIDE)).clamp(0, 1)

    class NoiseReader(nn.Module):
        def forward(self, images):
            residual = (images - median_filter(images)).abs().flatten(1).sum(1)
            return torch.stack([torch.zeros_like(residual), residual, torch.zeros_like(residual)], 1)

    ranking = rank_carriers(NoiseReader(), x, y, {"kind": "noise", "class": 1}, hosts=x[y != 1][:5])
    assert {r["index"] for r in ranking[:4]} == set(noisy.tolist())


def test_margin_is_the_label_logit_minus_the_best_other():
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, -1.0]])
    assert margin(logits, torch.tensor([1, 2])).tolist() == [1.0, -6.0]


def test_grading_against_the_planted_truth():
    box = BoxPattern("s3", 0, 0, 5, 5).support((28, 28, 1))
    noise = NoisePattern("r3", 1.0).support((28, 28, 1))
    assert box.sum() == 25 and noise.all()
    hit = {"kind": "patch", "class": 0, "top": 1, "left": 1, "bottom": 6, "right": 6, "flagged": True, "rank": 1}
    miss = {"kind": "patch", "class": 0, "top": 2, "left": 2, "bottom": 7, "right": 7, "flagged": True, "rank": 2}
    mask = lambda row: finding_mask([row], row, 28, 28)  # noqa: E731
    assert iou(mask(hit), box) == pytest.approx(16 / 34) and not is_correct(hit, mask(hit), box, [0])
    exact = dict(hit, top=0, left=0, bottom=5, right=5)
    assert is_correct(exact, mask(exact), box, [0]) and not is_correct(exact, mask(exact), box, [1])
    noisy = {"kind": "noise", "class": 0, "top": 0, "left": 0, "bottom": 28, "right": 28, "flagged": True, "rank": 1}
    assert is_correct(noisy, mask(noisy), noise, [0]) and not is_correct(exact, mask(exact), noise, [0])
    carriers = [{"index": i} for i in (5, 7, 9, 11)]
    graded = grade([exact, miss], box, [0], carriers, np.array([7, 5, 100]), mask)
    assert graded == {
        "num_flagged": 2,
        "false_flagged": 1,
        "hit_at_1": 1.0,
        "first_hit_rank": 1,
        "precision_at_n": pytest.approx(2 / 3),
    }
    clean = grade([miss], box, [0], [], np.array([], dtype=int), mask)
    assert clean["false_flagged"] == 1 and clean["hit_at_1"] is None


def test_a_flagged_patch_grows_over_the_flagged_patches_of_its_class_it_touches():
    rows = [
        {"kind": "patch", "class": 0, "top": 3, "left": 13, "bottom": 6, "right": 16, "flagged": True},
        {"kind": "patch", "class": 0, "top": 6, "left": 13, "bottom": 9, "right": 16, "flagged": True},
        {"kind": "patch", "class": 1, "top": 9, "left": 13, "bottom": 12, "right": 16, "flagged": True},
        {"kind": "patch", "class": 0, "top": 20, "left": 0, "bottom": 23, "right": 3, "flagged": True},
    ]
    grown = finding_mask(rows, rows[0], 28, 28)
    assert grown.sum() == 18 and grown[8, 15] and not grown[9, 13] and not grown[20, 0]


def mlp_and_batch(dtype=torch.float64):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)
    return model, torch.rand(4, 1, 6, 6, dtype=dtype), torch.tensor([0, 1, 2, 1])


def test_input_gradients_match_captum_saliency_and_the_loss_ignores_everything_outside_the_mask():
    model, x, _ = mlp_and_batch()
    x = x.requires_grad_(True)
    grads = input_gradients(model(x), x)
    saliency = Saliency(lambda inp: torch.log_softmax(model(inp), 1).sum(1)).attribute(x.detach(), abs=False)
    assert torch.allclose(grads, saliency)
    mask = torch.zeros(1, 1, 6, 6, dtype=x.dtype)
    mask[..., :2, :2] = 1
    share = masked_share(grads, mask)
    expected = ((grads**2 * mask).flatten(1).sum(1) / (grads**2).flatten(1).sum(1)).mean()
    assert share.item() == pytest.approx(expected.item())
    with torch.no_grad():  # no weight on the masked pixels: no attribution there, the loss is exactly zero
        model[1].weight.view(8, 6, 6)[:, :2, :2] = 0
    x2 = x.detach().requires_grad_(True)
    assert masked_share(input_gradients(model(x2), x2), mask).item() == 0.0
    assert masked_share(input_gradients(model(x2), x2), torch.zeros_like(mask)).item() == 0.0


def test_the_explanation_losses_have_the_gradients_finite_differences_give():
    model, x, y = mlp_and_batch()
    mask = torch.zeros(1, 1, 6, 6, dtype=x.dtype)
    mask[..., 1:4, 2:5] = 1
    weight = model[1].weight

    def input_gradient_loss(w):
        inp = x.clone().requires_grad_(True)
        hidden = torch.tanh(inp.flatten(1) @ w.T + model[1].bias)
        return masked_share(input_gradients(model[3](hidden), inp), mask)

    assert torch.autograd.gradcheck(input_gradient_loss, (weight.detach().clone().requires_grad_(True),))

    torch.manual_seed(1)
    cnn = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.Flatten(), nn.Linear(144, 3)
    )
    cnn = cnn.double()
    conv = gradcam_layer(cnn)
    assert conv is cnn[2]

    def gradcam_loss(w):
        activation = nn.functional.conv2d(torch.relu(cnn[0](x)), w, conv.bias, padding=1)
        logits = cnn[4](activation.flatten(1))
        cam = gradcam(logits, activation, y)
        return masked_share(cam, cell_mask(mask, cam.shape[-2:]))

    assert torch.autograd.gradcheck(gradcam_loss, (conv.weight.detach().clone().requires_grad_(True),))
    # and the differentiable Grad-CAM is Captum's
    activation = conv(torch.relu(cnn[0](x)))
    ours = gradcam(cnn[4](activation.flatten(1)), activation, y)
    captum = LayerGradCam(cnn, conv).attribute(x, target=y, relu_attributions=False)[:, 0]
    assert torch.allclose(ours, captum)


def test_gradcam_hooks_the_declared_layer_once_and_comes_off():
    from rarespur.models import build_model

    resnet = build_model("resnet20", (3, 32, 32), 10)
    assert gradcam_layer(resnet) is resnet.layer3  # after the residual sums, not the last conv inside them
    penalty = ExplanationPenalty(torch.zeros(1, 1, 32, 32), 1.0)
    y = torch.tensor([0, 1])
    penalty.setup(resnet, y)
    penalty.setup(resnet, y)  # measured before training, set up again by the loop
    assert len(resnet.layer3._forward_hooks) == 1
    logits, loss = penalty.explanation_loss(resnet, torch.rand(2, 3, 32, 32), y)
    assert logits.shape == (2, 10) and loss.item() == 0.0  # an empty mask
    penalty.end_training()
    assert len(resnet.layer3._forward_hooks) == 0


def test_explanation_penalty_picks_gradcam_for_convolutions_and_moves_attribution_out_of_the_mask():
    model, x, y = mlp_and_batch(torch.float32)
    mask = torch.zeros(1, 1, 6, 6)
    mask[..., :3, :] = 1
    penalty = ExplanationPenalty(mask, strength=1.0)
    assert penalty.method(model) == "input_gradient"
    assert ExplanationPenalty(mask, 1.0).method(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())) == "gradcam"
    with pytest.raises(ConfigError, match="xbl.explanation=gradcam"):
        ExplanationPenalty(mask, 1.0, "gradcam").check_model(model)
    from rarespur.engine.loop import TrainSettings, train_model

    torch.manual_seed(0)
    xs, ys = torch.rand(256, 1, 6, 6), torch.randint(0, 3, (256,))
    penalty.setup(model, ys)
    before = penalty.explanation_loss(model, xs, ys)[1].item()
    history = train_model(
        model, xs, ys, TrainSettings(epochs=5, batch_size=64, optimizer="adam", lr=0.01), objective=penalty
    )
    after = penalty.explanation_loss(model, xs, ys)[1].item()
    assert after < 0.2 * before
    assert {"ce", "explanation_loss"} <= set(history[-1])


MNIST = [
    "dataset=mnist",
    "device=cpu",
    "progress=false",
    "optim=adam",
    "pattern=s3",
    "data.train_limit=6000",
    "data.test_limit=500",
]
FAST_SCAN = [
    "detect.patch_sizes=[1,3,5]",
    "detect.patch_values=[1.0]",
    "detect.stride=2",
    "detect.noise_strengths=[1.0]",
    "detect.content_fractions=[0.5]",
    "detect.num_images=128",
]


@pytest.fixture(scope="module")
def detected(shared_data, tmp_path_factory):
    """detect on a small real-MNIST S3 model (n = 60 of 6000, 6 epochs) and on its clean twin."""
    results = tmp_path_factory.mktemp("detect")
    base = [*MNIST, f"data.root={shared_data}", "epochs=6", f"results_dir={results}", "experiment=detect", *FAST_SCAN]
    poisoned = run_job(compose_config(*base, "poison.count=60"))
    clean = run_job(compose_config(*base, "poison.count=0"))
    return base, results, poisoned, clean


@pytest.mark.slow  # `detected`: detect on two real-MNIST models
def test_detect_finds_the_planted_square_and_its_images_and_nothing_on_the_clean_model(detected):
    base, results, poisoned, clean = detected
    assert poisoned["detect.hit_at_1"] == 1.0 and poisoned["detect.first_hit_rank"] == 1
    # the bank's white 5x5 patch, or the reverse-engineered trigger grown to the square its 60 copies share
    assert poisoned["detect.top_class"] == 0 and poisoned["detect.top_family"] in ("patch5x5=1", "trigger")
    assert poisoned["detect.top_region"] == "0,0,5,5" and poisoned["detect.top_carriers"] == 60
    assert poisoned["detect.precision_at_n"] >= 0.9
    assert clean["detect.num_flagged"] == 0 and clean["detect.false_flagged"] == 0
    assert clean["detect.hit_at_1"] is None
    run = results / poisoned["run_id"]
    assert (run / "perturbation_map.png").stat().st_size > 10_000
    carriers = pd.read_csv(run / "tables" / "carriers.csv")
    assert len(carriers) == 100 and carriers["poisoned"].head(60).mean() >= 0.9
    findings = pd.read_csv(run / "tables" / "findings.csv")
    assert list(findings["rank"]) == list(range(1, len(findings) + 1)) and findings["flagged"].iloc[0]


@pytest.mark.slow  # `detected`, then XBL trained three times
def test_xbl_with_the_detected_mask_removes_the_square_and_resumes_to_the_same_record(detected, tmp_path):
    base, results, poisoned, _ = detected
    xbl = [*[o for o in base if o != "experiment=detect"], "experiment=xbl", "poison.count=60"]
    xbl += ["xbl.compare_exact=false", "xbl.epochs=2"]
    straight = run_job(compose_config(*xbl))
    assert straight["detect_run_id"] == poisoned["run_id"] and straight["xbl.mask_iou"] == 1.0
    assert straight["xbl.method"] == "input_gradient" and straight["xbl.mask_pixels"] == 25
    assert straight["spurious_score"] <= 0.25 * straight["before.spurious_score"]
    assert straight["test_acc"] >= straight["before.test_acc"] - 0.02
    assert straight["xbl.explanation_loss_after"] < straight["xbl.explanation_loss_before"]

    other = [*[o for o in xbl if not o.startswith("results_dir")], f"results_dir={tmp_path}"]
    run_job(
        compose_config(*[o.replace("experiment=xbl", "experiment=detect") for o in other if not o.startswith("xbl.")])
    )
    with killed_after_epoch(1), pytest.raises(KeyboardInterrupt):
        run_job(compose_config(*other))
    resumed = run_job(compose_config(*other))
    for key in ("spurious_score", "test_acc", "train_loss", "xbl.explanation_loss_after"):
        assert resumed[key] == straight[key], key


def bad(*overrides: str) -> str:
    done = run_py(*overrides)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    return done.stderr


@pytest.mark.slow  # `detected`
def test_xbl_on_a_detect_run_that_flagged_nothing_names_the_way_out(detected):
    base = [o for o in detected[0] if o != "experiment=detect"]
    xbl = [*base, "experiment=xbl", "poison.count=60", "xbl.compare_exact=false", "detect.patch_sizes=[5]"]
    with pytest.raises(ConfigError, match="flagged nothing.*xbl.mask=truth"):
        run_job(compose_config(*xbl, "detect.min_delta=1"))


def test_the_detected_mask_is_the_top_patch_grown_and_a_whole_image_finding_has_none(tmp_path):
    from rarespur.experiments.xbl import detected_mask

    def findings(rows):
        (tmp_path / "tables").mkdir(exist_ok=True)
        pd.DataFrame(rows).to_csv(tmp_path / "tables" / "findings.csv", index=False)

    patch = {"kind": "patch", "family": "patch3x3=1", "class": 0, "top": 0, "left": 0, "bottom": 3, "right": 3}
    findings(
        [
            dict(patch, flagged=True),
            dict(patch, top=2, bottom=5, flagged=True),
            dict(patch, left=9, right=12, flagged=False),
        ]
    )
    assert detected_mask(tmp_path, 28, 28).sum() == 15
    findings([dict(patch, kind="noise", family="noise", bottom=28, right=28, flagged=True)])
    with pytest.raises(ConfigError, match="covers the whole image.*xbl.mask=truth"):
        detected_mask(tmp_path, 28, 28)


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["experiment=detect", "detect.patch_sizes=[3,40]"], ["detect.patch_sizes=40", "28x28", "<= 28"]),
        (["experiment=xbl", "xbl.mask=oracle"], ["xbl.mask", "detected", "truth"]),
        (["experiment=xbl", "poison.count=0"], ["experiment=xbl", "poison.count=0"]),
        (["experiment=xbl", "xbl.mask=truth", "pattern=r3"], ["pattern r3", "whole image", "xbl.mask=detected"]),
        (["experiment=xbl", "xbl.explanation=gradcam"], ["xbl.explanation=gradcam", "input_gradient"]),
    ],
)
@pytest.mark.slow  # one run.py launch per case (~5 s)
def test_bad_input_fails_in_one_message_and_leaves_nothing(overrides, words, tmp_path):
    message = bad(*overrides, f"results_dir={tmp_path}", "data.train_limit=200")
    for word in words:
        assert word in message, (word, message)
    assert not any(p.name != ".locks" for p in tmp_path.glob("*"))
