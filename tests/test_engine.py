"""The engine's seams: regularizers as plug-in objectives, DP-SGD, config schemas, and old run stores."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from rarespur.engine.loop import TrainSettings, train_model
from rarespur.errors import ConfigError
from rarespur.experiments import resolve_job
from rarespur.launch.runner import run_job
from rarespur.methods.regularizers import build_objective
from rarespur.methods.regularizers.dp_sgd import DPSGD
from rarespur.store.run_dir import config_key

from conftest import CONF_DIR, REPO_ROOT, collect_runs, compose_config, rarespur_cli, tiny_model, tiny_problem

OLD_STORE = Path(__file__).parent / "fixtures" / "store_a309db1"
DIGITS = ("dataset=digits", "model=mlp1x256", "epochs=1", "data.train_limit=300", "data.test_limit=100")
FAST = ("device=cpu", "progress=false")


# ---------------------------------------------------------------------------
# a store written before the engine change


OLD_JOBS = [
    (*DIGITS, f"poison.count={n}", f"regularizer={reg}") for n in (0, 10) for reg in ("none", "gaussian_noise", "l2")
] + [(*DIGITS, "poison.count=10", "experiment=retrain_exact")]


def test_a_store_of_the_previous_version_is_collected_and_skipped_as_done(tmp_path, caplog):
    store = shutil.copytree(OLD_STORE / "runs", tmp_path / "results")
    table = collect_runs(store)
    assert len(table) == 7
    noise = table[table["regularizer.name"] == "gaussian_noise"]
    assert list(noise["regularizer.strength"]) == [0.1, 0.1]  # stored as regularizer.sigma: one name now
    assert "regularizer.sigma" not in table
    for overrides in OLD_JOBS:
        cfg = compose_config(f"results_dir={store}", *FAST, *overrides)
        stored = json.loads((store / config_key(resolve_job(cfg)[0]) / "record.json").read_text())
        with caplog.at_level("INFO", logger="rarespur.launch.runner"):
            assert run_job(cfg) == stored
        assert "already done, not retrained" in caplog.text
    assert not list(store.glob("*/*.pt"))  # nothing was trained: the fixture keeps no weights


STORE_D453624 = Path(__file__).parent / "fixtures" / "store_d453624"


def test_a_store_written_before_the_role_folders_is_read_skipped_collected_and_reported(tmp_path, caplog):
    """One run of every experiment type, written at d453624 (before every module moved): the same keys,
    nothing recomputed, one table, one report."""
    from rarespur.experiments import EXPERIMENTS
    from rarespur.report import write_report

    store = shutil.copytree(STORE_D453624 / "runs", tmp_path / "results")
    table = collect_runs(store)
    assert len(table) == 14 and set(table["experiment.name"]) == set(EXPERIMENTS)
    for run in sorted(p for p in store.iterdir() if (p / "done").exists()):
        stored = json.loads((run / "record.json").read_text())
        cfg = {**json.loads((run / "config.json").read_text()), "results_dir": str(store)}
        resolved, _ = resolve_job(cfg)
        assert config_key(resolved) == run.name  # the old config keys to the old directory
        with caplog.at_level("INFO", logger="rarespur.launch.runner"):
            assert run_job(cfg) == stored
    assert caplog.text.count("already done, not retrained") == 14
    assert not list(store.glob("*/*.pt"))  # nothing was trained: the fixture keeps no weights
    write_report(store, tmp_path / "report")
    drawn = {p.stem for p in (tmp_path / "report").glob("*.png")}
    assert {"score_vs_n", "deletion", "membership_bars", "pixel_removal", "xbl", "debias_rare"} <= drawn


# ---------------------------------------------------------------------------
# a new objective is one module and one YAML

SMOOTHING_MODULE = '''
import torch.nn.functional as F

from rarespur.engine.objective import Objective, StepOutput


class LabelSmoothing(Objective):
    """Cross-entropy against labels smoothed by `strength`."""

    def __init__(self, strength):
        self.strength = strength
        self.steps = 0

    def step(self, model, x, y, index):
        logits = model(x)
        self.steps += 1
        return StepOutput(F.cross_entropy(logits, y, label_smoothing=self.strength), logits)

    def end_epoch(self):
        steps, self.steps = self.steps, 0
        return {"smoothed_steps": steps}
'''
SMOOTHING_YAML = "_target_: toy_smoothing.LabelSmoothing\nname: label_smoothing\nstrength: 0.2\n"


def test_a_toy_objective_is_one_module_and_one_yaml(tmp_path, monkeypatch):
    """Label smoothing, added from outside the package: the two files below are all it takes."""
    code, conf = tmp_path / "code", tmp_path / "conf"
    (code).mkdir()
    (conf / "regularizer").mkdir(parents=True)
    (code / "toy_smoothing.py").write_text(SMOOTHING_MODULE)
    (conf / "regularizer" / "label_smoothing.yaml").write_text(SMOOTHING_YAML)
    monkeypatch.syspath_prepend(str(code))
    store = tmp_path / "results"
    overrides = (f"results_dir={store}", *FAST, *DIGITS, "epochs=2", "train.lr=0.1")
    smoothed = run_job(compose_config(*overrides, f"hydra.searchpath=[file://{conf}]", "regularizer=label_smoothing"))
    plain = run_job(compose_config(*overrides))
    assert smoothed["regularizer.name"] == "label_smoothing" and smoothed["regularizer.strength"] == 0.2
    assert smoothed["run_id"] != plain["run_id"]
    history = json.loads((store / smoothed["run_id"] / "history.json").read_text())
    assert [row["smoothed_steps"] for row in history] == [3, 3]  # 300 images in batches of 128
    # smoothed targets keep the loss away from 0: above the plain run's loss on the same data
    assert smoothed["train_loss"] > plain["train_loss"]


# ---------------------------------------------------------------------------
# DP-SGD


def test_dp_sgd_without_noise_or_clipping_is_sgd():
    """Opacus's per-sample gradients, unclipped and noiseless, average to the batch gradient."""
    x, y = tiny_problem(side=4, gaussian=True)
    settings = TrainSettings(epochs=3, batch_size=16, lr=0.1, momentum=0.9)
    plain, private = tiny_model(16, 8, dtype=torch.float64), tiny_model(16, 8, dtype=torch.float64)
    train_model(plain, x, y, settings)
    train_model(private, x, y, settings, objective=DPSGD(noise_multiplier=0.0, max_grad_norm=1e9))
    for a, b in zip(plain.parameters(), private.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert not private[1]._forward_hooks  # Opacus's hooks are gone after training


def test_dp_sgd_resumes_exactly_and_spends_its_budget(tmp_path):
    x, y = tiny_problem(side=4, gaussian=True)
    settings = TrainSettings(epochs=4, batch_size=16, lr=0.1, momentum=0.9)
    straight_model, straight = tiny_model(16, 8, dtype=torch.float64), DPSGD(noise_multiplier=1.0, max_grad_norm=0.5)
    rows = train_model(straight_model, x, y, settings, objective=straight)

    def stop_after_2(row: dict) -> None:
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    checkpoint = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        train_model(
            tiny_model(16, 8, dtype=torch.float64), x, y, settings, checkpoint, stop_after_2, objective=DPSGD(1.0, 0.5)
        )
    resumed_model, resumed = tiny_model(16, 8, dtype=torch.float64), DPSGD(1.0, 0.5)
    resumed_rows = train_model(resumed_model, x, y, settings, checkpoint, objective=resumed)
    assert [r["loss"] for r in resumed_rows] == [r["loss"] for r in rows]
    for a, b in zip(straight_model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)  # same noise draws after the resume: the noise generator is checkpointed
    epsilons = [r["dp_epsilon"] for r in rows]
    assert epsilons == sorted(epsilons) and 0 < epsilons[0] < epsilons[-1] < math.inf
    assert resumed.summary() == straight.summary()
    # more noise, less privacy spent for the same training
    quieter = DPSGD(noise_multiplier=4.0, max_grad_norm=0.5)
    train_model(tiny_model(16, 8, dtype=torch.float64), x, y, settings, objective=quieter)
    assert quieter.summary()["dp_epsilon"] < straight.summary()["dp_epsilon"]


def test_dp_sgd_run_records_its_privacy_budget(tmp_path):
    record = run_job(
        compose_config(
            f"results_dir={tmp_path}", *FAST, *DIGITS, "poison.count=10", "regularizer=dp_sgd", "regularizer.delta=1e-4"
        )
    )
    assert record["regularizer.strength"] == record["regularizer.noise_multiplier"] == 1.0
    assert 0 < record["dp_epsilon"] < math.inf and record["dp_delta"] == 1e-4
    history = json.loads((tmp_path / record["run_id"] / "history.json").read_text())
    assert history[-1]["dp_epsilon"] == record["dp_epsilon"]


def test_dp_sgd_settings_fail_before_the_run(tmp_path):
    with pytest.raises(ConfigError, match="set train.grad_clip=0"):
        run_job(compose_config(f"results_dir={tmp_path}", *FAST, *DIGITS, "regularizer=dp_sgd", "train.grad_clip=1"))
    with pytest.raises(ConfigError, match=r"regularizer.max_grad_norm must be > 0 \(a finite number\), got 0.0"):
        run_job(
            compose_config(
                f"results_dir={tmp_path}", *FAST, *DIGITS, "regularizer=dp_sgd", "regularizer.max_grad_norm=0"
            )
        )
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]


