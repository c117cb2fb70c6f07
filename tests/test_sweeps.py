"""The paper's grids in sweeps/: their size, their content, their keys, and their smoke versions running."""

from __future__ import annotations

import random
import re
import shutil
import zipfile
from pathlib import Path

import pytest

from rarespur.config.resolve import resolve
from rarespur.experiments import EXPERIMENTS
from rarespur.experiments.group_influence import settings_of
from rarespur.experiments.steps import train_settings
from rarespur.launch.sweep import SWEEPS_DIR, Sweep, expand, locate
from rarespur.methods.regularizers import build_objective
from rarespur.store.run_dir import RunDir, config_key

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
    "mnist_reg_l2": 840,
    "mnist_reg_noise": 1120,
    "mnist_reg_none": 140,
    "mnist_reg_clip": 420,
    "mnist_reg_dp": 210,
    "cifar10_reg_l2": 400,
    "cifar10_reg_noise": 480,
    "cifar10_reg_none": 80,
    "cifar10_reg_clip": 240,
    "mem_inference": 640,
    "mem_inference_cifar10": 360,
    "incremental_retraining": 1680,
    "incremental_retraining_cifar10": 240,
    "group_influence": 80,
    "group_influence_n100": 40,
    "group_influence_cifar10": 15,
    "debias_cmnist": 120,
    "debias_ccifar10": 120,
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
    """The paper notebook's strengths (docs/science.md#mitigation), clipping as a control, S3 and R3, target 0,
    Adam, n with the clean model; the regularizer really applies, and on CIFAR-10 every run but the l2 ones has
    weight decay 0, as the notebook's reference (score 0.021, accuracy 0.905) had."""
    strengths = {
        "mnist_reg_l2": ("regularizer.strength", {1e-5, 1e-4, 1e-3, 1e-2, 5e-2, 1e-1}),
        "cifar10_reg_l2": ("regularizer.strength", {1e-6, 1e-5, 1e-4, 1e-3, 1e-2}),
        "mnist_reg_noise": ("regularizer.strength", {0.05, 0.1, 0.2, 0.5, 0.75, 1.0, 2.0, 5.0}),
        "cifar10_reg_noise": ("regularizer.strength", {0.1, 0.2, 0.25, 0.5, 1.0, 2.0}),
        "mnist_reg_clip": ("train.grad_clip", {1.0, 0.1, 0.01}),
        "cifar10_reg_clip": ("train.grad_clip", {1.0, 0.1, 0.01}),
    }
    for name, (key, want) in strengths.items():
        sweep = Sweep(name)
        assert {float(v) for v in values(sweep, key)} == want, name
        cfg = sweep.resolved(sweep.job_overrides[-1])
        assert cfg["optim"]["name"] == "adam" and cfg["poison"]["target"] == 0
        settings = build_objective(cfg["regularizer"]).adjust(train_settings(cfg))
        if "l2" in name:
            assert cfg["train"]["weight_decay"] == cfg["regularizer"]["strength"] == settings.weight_decay
        elif "noise" in name:
            assert settings.noise_sigma == cfg["regularizer"]["strength"] > 0 and settings.weight_decay == 0
        else:  # clipping: no regularizer, gradients clipped by value
            assert cfg["regularizer"]["name"] == "none" and settings.grad_clip == cfg["train"]["grad_clip"] > 0
            assert settings.weight_decay == settings.noise_sigma == 0
    for family, n in (("mnist", {0, 1, 3, 5, 10, 20, 100}), ("cifar10", {0, 1, 3, 5, 10, 20, 100, 1000})):
        for kind in ("l2", "noise", "clip", "none"):
            sweep = Sweep(f"{family}_reg_{kind}")
            assert {int(v) for v in values(sweep, "poison.count")} == n
            assert values(sweep, "pattern") == {"s3", "r3"} and values(sweep, "poison.seed") == {
                "0",
                "1",
                "2",
                "3",
                "4",
            }
    reference = Sweep("cifar10_reg_none")
    assert {reference.resolved(job)["train"]["weight_decay"] for job in reference.job_overrides} == {0.0}
    dp = Sweep("mnist_reg_dp")
    assert {float(v) for v in values(dp, "regularizer.noise_multiplier")} == {0.5, 1.0, 2.0}
    assert {int(v) for v in values(dp, "poison.count")} == {0, 1, 3, 5, 10, 20, 100}
    assert values(dp, "pattern") == {"s3", "r3"} and len(values(dp, "poison.seed")) == 5
    cfg = dp.resolved(dp.job_overrides[-1])
    assert cfg["regularizer"]["strength"] == cfg["regularizer"]["noise_multiplier"] == 2.0
    assert build_objective(cfg["regularizer"]).summary()["dp_delta"] == 1e-5
    # The MNIST references and clipping share their runs with the score grids (same run directories)...
    shared = ["pattern=s3", "poison.count=5", "poison.seed=2", "dataset=fashion"]
    score = ["model=largemlp", "optim=adam", "poison.target=0"]
    (none,) = Sweep("mnist_reg_none", shared).jobs()
    (plain,) = Sweep("mnist_score", [*shared, *score]).jobs()
    (clip,) = Sweep("mnist_reg_clip", [*shared, "train.grad_clip=0.01"]).jobs()
    (clip_adam,) = Sweep("mnist_clip_adam", [*shared, *score, "train.grad_clip=0.01"]).jobs()
    assert none.run.key == plain.run.key and clip.run.key == clip_adam.run.key
    # ... the CIFAR-10 reference does not: cifar10_score keeps the recipe's weight decay 1e-4.
    cifar = ["pattern=s3", "poison.count=5", "poison.seed=2"]
    (none,) = Sweep("cifar10_reg_none", cifar).jobs()
    (recipe,) = Sweep("cifar10_score", [*cifar, "optim=adam", "train.grad_clip=0.0", "poison.target=0"]).jobs()
    assert none.run.key != recipe.run.key


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
        "cifar10_score": dict(epochs=70, lr={"sgd": 0.1, "adam": 0.01}, wd=1e-4, augment="aug01_pil"),
        "cifar10_arch_vgg": dict(epochs=70, lr={"sgd": 0.01}, wd=1e-4, augment="aug01_pil"),
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


