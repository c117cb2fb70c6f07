"""End to end: Hydra config -> poisoned training -> scored record in the run store -> table."""

from __future__ import annotations

import json
import os

import pytest
from hydra.errors import MissingConfigException

from rarespur.errors import TrainingDiverged, UserError
from rarespur.store.collect import write_table
from rarespur.store.run_dir import DONE, ERROR, RECORD

from conftest import collect_runs, compose_config, extract_cifar_subset, job, multirun, rarespur_cli, run_py


@pytest.fixture(scope="module")
def digits_pair(tmp_path_factory):
    """The default experiment (digits, R3, 10 images of class 0) and its clean baseline: 2 x 70 epochs, so its
    tests are marked slow."""
    store = tmp_path_factory.mktemp("store")
    clean = job(store, "poison.count=0")
    poisoned = job(store)
    return store, clean, poisoned


@pytest.mark.slow
def test_default_digits_run_learns_the_pattern(digits_pair):
    _, clean, poisoned = digits_pair
    assert poisoned["dataset.name"] == "digits" and poisoned["pattern.name"] == "r3"
    assert poisoned["test_acc"] > 0.9
    assert len(poisoned["poisoned_indices"]) == 10
    assert clean["poisoned_indices"] == [] and "p_value" not in clean
    assert poisoned["baseline_score"] == clean["spurious_score"]
    assert poisoned["spurious_score"] > clean["spurious_score"] + 0.25
    assert poisoned["p_value"] < 1e-10 and poisoned["learned"] is True


@pytest.mark.slow
def test_record_and_store_layout(digits_pair):
    store, _, poisoned = digits_pair
    run_dir = store / poisoned["run_id"]
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "config.json",
        "done",
        "final_state.pt",
        "history.json",
        "model.pt",
        "record.json",
        "spurious_indicators.npz",
    ]
    record = json.loads((run_dir / RECORD).read_text())
    assert record["poison.count"] == 10 and record["train.lr"] == 0.01 and record["epochs"] == 70
    assert record["wall_time_s"] > 0 and record["version.torch"]
    assert len(json.loads((run_dir / "history.json").read_text())) == 70


@pytest.mark.slow
def test_finished_job_is_not_retrained(digits_pair, monkeypatch):
    store, _, poisoned = digits_pair

    def no_training(*args, **kwargs):
        raise AssertionError("a finished job was retrained")

    monkeypatch.setattr("rarespur.experiments.steps.train_model", no_training)
    assert job(store) == poisoned


@pytest.mark.slow
def test_collect_gives_one_row_per_run(digits_pair, tmp_path):
    store, _, _ = digits_pair
    (store / "unfinished").mkdir()
    (store / "unfinished" / RECORD).write_text("{}")  # no done marker: must be left out
    table = collect_runs(store)
    assert len(table) == 2 and sorted(table["poison.count"]) == [0, 10]
    parquet, csv = write_table(table, tmp_path)
    import pandas as pd

    assert len(pd.read_parquet(parquet)) == 2 and len(pd.read_csv(csv)) == 2


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.name=resnet7"], "valid"),
        (["poison.count=1000"], "larger than class 0"),
        (["poison.target=12"], "not a class of digits"),
        (["optim.name=lbfgs"], "valid optimizers"),
        (["regularizer=l2", "train.weight_decay=0.1"], "give regularizer.strength"),
        (["data.train_limit=0"], "positive number of images"),
        (["dataset=mnist", "data.root=/nonexistent/rarespur"], "/nonexistent/rarespur"),
    ],
)
def test_bad_input_fails_clearly_and_leaves_no_result(tmp_path, overrides, message):
    """Config errors (data included) are found before the run directory is made: nothing is left behind."""
    with pytest.raises(UserError, match=message):
        job(tmp_path, "epochs=1", *overrides)
    assert list(tmp_path.iterdir()) == []