def test_the_none_regularizer_is_plain_cross_entropy():
    assert (
        type(build_objective({"_target_": "rarespur.engine.objective.Objective", "name": "none"})).__name__
        == "Objective"
    )
    with pytest.raises(ConfigError, match="cannot be imported"):
        build_objective({"_target_": "rarespur.nowhere.Thing", "name": "x"})


# ---------------------------------------------------------------------------
# schemas: bad values fail when the config is resolved


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=-0.1", r"train.lr must be > 0 \(a finite number\), got -0.1"),
        ("train.lr=nan", r"train.lr must be > 0 \(a finite number\), got nan"),
        ("train.grad_clip=-1", r"train.grad_clip must be >= 0 \(0 = off\), got -1.0"),
        ("eval.eps=-1", r"eval.eps must be >= 0 and <= 1 \(a finite number\), got -1.0"),
        (
            "regularizer=gaussian_noise regularizer.strength=-1",
            r"regularizer.strength must be >= 0 \(a finite number\), got -1.0",
        ),
        ("epochs=0", r"epochs must be a positive integer, got 0"),
        ("experiment=sensitivity sensitivity.levels=1", r"sensitivity.levels must be >= 2 \(an integer\), got 1"),
        ("experiment=group_influence influence.repeats=0", r"influence.repeats must be a positive integer, got 0"),
        (
            "experiment=incremental_retraining deletion.compare_exact=maybe",
            r"deletion.compare_exact must be true or false, got 'maybe'",
        ),
    ],
)
def test_bad_values_fail_in_resolve(override, message):
    with pytest.raises(ConfigError, match=message):
        resolve_job(compose_config(*override.split()))


