"""The paper's grids in sweeps/: their size, their content, their keys, and their smoke versions running."""

from __future__ import annotations

import random
import re
import shutil
import zipfile
from pathlib import Path

import pytest

from rarespur.config.resolve import resolve
from rarespur.experiments.steps import train_settings
from rarespur.launch.sweep import SWEEPS_DIR, Sweep, expand, locate
from rarespur.methods.regularizers import build_objective
from rarespur.store.run_dir import config_key

from conftest import collect_runs, compose_config, multirun, require_data

# What is on disk: every sweep file but the README's example states its job count in its header, and every
# full grid has a smoke twin "<grid>_smoke".
SWEEP_FILES = sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml") if p.stem != "example")
SMOKES = [name for name in SWEEP_FILES if name.endswith("_smoke")]
FULL_GRIDS = [name for name in SWEEP_FILES if not name.endswith("_smoke")]
# The paper's grids and their job counts (docs/science.md#paper-grids): the intended sizes, which the files must have.
GRIDS = {
    "mnist_score": 4480,
    "mnist_clip_sgd": 2240,
    "mnist_clip_adam": 6720,
    "mnist_arch": 8400,
    "fashion_arch": 4800,
    "cifar10_score": 1960,
    "cifar10_arch": 420,
    "cifar10_arch_vgg": 140,
    "mnist_reg_l2": 700,
    "mnist_reg_noise": 840,
    "mnist_reg_none": 140,
    "mnist_reg_dp": 210,
    "cifar10_reg_l2": 400,
    "cifar10_reg_noise": 400,
    "cifar10_reg_none": 80,
    "mem_inference": 640,
    "debias_cmnist": 120,
    "debias_rare": 200,
    "detect_xbl": 192,
    "detect_xbl_correct": 216,
}
PATTERNS = ["s1", "s2", "s3", "r1", "r2", "r3", "core"]
MNIST_N = [0, 3, 5, 10, 20, 100, 2000, 5000]
CIFAR_N = [0, 3, 5, 10, 20, 100, 500]
CIFAR_TREE = re.compile(r"cifar10-jpeg/(train|test)/[^/]+/00[01]\d\.jpg")  # as the smoke files' unzip command


def header_count(name: str) -> int:
    """The job count a sweep file's header comment documents ("# 4480 jobs = ...", "# 1 job ...")."""
    text = (SWEEPS_DIR / f"{name}.yaml").read_text()
    (count,) = re.findall(r"^# (\d+) jobs? ", text, flags=re.M)
    return int(count)


def values(sweep: Sweep, key: str) -> set[str]:
    """The values a key takes over the jobs of a sweep, from the job overrides (no composing)."""
    return {line.split("=", 1)[1] for job in sweep.job_overrides for line in job if line.startswith(f"{key}=")}


def plain_key(*overrides: str) -> str:
    """The run-store key of a single `python run.py OVERRIDES` job, without any sweep file."""
    return config_key(resolve(compose_config(*overrides)))


def test_the_papers_grids_are_there_and_every_grid_has_a_smoke_version():
    assert set(GRIDS) <= set(FULL_GRIDS)
    assert set(SMOKES) == {f"{name}_smoke" for name in FULL_GRIDS}


@pytest.mark.parametrize("name", SWEEP_FILES)
def test_job_count_matches_the_header(name):
    assert len(Sweep(name)) == header_count(name)
    if name in GRIDS:
        assert header_count(name) == GRIDS[name]  # the paper's size


def test_grids_cover_the_papers_axes():
    score, arch, fashion = Sweep("mnist_score"), Sweep("mnist_arch"), Sweep("fashion_arch")
    for sweep in (score, arch, fashion):
        assert {int(n) for n in values(sweep, "poison.count")} == set(MNIST_N)
        assert values(sweep, "poison.seed") == {"0", "1", "2", "3", "4"}
    assert values(score, "pattern") == set(PATTERNS) and values(fashion, "pattern") == set(PATTERNS) - {"core"}
    assert values(score, "optim") == {"sgd", "adam"} and values(score, "model") == {"mlp3x256", "cnn"}
    assert values(arch, "model") == {"mlp1x256", "mlp2x256", "mlp3x256", "mlp3x512", "cnn"}
    assert values(arch, "poison.target") == {"0", "1", "[0,1]"}
    assert values(Sweep("mnist_clip_adam"), "train.grad_clip") == {"1.0", "0.1", "0.01"}
    assert values(Sweep("mnist_clip_sgd"), "optim") == {"sgd"}
    cifar = Sweep("cifar10_score")
    assert {int(n) for n in values(cifar, "poison.count")} == set(CIFAR_N)
    assert values(cifar, "train.grad_clip") == {"0.0", "0.1"} and values(cifar, "pattern") == set(PATTERNS)
    assert values(Sweep("cifar10_arch"), "model") == {"resnet20", "resnet32", "resnet110"}
    assert values(Sweep("cifar10_arch_vgg"), "pattern") == {"s3", "r3"}


