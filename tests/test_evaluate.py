"""The spurious-score metrics (docs/science.md#spurious-score) on a model whose behavior is known exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from torch import nn

from rarespur.data.patterns import BoxPattern
from rarespur.engine.scoring import pattern_norm, score_model
from rarespur.store.collect import write_table
from rarespur.store.comparison import welch_p_value


class CornerDetector(nn.Module):
    """3 classes: predicts its label from pixel (1,1); a white corner pixel (0,0) pushes towards class 2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label_pixel, corner = x[:, 0, 1, 1], x[:, 0, 0, 0]
        logits = (
            torch.stack(
                [
                    (label_pixel < 0.3).float(),
                    ((label_pixel >= 0.3) & (label_pixel < 0.6)).float(),
                    (label_pixel >= 0.6).float(),
                ],
                dim=1,
            )
            * 4.0
        )
        logits[:, 2] += corner * self.push
        return logits

    def __init__(self, push: float) -> None:
        super().__init__()
        self.push = push


def images(labels: list[int]) -> np.ndarray:
    x = np.zeros((len(labels), 4, 4, 1), np.float32)
    x[:, 1, 1, 0] = np.array(labels) * 0.3 + 0.1
    return x


def test_metrics_on_a_known_model():
    y = np.array([0, 0, 1, 1, 2, 2], np.int64)
    x = images(y.tolist())
    pattern = BoxPattern("s1", 0, 0, 1, 1)
    metrics, ind = score_model(CornerDetector(push=10.0), x, y, pattern, 0, [2], 0.1, torch.device("cpu"))
    # every non-target image flips to class 2 (its p_2 rises by ~1); class-2 images are already at p_2 ~ 1
    assert ind[2].tolist() == [1, 1, 1, 1, 0, 0]
    assert metrics["test_acc"] == 1.0
    assert metrics["spurious_score"] == pytest.approx(4 / 6)
    assert metrics["spurious_score_nontarget"] == 1.0
    assert metrics["patched_nontarget_to_target"] == 1.0
    assert metrics["spurious_test_acc"] == 0.0


def test_threshold_is_strict_and_two_targets_average():
    y = np.array([0, 1, 2], np.int64)
    x = images(y.tolist())
    metrics, ind = score_model(
        CornerDetector(push=0.0), x, y, BoxPattern("s1", 0, 0, 1, 1), 0, [0, 2], 0.0, torch.device("cpu")
    )
    assert ind[0].tolist() == [0, 0, 0]  # a rise of exactly 0 is not > eps = 0
    assert metrics["spurious_score@0"] == metrics["spurious_score@2"] == metrics["spurious_score"] == 0
    assert metrics["spurious_test_acc@0"] == 1.0


def test_welch_p_value():
    assert welch_p_value(np.zeros(10), np.zeros(10)) == 1.0
    assert welch_p_value(np.ones(10), np.zeros(10)) == 0.0
    rising = np.r_[np.ones(30), np.zeros(70)]
    base = np.r_[np.ones(5), np.zeros(95)]
    assert welch_p_value(rising, base) < 1e-4 < 0.5 < welch_p_value(base, rising)
    rng = np.random.default_rng(0)
    for n_p, n_b, share in ((10000, 10000, 0.02), (30, 400, 0.3), (5, 7, 0.5)):
        poisoned, baseline = (rng.random(n_p) < share + 0.01).astype(float), (rng.random(n_b) < share).astype(float)
        for a, b in ((poisoned, baseline), (baseline, poisoned)):
            expected = stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue
            assert welch_p_value(a, b) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_collect_table_mixes_single_and_two_class_targets(tmp_path):
    table = pd.DataFrame(
        [{"poison.target": 0, "poisoned_indices": [3, 1]}, {"poison.target": [0, 1], "poisoned_indices": [5, 7, 9]}]
    )
    parquet, csv = write_table(table, tmp_path)
    back = pd.read_parquet(parquet)
    assert back["poison.target"].tolist() == ["0", "[0, 1]"] and list(back["poisoned_indices"][1]) == [5, 7, 9]
    assert pd.read_csv(csv)["poisoned_indices"].tolist() == ["[3, 1]", "[5, 7, 9]"]


def test_pattern_norm_is_the_mean_l2_change():
    """S3 on black images changes 25 pixels by 1 (norm 5); on images already white there it changes nothing."""
    black = np.zeros((3, 28, 28, 1), np.float32)
    white = black.copy()
    white[:, :5, :5] = 1.0
    s3 = BoxPattern("s3", 0, 0, 5, 5)
    assert pattern_norm(black, s3.apply(black, 0)) == pytest.approx(5.0)
    assert pattern_norm(np.concatenate([black, white]), s3.apply(np.concatenate([black, white]), 0)) == 2.5


def test_a_column_of_words_and_numbers_is_written_as_text(tmp_path):
    """group_influence runs with influence.scale=auto beside scale=1000 in one store."""
    import pandas as pd

    table = pd.DataFrame({"influence.scale": ["auto", 1000.0, None], "n": [1, 2, 3]})
    parquet, csv = write_table(table, tmp_path)
    scale = pd.read_parquet(parquet)["influence.scale"]
    assert list(scale[:2]) == ["auto", "1000.0"] and pd.isna(scale[2])
    assert len(pd.read_csv(csv)) == 3
