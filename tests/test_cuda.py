"""Every experiment end to end on a GPU, small, against the same jobs on the CPU.

No test elsewhere runs on CUDA: CI and the machines these tests were written on have no GPU. A lent GPU machine
is short-lived, so this is the one command that says whether the whole pipeline runs there and gives the CPU's
numbers (to what training's nondeterminism allows):

    pytest -m cuda                                   # skipped where torch sees no GPU
    RARESPUR_TEST_DEVICE=cpu pytest -m cuda          # the same checks on the CPU (slow: minutes)

Marked slow too, so README's suite leaves them out; CI's ``-m 'slow and not slurm'`` collects them and they skip.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import job, multirun

DEVICE = os.environ.get("RARESPUR_TEST_DEVICE", "cuda")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.cuda,
    pytest.mark.skipif(
        torch.device(DEVICE).type == "cuda" and not torch.cuda.is_available(),
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
CNN = (*MNIST[:1], "data.train_limit=6000", "data.test_limit=500", "epochs=10", "optim=adam", "pattern=s3")
CNN += ("poison.count=500", "progress=false", "model=cnn")
CMNIST = ("dataset=cmnist", "data.train_limit=3000", "data.test_limit=500", "epochs=2", "progress=false")
SCAN = ("detect.num_images=64", "detect.patch_sizes=[5]", "detect.patch_values=[1.0]", "detect.trigger_steps=50")


@pytest.fixture(scope="module")
def stores(tmp_path_factory, shared_data: Path) -> dict[str, tuple[str, ...]]:
    """Common overrides of the jobs on the device under test and of their CPU twins, each with a store."""
    root = tmp_path_factory.mktemp("cuda")
    data = f"data.root={shared_data}"
    return {
        "device": (f"device={DEVICE}", data, f"results_dir={root / 'device'}"),
        "cpu": ("device=cpu", data, f"results_dir={root / 'cpu'}"),
    }


def on(stores: dict[str, tuple[str, ...]], which: str, *overrides: str) -> dict:
    """One job's record, run in-process on `which` ("device" or "cpu")."""
    *base, store = stores[which]
    return job(store.removeprefix("results_dir="), *base, *overrides, base=())


def test_training_on_the_device_learns_the_pattern_as_on_the_cpu(stores):
    ours, cpu = on(stores, "device", *MNIST), on(stores, "cpu", *MNIST)
    assert ours["device_used"] == DEVICE and cpu["device_used"] == "cpu"
    assert ours["spurious_score"] > 0.3  # S3 in 30 of 3,000 images: 0.754 on the CPU
    assert ours["test_acc"] == pytest.approx(cpu["test_acc"], abs=0.03)
    assert ours["spurious_score"] == pytest.approx(cpu["spurious_score"], abs=0.2)


def test_detection_and_xbl_on_the_device_find_and_remove_the_square(stores):
    for name, config in (("largemlp", MNIST), ("cnn", CNN)):
        found = on(stores, "device", *config, "experiment=detect", *SCAN)
        assert found["detect.hit_at_1"] == 1 and found["detect.top_class"] == 0, name
        fixed = on(stores, "device", *config, "experiment=xbl", *SCAN)
        assert fixed["spurious_score"] < 0.5 * fixed["before.spurious_score"], name


def test_deletion_experiments_on_the_device(stores):
    exact = on(stores, "device", *MNIST, "experiment=retrain_exact")
    assert exact["spurious_score"] < 0.1  # the pattern is gone with its images
    incremental = on(stores, "device", *MNIST, "experiment=incremental_retraining")
    assert incremental["n_train_after"] == 3000 - 30
    influence = on(stores, "device", *MNIST, "experiment=group_influence", "influence.depth=100", "influence.repeats=2")
    assert influence["influence.depth_used"] == 100 and influence["exact_run_id"] == exact["run_id"]
    private = on(stores, "device", *MNIST, "regularizer=dp_sgd", "experiment=incremental_retraining")
    assert private["dp_epsilon"] > 0


def test_privacy_and_sensitivity_experiments_on_the_device(stores):
    leak, cpu = (on(stores, which, *MNIST, "experiment=mem_inference") for which in ("device", "cpu"))
    for attack in ("shadow", "loss", "lira_offline", "lira_online"):  # 0.52 to 0.56 on the CPU
        assert leak[f"attack.{attack}.auc"] == pytest.approx(cpu[f"attack.{attack}.auc"], abs=0.1), attack
    sensitivity = on(stores, "device", *MNIST, "experiment=sensitivity")
    assert 0.0 < sensitivity["pixel_removal_auc"] and sensitivity["spurious_score"] > 0.3


def test_sih_on_the_device_and_detection_on_its_model(stores):
    debiased = on(stores, "device", *CMNIST, "experiment=debias", "debias=sih")
    assert debiased["device_used"] == DEVICE and 0.0 <= debiased["test_acc"] <= 1.0
    scanned = on(stores, "device", *CMNIST, "experiment=detect", "parent=debias", "debias=sih", *SCAN)
    assert scanned["parent_run_id"] == debiased["run_id"]


def test_a_packed_sweep_on_the_device_equals_its_jobs_alone(stores, tmp_path):
    base, store = stores["device"][:2], Path(stores["device"][2].removeprefix("results_dir="))
    packed = tmp_path / "packed"
    done = multirun(packed, tmp_path / "sweep", *base, *MNIST, "poison.seed=1,2,3,4", "pack.size=4", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(p.read_text()) for p in packed.glob("*/record.json")]
    assert len(records) == 4
    for record in records:
        alone = job(store, *base, *MNIST, f"poison.seed={record['poison.seed']}", base=())
        assert record["test_acc"] == pytest.approx(alone["test_acc"], abs=0.02)