def test_regularization_grids_follow_the_paper():
    """The paper's strengths (docs/science.md#mitigation), S3 and R3, target 0, Adam, n with the clean model; the
    regularizer really applies."""
    strengths = {
        "mnist_reg_l2": ("regularizer.strength", {1e-5, 1e-4, 1e-3, 1e-2, 1e-1}),
        "cifar10_reg_l2": ("regularizer.strength", {1e-6, 1e-5, 1e-4, 1e-3, 1e-2}),
        "mnist_reg_noise": ("regularizer.strength", {0.05, 0.1, 0.5, 1.0, 2.0, 5.0}),
        "cifar10_reg_noise": ("regularizer.strength", {0.1, 0.25, 0.5, 1.0, 2.0}),
    }
    for name, (key, want) in strengths.items():
        sweep = Sweep(name)
        assert {float(v) for v in values(sweep, key)} == want, name
        cfg = sweep.resolved(sweep.job_overrides[-1])
        assert cfg["optim"]["name"] == "adam" and cfg["poison"]["target"] == 0
        settings = build_objective(cfg["regularizer"]).adjust(train_settings(cfg))
        if "l2" in name:
            assert cfg["train"]["weight_decay"] == cfg["regularizer"]["strength"] == settings.weight_decay
        else:
            assert settings.noise_sigma == cfg["regularizer"]["strength"] > 0
    for family, n in (("mnist", {0, 1, 3, 5, 10, 20, 100}), ("cifar10", {0, 1, 3, 5, 10, 20, 100, 1000})):
        for kind in ("l2", "noise", "none"):
            sweep = Sweep(f"{family}_reg_{kind}")
            assert {int(v) for v in values(sweep, "poison.count")} == n
            assert values(sweep, "pattern") == {"s3", "r3"} and values(sweep, "poison.seed") == {
                "0",
                "1",
                "2",
                "3",
                "4",
            }
    dp = Sweep("mnist_reg_dp")
    assert {float(v) for v in values(dp, "regularizer.noise_multiplier")} == {0.5, 1.0, 2.0}
    assert {int(v) for v in values(dp, "poison.count")} == {0, 1, 3, 5, 10, 20, 100}
    assert values(dp, "pattern") == {"s3", "r3"} and len(values(dp, "poison.seed")) == 5
    cfg = dp.resolved(dp.job_overrides[-1])
    assert cfg["regularizer"]["strength"] == cfg["regularizer"]["noise_multiplier"] == 2.0
    assert build_objective(cfg["regularizer"]).summary()["dp_delta"] == 1e-5
    # The unregularized reference shares its n >= 3 runs with the score grid (same run directories).
    shared = ["pattern=s3", "poison.count=5", "poison.seed=2", "dataset=fashion"]
    (reference,) = Sweep("mnist_reg_none", shared).jobs()
    (score,) = Sweep("mnist_score", [*shared, "model=largemlp", "optim=adam", "poison.target=0"]).jobs()
    assert reference.run.key == score.run.key


# ~2 s per grid: the fast suite checks three grids (train on MNIST and Fashion; CIFAR-10 with augmentation and
# clipping; an experiment with its own config group), -m slow every grid.
COMPOSITION_SAMPLE = {"mnist_score", "cifar10_score", "detect_xbl_correct"}


@pytest.mark.parametrize(
    "name", [name if name in COMPOSITION_SAMPLE else pytest.param(name, marks=pytest.mark.slow) for name in FULL_GRIDS]
)
def test_fast_expansion_equals_hydra_composition(name):
    """A sample of each grid: the cached composition gives the very config Hydra's launcher composes."""
    sweep = Sweep(name)
    jobs = sweep.job_overrides
    sample = [jobs[0], jobs[1], jobs[-1], *random.Random(name).sample(jobs, 4)]
    for job in sample:
        assert sweep.resolved(job) == resolve(sweep.compose(job)), job