def only_job(name: str, *overrides: str) -> dict:
    """The resolved config of the one job of grid `name` that `overrides` narrow it to."""
    (job,) = Sweep(name, overrides).jobs()
    return job.config


def parent_keys(cfg: dict) -> list[str]:
    """The run keys of the runs a derived job builds on (train, then retrain_exact), as the runner finds them."""
    return [RunDir("results", parent).key for parent in EXPERIMENTS[cfg["experiment"]["name"]].requires(cfg)]


def test_deletion_grids_build_on_the_score_grids():
    """Each deletion job's parent is the score grid's run of the same overrides (found in the store, not trained
    again), and incremental retraining and group influence of one config share one exact retraining."""
    mnist = ["dataset=fashion", "optim=adam", "pattern=r3", "poison.count=20", "poison.target=1", "poison.seed=3"]
    score = only_job("mnist_score", *mnist, "model=largemlp")
    retrained = only_job("incremental_retraining", *mnist)
    influence = only_job("group_influence", *mnist, "influence={}")
    (parent, exact) = parent_keys(retrained)
    assert parent_keys(influence) == [parent, exact] and parent == RunDir("results", score).key
    assert exact == plain_key("experiment=retrain_exact", *mnist)
    cifar = ["optim=adam", "pattern=r3", "poison.count=100", "poison.target=0", "poison.seed=2"]
    cifar_score = RunDir("results", only_job("cifar10_score", *cifar, "train.grad_clip=0.0")).key
    assert parent_keys(only_job("incremental_retraining_cifar10", *cifar))[0] == cifar_score
    assert parent_keys(only_job("group_influence_cifar10", *cifar, "influence={scale:1000}"))[0] == cifar_score
    n100 = ["dataset=mnist", "optim=adam", "pattern=r3", "poison.count=100", "poison.target=0", "poison.seed=4"]
    mnist_score = RunDir("results", only_job("mnist_score", *n100, "model=largemlp")).key
    assert parent_keys(only_job("group_influence_n100", *n100, "influence={}"))[0] == mnist_score
    for name, patterns, n in (
        ("incremental_retraining", {"s1", "s2", "s3", "r1", "r2", "r3"}, set(MNIST_N) - {0}),
        ("incremental_retraining_cifar10", {"s3", "r3"}, set(CIFAR_N) - {0}),
    ):
        sweep = Sweep(name)
        assert values(sweep, "pattern") == patterns and {int(v) for v in values(sweep, "poison.count")} == n
        assert values(sweep, "optim") == {"sgd", "adam"} and len(values(sweep, "poison.seed")) == 5
        cfg = sweep.resolved(sweep.job_overrides[-1])
        assert cfg["deletion"] == {"mode": "paper", "epochs": None, "compare_exact": True} and cfg["epochs"] == 70