def test_grad_clip_zero_and_zero_point_zero_are_one_run():
    keys = {config_key(resolve_job(compose_config(f"train.grad_clip={v}"))[0]) for v in ("0", "0.0")}
    assert len(keys) == 1


@pytest.mark.slow  # a `python -m rarespur status` launch
def test_a_bad_experiment_key_fails_in_status(tmp_path):
    status = rarespur_cli("status", str(tmp_path), "experiment=sensitivity", "sensitivity.levels=1")
    assert status.returncode != 0
    assert "sensitivity.levels must be >= 2 (an integer), got 1" in status.stderr + status.stdout
    assert "Traceback" not in status.stderr


# ---------------------------------------------------------------------------
# a new experiment type is one module and one YAML (and one report module for its figures)

TOY_EXPERIMENT = """
from rarespur.experiments.steps import parent_config
from rarespur.experiments.experiment import Experiment
from rarespur.config.schema import Field
from rarespur.store.run_dir import read_record


def requires(cfg):
    return [parent_config(cfg, ("toy",))]


def run(cfg, run_dir, parents):
    return {"toy_scaled_acc": cfg["toy"]["factor"] * read_record(parents[0])["test_acc"]}


EXPERIMENT = Experiment(
    run, requires=requires, fields={"toy.factor": Field(float, low=0)}, summary_keys=("toy_scaled_acc",)
)
"""
TOY_EXPERIMENT_YAML = (
    "# @package _global_\nexperiment:\n  name: toy_echo\n  _target_: toy_echo.EXPERIMENT\ntoy:\n  factor: 2\n"
)
TOY_REPORT = """
import pandas as pd

from rarespur.report.sections import Section


def toy_table(data):
    runs = data.experiment("toy_echo")
    return runs[["run_id", "toy_scaled_acc"]] if not runs.empty else pd.DataFrame()


SECTION = Section(order=99, tables={"toy_echo": toy_table})
"""