def test_fast_expansion_handles_every_kind_of_override():
    """Group choices, original dataset names, lists, additions, deletions and dict merges, in one sweep."""
    sweep = Sweep(
        None,
        [
            "pattern=s1,s3",
            "dataset=mnistv8-3-0-0,digits",
            "poison.target=0,[0,1]",
            "+tag=a,b",
            "~progress",
            "++epochs=2",
            "train={lr:0.5}",
        ],
    )
    assert len(sweep) == 16
    for job in sweep.job_overrides:
        assert sweep.resolved(job) == resolve(sweep.compose(job)), job
    assert sweep.resolved(sweep.job_overrides[-1])["train"]["lr"] == 0.5


def test_recipes_in_the_grids():
    """Sampled jobs train with the paper's settings (docs/science.md#training)."""
    checks = {
        "mnist_score": dict(epochs=70, lr={"sgd": 0.01, "adam": 0.01}, wd=0.0, augment="none"),
        "cifar10_score": dict(epochs=70, lr={"sgd": 0.1, "adam": 0.01}, wd=1e-4, augment="aug01"),
        "cifar10_arch_vgg": dict(epochs=70, lr={"sgd": 0.01}, wd=1e-4, augment="aug01"),
    }
    for name, want in checks.items():
        sweep = Sweep(name)
        for job in random.Random(0).sample(sweep.job_overrides, 6):
            cfg = sweep.resolved(job)
            train = cfg["train"]
            assert cfg["epochs"] == want["epochs"] and train["batch_size"] == 128 and train["model_seed"] == 0
            assert train["lr"] == want["lr"][cfg["optim"]["name"]] and train["weight_decay"] == want["wd"]
            assert train["augment"] == want["augment"]
            assert cfg["optim"].get("momentum", 0.9) == 0.9


def test_sweep_keys_equal_plain_run_keys():
    """A grid job is the same run (same directory) as the single command that trains it, and grids
    that share jobs (mnist_score and mnist_arch) share their directories."""
    score = Sweep(
        "mnist_score",
        [
            "dataset=mnist",
            "model=largemlp",
            "optim=sgd",
            "pattern=s3",
            "poison.count=5",
            "poison.target=1",
            "poison.seed=2",
        ],
    )
    arch = Sweep(
        "mnist_arch",
        ["model=largemlp", "optim=sgd", "pattern=s3", "poison.count=5", "poison.target=1", "poison.seed=2"],
    )
    plain = plain_key("dataset=mnist", "pattern=s3", "poison.count=5", "poison.target=1", "poison.seed=2")
    assert [j.run.key for j in score.jobs()] == [j.run.key for j in arch.jobs()] == [plain]
    two_class = Sweep(
        "mnist_arch",
        ["model=largemlp", "optim=sgd", "pattern=s3", "poison.count=3", "poison.target=[0,1]", "poison.seed=0"],
    )
    assert [j.run.key for j in two_class.jobs()] == [plain_key("dataset=twoclassmnistv8-3-0-1-0")]  # original name
    cifar = Sweep(
        "cifar10_score",
        ["optim=adam", "train.grad_clip=0.0", "pattern=r3", "poison.count=0", "poison.target=0", "poison.seed=0"],
    )
    (job,) = cifar.jobs()
    assert job.run.key == plain_key("dataset=cifar10", "model=resnet20", "optim=adam", "poison.count=0")


def test_command_line_overrides_narrow_or_extend_a_sweep():
    assert len(Sweep("mnist_score", ["model=largemlp"])) == 2240
    assert len(Sweep("mnist_score", ["model=largemlp", "train.model_seed=0,1"])) == 4480
    assert len(Sweep(None, ["pattern=s1,s3", "poison.count=0,10"])) == 4  # a plain run.py -m sweep
    assert locate("mnist_score") == locate(SWEEPS_DIR / "mnist_score.yaml") == (SWEEPS_DIR, "mnist_score")
    with pytest.raises(FileNotFoundError, match="valid names: .*mnist_score"):
        Sweep("mnist_scores")