def test_group_influence_grids_are_the_papers():
    """The paper's 135 group-influence runs (docs/science.md#paper-grids): the paper preset (Adam parents, the
    original's arithmetic) at the paper's scales and depths, per dataset and n."""
    want = {  # grid -> {(dataset, n, setting): (scale, depth)}: the values LiSSA runs with
        "group_influence": {
            **{("fashion", n, "{}"): (100.0, 2000) for n in (3, 5, 10, 20)},
            **{("fashion", n, "{scale:150}"): (150.0, 2000) for n in (3, 5, 10, 20)},
        },
        "group_influence_n100": {
            ("mnist", 100, "{}"): (25.0, 1000),
            ("fashion", 100, "{}"): (100.0, 1000),
            ("mnist", 100, "{depth:500,scale:150}"): (150.0, 500),
            ("fashion", 100, "{depth:500,scale:150}"): (150.0, 500),
        },
        "group_influence_cifar10": {
            ("cifar10", 100, "{}"): (100.0, 1000),
            ("cifar10", 100, "{depth:200,scale:1000}"): (1000.0, 200),
            ("cifar10", 100, "{scale:1000}"): (1000.0, 1000),
        },
    }
    total = 0
    for name, settings in want.items():
        sweep = Sweep(name)
        seen = {}
        for job in sweep.job_overrides:
            cfg = sweep.resolved(job)
            setting = next(line.split("=", 1)[1] for line in job if line.startswith("influence="))
            used = settings_of(cfg)
            seen[(cfg["dataset"]["name"], cfg["poison"]["count"], setting)] = (used.scale, used.depth)
            assert cfg["optim"]["name"] == "adam" and used.combine == "first_over_r" and used.repeats == 10
            assert cfg["pattern"]["name"] == "r3" and cfg["influence"]["compare_exact"]
        assert seen == settings, name
        total += len(sweep)
    assert total == 135 and values(Sweep("group_influence_cifar10"), "poison.target") == {"0"}


# group_influence run keys from before `influence` became a config group (conf/influence/): stored runs keep them.
INFLUENCE_KEYS = {
    ("experiment=group_influence",): "31de60b338d61308",
    (
        "experiment=group_influence",
        "dataset=fashion",
        "optim=adam",
        "pattern=r3",
        "poison.count=100",
        "poison.target=1",
        "poison.seed=3",
    ): "5ff04d852e762042",
    (
        "experiment=group_influence",
        "dataset=mnist",
        "influence.combine=first_over_r",
        "influence.scale=150",
        "influence.depth=500",
        "poison.count=100",
    ): "4af4db601d5f284a",
    ("experiment=group_influence", "influence.solver=cg", "influence.cg_lambda=2"): "5916685a0c90a680",
    (  # the group_influence run of tests/fixtures/store_d453624, as its README built it
        "dataset=digits",
        "model=mlp1x256",
        "epochs=1",
        "data.train_limit=300",
        "data.test_limit=100",
        "poison.count=10",
        "experiment=group_influence",
        "influence.depth=20",
        "influence.repeats=2",
        "influence.curvature_examples=0",
    ): "99fdf04d59ae1bbf",
}


def test_influence_presets_keep_the_stored_keys():
    """influence=default is the method as before (same run keys); influence=paper is the original's settings with
    Adam parents, the same runs as spelling those settings out, and an explicit optim still wins."""
    for overrides, key in INFLUENCE_KEYS.items():
        assert plain_key(*overrides) == plain_key(*overrides, "influence=default") == key, overrides
    paper = resolve(compose_config("experiment=group_influence", "influence=paper", "dataset=fashion"))
    default = resolve(compose_config("experiment=group_influence"))["influence"]
    assert paper["influence"] == {**default, "scale": None, "combine": "first_over_r"}
    assert paper["optim"]["name"] == "adam"
    spelled = ("experiment=group_influence", "dataset=fashion", "optim=adam", "influence.scale=null")
    assert config_key(paper) == plain_key(*spelled, "influence.combine=first_over_r")
    sgd = resolve(compose_config("experiment=group_influence", "influence=paper", "optim=sgd"))
    assert sgd["optim"]["name"] == "sgd" and sgd["influence"]["combine"] == "first_over_r"


def test_cifar10_membership_grid_trains_as_the_score_grid():
    """ResNet20 with the CIFAR-10 recipe (the very settings of cifar10_score), R3, the paper's n, 10 seeds."""
    sweep = Sweep("mem_inference_cifar10")
    assert {int(v) for v in values(sweep, "poison.count")} == {0, 1, 3, 5, 10, 20, 100, 500, 1000}
    assert values(sweep, "optim") == {"sgd", "adam"} and len(values(sweep, "poison.seed")) == 10
    for optim in ("sgd", "adam"):
        job = [f"optim={optim}", "poison.count=3", "poison.target=1", "poison.seed=7"]
        cfg = only_job("mem_inference_cifar10", *job)
        score = only_job("cifar10_score", *job, "train.grad_clip=0.0", "pattern=r3")
        assert cfg["train"] == score["train"] and cfg["epochs"] == score["epochs"] == 70
        assert cfg["model"] == score["model"] and cfg["pattern"] == score["pattern"]
        assert cfg["experiment"]["name"] == "mem_inference" and cfg["dataset"]["name"] == "cifar10"


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
    if "cifar10" in name:  # the CIFAR-10 smokes read the small image tree
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