def test_a_toy_experiment_is_one_module_and_one_yaml(tmp_path, monkeypatch, capsys):
    """An experiment that builds on the train run, added from outside the package: its module, its YAML (which
    names the module's EXPERIMENT), and a report module for its table are all it takes. The facts the launcher,
    the packer and the summary need come from its Experiment object; no file of the package is edited."""
    import rarespur.report as report
    from rarespur.launch.pack_plan import why_not_packed
    from rarespur.report.sections import discover

    code, conf = tmp_path / "code", tmp_path / "conf" / "experiment"
    (code / "report").mkdir(parents=True)
    conf.mkdir(parents=True)
    (code / "toy_echo.py").write_text(TOY_EXPERIMENT)
    (code / "report" / "toy_echo.py").write_text(TOY_REPORT)
    (conf / "toy_echo.yaml").write_text(TOY_EXPERIMENT_YAML)
    monkeypatch.syspath_prepend(str(code))

    store = tmp_path / "results"
    overrides = (f"results_dir={store}", *FAST, *DIGITS, f"hydra.searchpath=[file://{tmp_path / 'conf'}]")
    toy_cfg = compose_config(*overrides, "experiment=toy_echo", "toy.factor=3")
    toy = run_job(toy_cfg)
    assert f"(toy_echo): toy_scaled_acc={toy['toy_scaled_acc']:.4g}" in capsys.readouterr().out
    parent = run_job(compose_config(*overrides))  # trained first, as the toy's parent: now stored
    assert toy["toy_scaled_acc"] == pytest.approx(3 * parent["test_acc"])
    assert why_not_packed(resolve_job(toy_cfg)[0]) == "experiment=toy_echo is not packed (packed: train)"
    plain = resolve_job(compose_config("experiment=train"))[0]
    assert config_key(plain) == config_key({**plain, "experiment": {"name": "train", "_target_": "x.EXPERIMENT"}})
    assert toy["toy.factor"] == 3.0 and isinstance(toy["toy.factor"], float)  # its schema cast the value
    with pytest.raises(ConfigError, match="toy.factor must be >= 0"):
        resolve_job(compose_config(*overrides, "experiment=toy_echo", "toy.factor=-1"))

    monkeypatch.setattr(report, "__path__", [*report.__path__, str(code / "report")])
    sections = discover(report)
    assert [s.order for s in sections][-1] == 99 and "toy_echo" in sections[-1].tables
    data = report.load(store)
    assert list(sections[-1].tables["toy_echo"](data)["toy_scaled_acc"]) == [toy["toy_scaled_acc"]]


def test_every_experiment_has_its_yaml_and_every_yaml_its_experiment():
    import yaml

    from rarespur.experiments import EXPERIMENTS

    names = {
        p.stem: yaml.safe_load(p.read_text())["experiment"]["name"] for p in (CONF_DIR / "experiment").glob("*.yaml")
    }
    assert all(stem == name for stem, name in names.items())
    modules = {p.stem for p in (REPO_ROOT / "rarespur" / "experiments").glob("*.py")}
    assert set(names) == set(EXPERIMENTS) == modules - {"__init__", "experiment", "steps", "deletion_steps"}


def test_dp_sgd_strength_is_its_noise_multiplier_and_its_keys_are_typed(tmp_path):
    with pytest.raises(ConfigError, match="regularizer.strength=2.0 but regularizer.noise_multiplier=1.0"):
        run_job(
            compose_config(f"results_dir={tmp_path}", *FAST, *DIGITS, "regularizer=dp_sgd", "regularizer.strength=2")
        )
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    keys = {
        config_key(resolve_job(compose_config("regularizer=dp_sgd", f"regularizer.noise_multiplier={v}"))[0])
        for v in ("2", "2.0")
    }
    assert len(keys) == 1
    with pytest.raises(ConfigError, match=r"regularizer.delta must be a probability in \(0, 1\), got 2.0"):
        resolve_job(compose_config("regularizer=dp_sgd", "regularizer.delta=2"))


def test_dp_sgd_refuses_a_batch_norm_model_before_the_run(tmp_path):
    with pytest.raises(ConfigError, match="needs per-sample gradients, which a CifarResNet cannot give .*BatchNorm"):
        run_job(compose_config(f"results_dir={tmp_path}", *FAST, *DIGITS[:1], "model=resnet20", "regularizer=dp_sgd"))
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]


def test_the_plateau_schedule_waits_as_sih_does_for_its_early_stopping_patience():
    from rarespur.engine.loop import make_scheduler, plateau_patience

    assert [plateau_patience(p) for p in (0, 2, 20)] == [0, 0, 9]  # the authors' int(patience / 2) - 1
    for early_stopping, decays_at in ((2, 2), (20, 11)):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = make_scheduler(optimizer, 100, "plateau", "val_loss", plateau_patience(early_stopping))
        rates = []
        for _ in range(12):
            scheduler.step(1.0)  # a validation loss that never improves after the first epoch
            rates.append(optimizer.param_groups[0]["lr"])
        assert rates.index(0.1) + 1 == decays_at