def test_launcher_choice_does_not_change_the_jobs():
    """status must find the runs of a sweep launched on SLURM or local processes (the launcher is hydra.*)."""
    local = Sweep("cifar10_arch_vgg", ["hydra/launcher=submitit_local"])
    assert [j.run.key for j in local.jobs()] == [j.run.key for j in Sweep("cifar10_arch_vgg").jobs()]


def test_expand_lists_a_shared_run_once(tmp_path):
    jobs = expand(["mnist_score_smoke", "mnist_score_smoke"], ["optim=sgd,adam,sgd"], tmp_path)
    assert len(jobs) == 8 and len({j.run.key for j in jobs}) == 8
    assert all(j.run.path.parent == tmp_path for j in jobs)


def test_clean_runs_come_first_so_poisoned_runs_find_their_baseline():
    """poison.count varies slower than target and seed: every clean run of a pattern precedes its poisoned ones."""
    for name in FULL_GRIDS:
        keys = [line.split("=", 1)[0] for line in Sweep(name).job_overrides[0]]
        if "poison.count" not in keys:  # a grid that plants nothing (debias_cmnist)
            continue
        assert keys.index("poison.count") < keys.index("poison.target") < keys.index("poison.seed"), name


@pytest.mark.slow
def test_full_expansion_of_every_grid():
    """Every job of every grid composes and resolves; distinct jobs get distinct run directories (about 75 s)."""
    keys: dict[str, set[str]] = {}
    for name, count in GRIDS.items():
        jobs = list(Sweep(name).jobs())
        keys[name] = {j.run.key for j in jobs}
        assert len(jobs) == len(keys[name]) == count
    mnist = set().union(
        *(keys[n] for n in ("mnist_score", "mnist_clip_sgd", "mnist_clip_adam", "mnist_arch", "fashion_arch"))
    )
    cifar = keys["cifar10_score"] | keys["cifar10_arch"] | keys["cifar10_arch_vgg"]
    assert (len(mnist), len(cifar)) == (22480, 2380)  # the original's 19,706 and 2,047 + per-pattern clean runs


# ---------------------------------------------------------------------------
# smoke versions: they must really run, and their records land under the expanded keys


@pytest.fixture(scope="module")
def cifar_tree(shared_data, tmp_path_factory) -> Path:
    """20 training and 20 test images per class of the JPEG CIFAR-10, extracted as the smoke files say."""
    archive = require_data(shared_data / "cifar10-jpeg.zip")
    out = tmp_path_factory.mktemp("cifar_tree")
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(out, members=[n for n in zf.namelist() if CIFAR_TREE.fullmatch(n)])
    return out / "cifar10-jpeg"


@pytest.mark.slow  # one run.py -m per smoke file on real data: ~10 s each on 2 cores, ~20 s for ResNet110 and VGG16
@pytest.mark.parametrize("name", SMOKES)
def test_smoke_sweep_runs(name, shared_data, request, tmp_path):
    overrides = [f"data.root={shared_data}", "device=cpu"]
    if name.startswith("cifar10"):
        overrides.append(f"dataset.path={request.getfixturevalue('cifar_tree')}")
    store = tmp_path / "store"
    done = multirun(store, tmp_path / "multirun", "--config-dir", "sweeps", "--config-name", name, *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = {job.run.key: job for job in Sweep(name, overrides).jobs(store)}
    table = collect_runs(store)
    assert len(expected) == header_count(name) and set(expected) <= set(table["run_id"])
    parents = table[~table["run_id"].isin(expected)]  # the runs a derived experiment builds on, run first
    assert set(parents["experiment.name"]) <= {"train", "detect", "retrain_exact"}
    if set(table[table["run_id"].isin(expected)]["experiment.name"]) <= {"train", "debias", "mem_inference"}:
        assert parents.empty  # experiments without parents leave nothing else in the store
    assert (table["epochs"] == 1).all() and (table["device_used"] == "cpu").all()
    scored = table["spurious_score"].notna() if "spurious_score" in table else False
    poisoned = table[(table["poison.count"] > 0) & scored]
    if 0 < len(poisoned) < len(table):  # a smoke with clean and poisoned runs: the clean ones gave the p-values
        assert poisoned["p_value"].notna().all()
    shutil.rmtree(store)  # VGG16 checkpoints are half a gigabyte each
