"""parent=debias: every experiment that builds on a trained model, on a model trained with a debiasing method.

The digits dataset (no files needed) and a few epochs: what is tested is which model each run builds on
and how its own models train, not how well SiH debiases (tests/test_debias.py).
"""

from __future__ import annotations

import csv
import json

import pytest

from rarespur.errors import ConfigError
from rarespur.experiments import resolve_job
from rarespur.experiments.steps import parent_config
from rarespur.store.run_dir import HISTORY, RECORD, config_key, read_record

from conftest import compose_config, job

BASE = ("device=cpu", "progress=false", "pattern=s3", "epochs=3")


@pytest.mark.parametrize("experiment", ["detect", "sensitivity"])
def test_the_parent_is_the_debias_run_of_the_same_overrides(experiment):
    built, _ = resolve_job(compose_config(f"experiment={experiment}", "parent=debias", *BASE, "debias=lff"))
    debias, _ = resolve_job(compose_config("experiment=debias", *BASE, "debias=lff"))
    assert config_key(parent_config(built, (experiment,))) == config_key(debias)
    assert built["model"]["name"] == "vae_mlp" and built["optim"]["name"] == "adam"  # the debiasing recipe
    plain, _ = resolve_job(compose_config(f"experiment={experiment}", *BASE))
    assert "debias" not in plain and parent_config(plain, (experiment,))["experiment"]["name"] == "train"


BUILDS_ON_A_MODEL = (
    "detect",
    "group_influence",
    "incremental_retraining",
    "mem_inference",
    "retrain_exact",
    "sensitivity",
    "xbl",
)


@pytest.mark.parametrize("overrides", [("experiment=train", "+debias=sih"), ("parent=debias",)])
def test_a_debiasing_method_with_experiment_train_is_refused_in_one_line(overrides):
    with pytest.raises(ConfigError) as refused:
        resolve_job(compose_config(*overrides))
    message = str(refused.value)
    assert "\n" not in message and "experiment=train cannot build on a debiased model" in message
    assert "experiment=debias" in message and ", ".join(BUILDS_ON_A_MODEL) in message


@pytest.mark.parametrize("experiment", BUILDS_ON_A_MODEL)
def test_every_experiment_on_a_trained_model_takes_a_debiased_parent(experiment):
    built, _ = resolve_job(compose_config(f"experiment={experiment}", "parent=debias", *BASE))
    assert built["debias"]["name"] == "sih" and built["experiment"]["name"] == experiment


@pytest.mark.slow  # SiH trains three times, plus the membership attack's six models: about 40 s
def test_detect_sensitivity_and_mem_inference_build_on_a_sih_model(tmp_path):
    debias = job(tmp_path, "experiment=debias", *BASE)
    assert debias["debias.name"] == "sih" and debias["model.name"] == "vae_mlp"

    detect = job(tmp_path, "experiment=detect", "parent=debias", *BASE)
    sensitivity = job(tmp_path, "experiment=sensitivity", "parent=debias", *BASE)
    for record in (detect, sensitivity):
        assert record["parent_run_id"] == debias["run_id"]  # the SiH run, not a train run: none was trained
        assert record["debias.name"] == "sih" and record["experiment.name"] != "debias"
    assert detect["parent.test_acc"] == debias["test_acc"] and detect["detect.num_scanned"] > 0
    finished = [json.loads(p.read_text()) for p in tmp_path.glob(f"*/{RECORD}")]
    assert sorted(r["experiment.name"] for r in finished) == ["debias", "detect", "sensitivity"]

    # membership inference trains its own models: every one with SiH, validated outside what the attacks count
    mem = job(tmp_path, "experiment=mem_inference", "parent=debias", *BASE, "logger=csv")
    with open(tmp_path / "csv_logs" / mem["run_id"] / "metrics.csv", newline="") as handle:
        logged = {row["metric"] for row in csv.DictReader(handle)}
    models = {name.split("/")[0] for name in logged}
    assert models == {"target", "shadow", "lira0", "lira1", "lira2", "lira3"}
    for model in models:  # SiH's own terms and its validation loss, per model
        assert {f"{model}/loss_s", f"{model}/loss_b", f"{model}/weight_mean", f"{model}/val_loss"} <= logged
    assert mem["debias.name"] == "sih" and 0 <= mem["attack.lira_online.auc"] <= 1


@pytest.mark.slow  # LfF three times, SiH twice, and their continuations: about 40 s
@pytest.mark.parametrize("method", ["lff", "sih"])
def test_deletion_and_xbl_build_on_a_debiased_model(tmp_path, method):
    """Each continues what the debias run trained: its classifier, and (incremental retraining) the method
    itself with its second network, per-sample state and held-out split; the exact retraining trains the
    method from scratch without the poisoned images."""
    # LfF holds out a split too, so the kept images' loss averages move to new positions
    over = (f"debias={method}", "poison.count=20", "debias.val_fraction=0.1")
    debias = job(tmp_path, "experiment=debias", *BASE, *over)
    assert debias["n_val"] > 0

    common = ("parent=debias", *BASE, *over)
    retrained = job(tmp_path, "experiment=incremental_retraining", *common, "deletion.epochs=2")
    exact = read_record(tmp_path / retrained["exact_run_id"])
    assert retrained["parent_run_id"] == debias["run_id"] and exact["experiment.name"] == "retrain_exact"
    assert retrained["n_train_after"] == debias["n_train"] - 20 == exact["n_train"]
    assert exact["debias.name"] == method and exact["n_removed"] == 20
    history = json.loads((tmp_path / retrained["run_id"] / HISTORY).read_text())
    assert "bias_acc" in history[0] if method == "lff" else {"loss_s", "val_loss"} <= set(history[0])
    assert retrained["before.spurious_score"] == debias["spurious_score"]

    influence = job(tmp_path, "experiment=group_influence", *common, "influence.depth=5", "influence.repeats=1")
    assert influence["parent_run_id"] == debias["run_id"] and influence["exact_run_id"] == exact["run_id"]
    assert influence["influence.n_train_used"] == debias["n_train"] and influence["influence.update_norm"] > 0

    xbl = job(tmp_path, "experiment=xbl", *common, "xbl.mask=truth", "xbl.epochs=1")
    assert xbl["parent_run_id"] == debias["run_id"] and xbl["xbl.method"].startswith("input_gradient")
    assert xbl["xbl.explanation_loss_after"] < xbl["xbl.explanation_loss_before"]