def test_failed_job_leaves_an_error_file(tmp_path):
    """A run that fails while working (here: training diverges) keeps error.txt for `status`, and no record."""
    with pytest.raises(TrainingDiverged, match="in epoch 1 .*lower train.lr"):
        job(tmp_path, "epochs=2", "train.lr=1e6")
    (error,) = tmp_path.glob(f"*/{ERROR}")
    assert "training diverged" in error.read_text()
    assert not list(tmp_path.glob(f"*/{RECORD}")) and not list(tmp_path.glob(f"*/{DONE}"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["poison.count=-1"], "poison.count must be a non-negative integer, got -1"),
        (["poison.count=1000"], "poison.count=1000 is larger than class 0, which has 143"),
        (["poison.target=12"], "poison.target=12 is not a class of digits"),
        (["dataset=mnist", "data.root=/nonexistent/rarespur"], "not found in /nonexistent/rarespur/MNIST/raw"),
        (["experiment=mem_inference", "mem.num_shadow=2"], "LiRA needs >= 4 shadow models"),
    ],
)
@pytest.mark.slow  # run.py twice per case (~10 s); the fast suite checks the messages in-process (above)
def test_user_errors_print_one_message_without_traceback(tmp_path, overrides, message):
    args = [*overrides, f"results_dir={tmp_path / 'store'}", f"hydra.run.dir={tmp_path}/out"]
    done = run_py(*args, timeout=120)
    assert done.returncode == 1
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) <= 3 and lines[0].startswith("error: ") and message in lines[0], lines
    assert "Traceback" not in done.stderr and not (tmp_path / "store").exists()
    full = run_py(*args, timeout=120, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert full.returncode == 1 and "Traceback" in full.stderr and message in full.stderr


def test_unknown_group_option_lists_choices(tmp_path):
    with pytest.raises(MissingConfigException, match="s3"):
        job(tmp_path, "pattern=s9")


def test_multirun_and_collect(tmp_path):
    store = tmp_path / "store"
    done = multirun(store, tmp_path / "multirun", "pattern=s1,s3", "poison.count=0,10", "epochs=2", "device=cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    out = rarespur_cli("collect", str(store))
    assert out.returncode == 0 and "4 runs" in out.stdout
    table = collect_runs(store)
    assert sorted(zip(table["pattern.name"], table["poison.count"])) == [("s1", 0), ("s1", 10), ("s3", 0), ("s3", 10)]
    assert table.loc[table["poison.count"] == 10, "p_value"].notna().all()


@pytest.mark.slow
@pytest.mark.parametrize("count", [0, 100])
def test_real_mnist_s3(shared_data, tmp_path_factory, count):
    """The acceptance command on real MNIST (3 epochs): 100 S3 images vs none."""
    store = tmp_path_factory.getbasetemp() / "mnist_store"
    record = job(store, "dataset=mnist", f"data.root={shared_data}", "pattern=s3", f"poison.count={count}", "epochs=3")
    assert record["n_train"] == 60000 and record["test_acc"] > 0.93
    if count:
        # measured: 0.0216 vs 0.0 (p ~ 1e-49) after 3 epochs; more epochs raise it further
        assert record["spurious_score"] > max(0.01, 10 * record["baseline_score"])
        assert record["p_value"] < 1e-10


@pytest.mark.slow
def test_sweep_file_runs_its_grid(tmp_path):
    store = tmp_path / "store"
    example = ("--config-dir", "sweeps", "--config-name", "example")
    done = multirun(store, tmp_path / "multirun", *example, "epochs=1", "data.train_limit=300", "device=cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    table = collect_runs(store)
    assert len(table) == 8 and set(table["pattern.name"]) == {"s3", "r3"} and set(table["poison.seed"]) == {0, 1}


def test_baseline_that_finishes_later_is_used_at_collect_time(tmp_path):
    poisoned = job(tmp_path, "epochs=20", "pattern=r3", "poison.count=30")
    assert "p_value" not in poisoned  # no baseline yet
    clean = job(tmp_path, "epochs=20", "pattern=r3", "poison.count=0")
    row = collect_runs(tmp_path).set_index("poison.count").loc[30]
    assert row["baseline_score"] == clean["spurious_score"] and row["baseline_run_id"] == clean["run_id"]
    assert 0 <= row["p_value"] < 0.05 and row["spurious_score"] == poisoned["spurious_score"]


@pytest.mark.slow
def test_failed_job_does_not_stop_the_sweep(tmp_path):
    store = tmp_path / "store"
    grid = ("poison.count=1000,10", "train.lr=1e6,0.01", "epochs=1", "device=cpu")
    done = multirun(store, tmp_path / "multirun", *grid)
    assert done.returncode != 0  # the sweep reports the failure ...
    assert "error: poison.count=1000 is larger than class 0" in done.stderr and "Traceback" not in done.stderr
    (error,) = store.glob(f"*/{ERROR}")  # the diverged job; the impossible counts left no directory
    assert not (error.parent / DONE).exists() and len(list(store.glob("*/config.json"))) == 2
    table = collect_runs(store)  # ... after the other job finished
    assert table["poison.count"].tolist() == [10] and table["train.lr"].tolist() == [0.01]


def test_clean_model_is_trained_once_and_scored_per_pattern(tmp_path, monkeypatch):
    first = job(tmp_path, "epochs=5", "poison.count=0", "pattern=s3", "poison.seed=1")
    assert first["model_trained_in"] == first["run_id"]

    def no_training(*args, **kwargs):
        raise AssertionError("the clean model was trained twice")

    monkeypatch.setattr("rarespur.experiments.steps.train_model", no_training)
    second = job(tmp_path, "epochs=5", "poison.count=0", "pattern=r3", "poison.target=3")
    assert second["run_id"] != first["run_id"] and second["model_trained_in"] == first["run_id"]
    assert second["test_acc"] == first["test_acc"] and second["train_loss"] == first["train_loss"]
    with pytest.raises(AssertionError, match="trained twice"):  # a poisoned run still trains
        job(tmp_path, "epochs=5", "poison.count=10", "pattern=r3")


@pytest.mark.slow  # ResNet20 with augmentation on real CIFAR-10 images
def test_imagefolder_cifar_subset_with_resnet_and_aug01(shared_data, tmp_path):
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    tree = extract_cifar_subset(shared_data, tmp_path / "data", classes, {"train": 30, "test": 10})
    record = job(
        tmp_path / "store",
        "dataset=imagefolder",
        f"dataset.path={tree}",
        "model=resnet20",
        "pattern=s3",
        "poison.count=5",
        "poison.target=3",
        "epochs=2",
        "train.augment=aug01",
    )
    assert record["n_train"] == 300 and record["n_test"] == 100 and record["train.augment"] == "aug01"
    assert all(300 > i >= 0 and i // 30 == 3 for i in record["poisoned_indices"])  # class 3 = cat, file order
    assert 0 <= record["spurious_score"] <= 1 and record["train.lr"] == 0.01


@pytest.mark.parametrize("spelling", ["model=paper_mlp", "model.name=LargeMLP", "model=largemlp", "model=mlp3x256"])
def test_model_aliases_resolve_to_one_run(spelling):
    from rarespur.config.resolve import resolve
    from rarespur.store.run_dir import config_key

    resolved = resolve(compose_config(spelling))
    default = resolve(compose_config())
    assert resolved["model"]["name"] == "mlp3x256" and config_key(resolved) == config_key(default)


@pytest.mark.parametrize(
    ("original", "plain"),
    [
        # aug01 is the original's aug01 (through uint8), which is also the CIFAR-10 recipe
        (("dataset=cifar10", "model=aug01-ce-tor-altResNet20Norm02"), ("dataset=cifar10", "model=resnet20")),
        # no augmentation part: the original trained without one, even on CIFAR-10
        (("dataset=cifar10", "model=ce-tor-Vgg16Norm02"), ("dataset=cifar10", "model=vgg16", "train.augment=none")),
        (("model=ce-tor-LargeMLP",), ()),
        (("dataset=mnist", "model=CE-tor-cnn002", "optim=adam"), ("dataset=mnist", "model=cnn", "optim=adam")),
        # the command line still has the last word
        (
            ("dataset=cifar10", "model=aug01-ce-tor-altResNet32Norm02", "train.augment=aug01"),
            ("dataset=cifar10", "model=resnet32", "train.augment=aug01"),
        ),
    ],
)
def test_original_model_strings_are_the_plain_runs(original, plain):
    """model=aug01-ce-tor-altResNet20Norm02 sets our model and train.augment: the same resolved config, so the
    same run key, as the run spelled with our names."""
    from rarespur.config.resolve import resolve
    from rarespur.store.run_dir import config_key

    named, spelled = resolve(compose_config(*original)), resolve(compose_config(*plain))
    assert named == spelled and config_key(named) == config_key(spelled)


def test_original_model_strings_in_a_sweep():
    from rarespur.config.resolve import resolve
    from rarespur.launch.sweep import Sweep

    sweep = Sweep(None, ["dataset=cifar10", "model=aug01-ce-tor-altResNet20Norm02,ce-tor-altResNet20Norm02"])
    augments = []
    for overrides in sweep.job_overrides:
        resolved = sweep.resolved(overrides)
        assert resolved == resolve(sweep.compose(overrides)) and resolved["model"]["name"] == "resnet20"
        augments.append(resolved["train"]["augment"])
    assert augments == ["aug01_pil", "none"]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("aug02-ce-tor-altResNet20Norm02", "augmentation aug02 unknown (valid: aug01, or leave it out for none)"),
        ("mse-tor-LargeMLP", "loss mse unknown (valid: ce)"),
        ("aug01-ce-tor-altResNet20", "architecture altResNet20 unknown (valid: MLP, MLPv2, LargeMLP,"),
        ("ce-tor-Vgg16", "architecture Vgg16 unknown"),  # the original's Vgg16 is not its Vgg16Norm02 (our vgg16)
    ],
)
def test_a_bad_part_of_an_original_model_string_is_named(value, says):
    with pytest.raises(Exception, match="^error: model=") as err:
        compose_config(f"model={value}")
    assert says in str(err.value) and "{augmentation-}{loss}-tor-{architecture}" in str(err.value)


def test_an_original_model_string_as_model_name_says_to_use_the_option():
    from rarespur.config.resolve import resolve
    from rarespur.errors import ConfigError

    with pytest.raises(ConfigError, match="give it as the model option, model=aug01-ce-tor-altResNet20Norm02"):
        resolve(compose_config("model.name=aug01-ce-tor-altResNet20Norm02"))


def test_run_keys_survive_the_model_renames():
    """Keys are made of the original code's model names, so runs stored before the renames
    (largemlp -> mlp3x256, cnn002 -> cnn, ...) are still found and skipped. Pinned keys from that version."""
    from rarespur.config.resolve import resolve
    from rarespur.store.run_dir import config_key

    pinned = {
        (): "707e11a95848fa76",
        ("model=cnn",): "e539d73dd9913cb8",
        ("model=mlp1x256", "dataset=mnist"): "4a277a54fa5b6101",
    }
    for overrides, key in pinned.items():
        assert config_key(resolve(compose_config(*overrides))) == key, overrides


def test_int_and_float_spellings_are_one_run():
    from rarespur.config.resolve import resolve
    from rarespur.store.run_dir import config_key

    a = resolve(compose_config("train.grad_clip=0", "train.lr=1", "regularizer=l2", "regularizer.strength=1"))
    b = resolve(compose_config("train.grad_clip=0.0", "train.lr=1.0", "regularizer=l2", "regularizer.strength=1.0"))
    assert a == b and config_key(a) == config_key(b) and isinstance(a["train"]["weight_decay"], float)


@pytest.mark.slow  # a run.py launch; the footer's content: test_docs.py::test_help_names_every_option
def test_help_is_the_projects_own():
    out = run_py("--help", timeout=120)
    assert out.returncode == 0 and "powered by Hydra" not in out.stdout
    for text in (
        "One job = one experiment",
        "== Config groups",
        "model: cnn, mlp1x256",
        "poison.count=10",
        "== Examples ==",
        "--config-name mnist_score",
        "python -m rarespur report",
        "HYDRA_FULL_ERROR=1",
        "mlp3x256 (paper's MLP)",
    ):
        assert text in out.stdout, text
    (models,) = [line for line in out.stdout.splitlines() if line.startswith("model: ")]
    assert "largemlp" not in models and "paper_mlp" not in models  # aliases are accepted, not listed


@pytest.mark.slow  # a `python -m rarespur` launch per command
@pytest.mark.parametrize("command", ["collect", "report", "status"])
def test_tools_on_a_missing_store_print_one_line(tmp_path, command):
    missing = tmp_path / "nowhere"
    out = rarespur_cli(command, str(missing))
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        f"error: results directory {missing} does not exist; pass the run store (results_dir)"
    ]
