"""parent=debias: detect, sensitivity and membership inference on a model trained with Signal is Harder.

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
from rarespur.store.run_dir import RECORD, config_key

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


@pytest.mark.parametrize(
    "overrides",
    [("experiment=train", "+debias=sih"), ("experiment=group_influence", "parent=debias"), ("parent=debias",)],
)
def test_a_debiasing_method_an_experiment_cannot_use_is_refused_in_one_line(overrides):
    with pytest.raises(ConfigError) as refused:
        resolve_job(compose_config(*overrides))
    message = str(refused.value)
    assert "\n" not in message and "cannot build on a debiased model" in message
    assert "experiment=debias" in message and "detect, mem_inference, sensitivity" in message


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
