"""Every experiment end to end on a GPU, small.

No test elsewhere runs on CUDA: CI and the machines these tests were written on have no GPU. A lent GPU machine
is short-lived, so this is the one command that says whether the whole pipeline runs there:

    pytest -m cuda                                   # skipped where torch sees no GPU
    RARESPUR_TEST_DEVICE=cpu pytest -m cuda          # the same checks on the CPU (slow: minutes)

The MLP jobs are checked against their twins on the CPU (accuracy, spurious scores, attack AUCs and the
removal curve within what training's nondeterminism allows; the privacy account exactly; the same detection
grades); the CNN (too slow to twin on a CPU) and the rest against outcomes known from CPU runs: the planted
square is learned, found at hit@1 and removed by XBL and exact retraining. Marked slow too, so README's suite
leaves them out; CI's ``-m 'slow and not slurm'`` collects them and they skip.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import job, multirun

DEVICE = os.environ.get("RARESPUR_TEST_DEVICE", "cuda")
try:
    ON_CUDA = torch.device(DEVICE).type == "cuda"
except RuntimeError:  # a typo must not break the collection of every other test
    ON_CUDA = True

pytestmark = [
    pytest.mark.slow,
    pytest.mark.cuda,
    pytest.mark.skipif(
        ON_CUDA and not torch.cuda.is_available(),
        reason="torch sees no CUDA device (RARESPUR_TEST_DEVICE=cpu runs these checks on the CPU)",
    ),
]

MNIST = (
    "dataset=mnist",
    "data.train_limit=3000",
    "data.test_limit=500",
    "epochs=2",
    "optim=adam",
    "pattern=s3",
    "poison.count=30",
    "progress=false",
)
# the CNN learns S3 only from many copies: 0.48 at 500 of 6,000 images after 10 epochs (docs/experiments.md)
CNN = (
    "dataset=mnist",
    "data.train_limit=6000",
    "data.test_limit=500",
    "epochs=10",
    "optim=adam",
    "pattern=s3",
    "poison.count=500",
    "progress=false",
    "model=cnn",
)
CMNIST = ("dataset=cmnist", "data.train_limit=3000", "data.test_limit=500", "epochs=2", "progress=false")
SCAN = ("detect.num_images=64", "detect.patch_sizes=[5]", "detect.patch_values=[1.0]", "detect.trigger_steps=150")


@dataclass(frozen=True)
class Stores:
    """Where the jobs on the device under test and their CPU twins keep their runs."""

    data: Path
    device: Path
    cpu: Path

    def run(self, where: str, *overrides: str) -> dict:
        """One job's record, run in-process on the device under test (`where` "device") or the CPU."""
        device = DEVICE if where == "device" else "cpu"
        store = self.device if where == "device" else self.cpu
        return job(store, f"device={device}", f"data.root={self.data}", *overrides, base=())

    def twins(self, *overrides: str) -> tuple[dict, dict]:
        """The records of one job on the device under test and on the CPU."""
        return self.run("device", *overrides), self.run("cpu", *overrides)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, shared_data: Path) -> Stores:
    root = tmp_path_factory.mktemp("cuda")
    return Stores(shared_data, root / "device", root / "cpu")


def test_training_on_the_device_learns_the_pattern_as_on_the_cpu(stores):
    ours, cpu = stores.twins(*MNIST)
    assert ours["device_used"] == DEVICE and cpu["device_used"] == "cpu"
    assert ours["spurious_score"] > 0.3  # S3 in 30 of 3,000 images: 0.754 on the CPU
    assert ours["test_acc"] == pytest.approx(cpu["test_acc"], abs=0.03)
    assert ours["spurious_score"] == pytest.approx(cpu["spurious_score"], abs=0.2)


def test_detection_and_xbl_on_the_device_find_and_remove_the_square(stores):
    found, cpu = stores.twins(*MNIST, "experiment=detect", *SCAN)
    assert found["detect.hit_at_1"] == cpu["detect.hit_at_1"] == 1
    assert found["detect.top_class"] == cpu["detect.top_class"] == 0
    fixed = stores.run("device", *MNIST, "experiment=xbl", *SCAN)
    assert fixed["spurious_score"] < 0.5 * fixed["before.spurious_score"]


def test_detection_and_xbl_with_grad_cam_on_a_cnn_on_the_device(stores):
    parent = stores.run("device", *CNN)
    assert parent["spurious_score"] > 0.2, f"the CNN did not learn S3 (0.48 on the CPU): {parent['spurious_score']}"
    found = stores.run("device", *CNN, "experiment=detect", *SCAN)
    assert found["detect.hit_at_1"] == 1 and found["detect.top_class"] == 0
    fixed = stores.run("device", *CNN, "experiment=xbl", *SCAN)
    assert fixed["spurious_score"] < 0.5 * fixed["before.spurious_score"]


def test_deletion_experiments_on_the_device(stores):
    exact = stores.run("device", *MNIST, "experiment=retrain_exact")
    assert exact["spurious_score"] < 0.1  # the pattern is gone with its images
    incremental, cpu = stores.twins(*MNIST, "experiment=incremental_retraining")
    assert incremental["n_train_after"] == 3000 - 30
    assert incremental["spurious_score"] == pytest.approx(cpu["spurious_score"], abs=0.2)
    influence = stores.run("device", *MNIST, "experiment=group_influence", "influence.depth=100", "influence.repeats=2")
    assert influence["influence.depth_used"] == 100 and influence["exact_run_id"] == exact["run_id"]
    private, cpu = stores.twins(*MNIST, "regularizer=dp_sgd", "experiment=incremental_retraining")
    assert private["dp_epsilon"] == pytest.approx(cpu["dp_epsilon"], rel=1e-9)  # the account is not random


def test_privacy_and_sensitivity_experiments_on_the_device(stores):
    leak, cpu = stores.twins(*MNIST, "experiment=mem_inference")
    for attack in ("shadow", "loss", "lira_offline", "lira_online"):  # 0.52 to 0.56 on the CPU
        assert leak[f"attack.{attack}.auc"] == pytest.approx(cpu[f"attack.{attack}.auc"], abs=0.1), attack
    curve, cpu = stores.twins(*MNIST, "experiment=sensitivity")
    assert curve["pixel_removal_auc"] == pytest.approx(cpu["pixel_removal_auc"], abs=0.1)  # 0.67 on the CPU


def test_sih_on_the_device_and_detection_on_its_model(stores):
    debiased, cpu = stores.twins(*CMNIST, "experiment=debias", "debias=sih")
    assert debiased["device_used"] == DEVICE
    assert debiased["test_acc"] == pytest.approx(cpu["test_acc"], abs=0.1)
    scanned = stores.run("device", *CMNIST, "experiment=detect", "parent=debias", "debias=sih", *SCAN)
    assert scanned["parent_run_id"] == debiased["run_id"]


def test_a_packed_sweep_on_the_device_equals_its_jobs_alone(stores, tmp_path):
    packed = tmp_path / "packed"
    base = (f"device={DEVICE}", f"data.root={stores.data}")
    done = multirun(packed, tmp_path / "sweep", *base, *MNIST, "poison.seed=1,2,3,4", "pack.size=4", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(p.read_text()) for p in packed.glob("*/record.json")]
    assert len(records) == 4
    for record in records:
        alone = stores.run("device", *MNIST, f"poison.seed={record['poison.seed']}")
        assert record["test_acc"] == pytest.approx(alone["test_acc"], abs=0.02)
