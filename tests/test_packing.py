"""Packed sweeps (pack.size): K models trained at once give each model the numbers it gets alone.

Engine level (:func:`rarespur.engine.packed_loop.train_packed`, float64): parameters equal to those of
the same models trained alone to 1e-10, with per-model seeds, poisoned rows, weight decay, input
noise, clipping, SGD and Adam, and batch norm (ResNet20 with aug01_pil). Sweep level (real MNIST,
float32): the records of a packed sweep equal the unpacked ones to 1e-4, land in the same run
directories and mix with unpacked runs in one store; a killed pack resumes exactly; one diverged
model fails alone; the grouping puts only compatible jobs together.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rarespur.config.resolve import resolve
from rarespur.engine.loop import train_model
from rarespur.engine.packed_loop import PackMember, train_packed
from rarespur.engine.settings import TrainSettings
from rarespur.launch.pack_job import PackFailed, run_pack_file
from rarespur.launch.pack_plan import pack_key, plan_packs, read_pack_file, why_not_packed
from rarespur.launch.runner import run_job
from rarespur.launch.sweep import Sweep
from rarespur.models import build_model
from rarespur.store.run_dir import DONE, ERROR, RECORD, TRAIN_STATE, RunDir, training_key

from conftest import collect_runs, compose_config, killed_after_epoch, multirun, rarespur_cli

SCORES = ("test_acc", "spurious_score", "spurious_test_acc", "train_loss", "train_acc")


def _toy(shape: tuple[int, int, int], n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g), g


def _members(x: torch.Tensor, settings: list[TrainSettings], g: torch.Generator) -> list[PackMember]:
    """Member k poisons 3k random images with a white 3x3 corner."""
    members = []
    for k, s in enumerate(settings):
        index = torch.randperm(len(x), generator=g)[: 3 * k]
        rows = x[index].clone()
        rows[:, :, :3, :3] = 1.0
        members.append(PackMember(s, index, rows))
    return members


def _alone(arch: str, x, y, member: PackMember) -> torch.nn.Module:
    images = x.clone()
    images[member.poison_index] = member.poison_x
    torch.manual_seed(0)
    model = build_model(arch, tuple(x.shape[1:]), 10).double()
    train_model(model, images, y, member.settings)
    return model


def _fresh(arch: str, shape, k: int) -> list[torch.nn.Module]:
    models = []
    for _ in range(k):
        torch.manual_seed(0)
        models.append(build_model(arch, shape, 10).double())
    return models


def _max_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa)


@pytest.mark.parametrize("optimizer,at_once", [("sgd", None), ("adam", None), ("adam", 3)])
def test_packed_equals_alone_float64(optimizer, at_once):
    """K = 4: own seeds, own poisoned rows, own weight decay and noise; clip by value; 2 epochs; all 4 at once,
    or 3 then 1 (how a CPU trains a big pack)."""
    x, y, g = _toy((1, 28, 28), 300)
    base = TrainSettings(epochs=2, batch_size=64, optimizer=optimizer, lr=0.01, momentum=0.9, grad_clip=0.5)
    settings = [
        replace(base, seed=0),
        replace(base, seed=1, weight_decay=1e-3),
        replace(base, seed=0, noise_sigma=0.1),
        replace(base, seed=2, weight_decay=1e-4, noise_sigma=0.05),
    ]
    members = _members(x, settings, g)
    models = _fresh("mlp3x256", (1, 28, 28), 4)
    outcomes = train_packed(models, x, y, members, at_once=at_once)
    for k, member in enumerate(members):
        assert outcomes[k].error is None and len(outcomes[k].history) == 2
        assert _max_difference(models[k], _alone("mlp3x256", x, y, member)) < 1e-10
    # packing shares no randomness: models 0 and 2 differ only by the noise they draw, 0 and 1 by everything
    assert _max_difference(models[0], models[2]) > 1e-4 and _max_difference(models[0], models[1]) > 1e-4


def test_packed_batch_norm_and_augmentation_equal_alone():
    """ResNet20: per-model running statistics in train mode, per-model eval; aug01_pil (CIFAR-10's recipe) from
    each model's generator."""
    x, y, g = _toy((3, 32, 32), 48)
    base = TrainSettings(epochs=2, batch_size=16, optimizer="sgd", lr=0.05, momentum=0.9, augment="aug01_pil")
    members = _members(x, [replace(base, seed=0), replace(base, seed=1)], g)
    models = _fresh("resnet20", (3, 32, 32), 2)
    train_packed(models, x, y, members)
    for model, member in zip(models, members):
        alone = _alone("resnet20", x, y, member)
        assert _max_difference(model, alone) < 1e-10  # weights and running statistics
        model.eval(), alone.eval()
        with torch.no_grad():
            assert (model(x[:8]) - alone(x[:8])).abs().max().item() < 1e-10


def test_pack_resumes_models_at_different_epochs(tmp_path):
    """A model checkpointed alone after epoch 1 and a fresh one train in one call, each as if never stopped."""
    x, y, g = _toy((1, 28, 28), 200)
    base = TrainSettings(epochs=3, batch_size=50, optimizer="adam", lr=0.01)
    members = _members(x, [replace(base, seed=3), replace(base, seed=4)], g)
    first = members[0]
    images = x.clone()
    images[first.poison_index] = first.poison_x
    torch.manual_seed(0)
    stopped = build_model("mlp1x256", (1, 28, 28), 10).double()
    checkpoint = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):

        def stop(row):
            raise KeyboardInterrupt

        train_model(stopped, images, y, first.settings, checkpoint=checkpoint, on_epoch=stop)
    members[0].checkpoint = checkpoint
    models = _fresh("mlp1x256", (1, 28, 28), 2)
    outcomes = train_packed(models, x, y, members)
    assert [len(o.history) for o in outcomes] == [3, 3]
    for model, member in zip(models, members):
        assert _max_difference(model, _alone("mlp1x256", x, y, member)) < 1e-10


def test_packed_checkpoint_resumes_alone(tmp_path):
    """A pack's checkpoint is a model's own (SGD momentum, scheduler, generator): train_model resumes it
    after the pack was killed, and ends where the model trained alone from the start ends."""
    x, y, g = _toy((1, 28, 28), 200)
    base = TrainSettings(epochs=3, batch_size=50, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-3)
    members = _members(x, [replace(base, seed=5), replace(base, seed=6)], g)
    for k, member in enumerate(members):
        member.checkpoint = tmp_path / f"state{k}.pt"

    def stop(row):
        raise KeyboardInterrupt

    members[0].on_epoch = stop
    with pytest.raises(KeyboardInterrupt):
        train_packed(_fresh("mlp1x256", (1, 28, 28), 2), x, y, members)
    for member in members:
        images = x.clone()
        images[member.poison_index] = member.poison_x
        torch.manual_seed(0)
        resumed = build_model("mlp1x256", (1, 28, 28), 10).double()
        history = train_model(resumed, images, y, member.settings, checkpoint=member.checkpoint)
        assert [row["epoch"] for row in history] == [1, 2, 3]
        assert _max_difference(resumed, _alone("mlp1x256", x, y, replace(member, checkpoint=None))) < 1e-10


def test_one_diverging_model_fails_alone():
    """float32, as runs train: a weight decay of 1e6 overflows within the first epoch; the others go on."""
    x, y, g = _toy((1, 28, 28), 200)
    x = x.float()
    base = TrainSettings(epochs=2, batch_size=50, optimizer="sgd", lr=0.01, momentum=0.9)
    members = _members(x, [replace(base, seed=0), replace(base, weight_decay=1e6), replace(base, seed=1)], g)
    models = [m.float() for m in _fresh("mlp1x256", (1, 28, 28), 3)]
    outcomes = train_packed(models, x, y, members)
    assert "diverged" in str(outcomes[1].error) and outcomes[1].history == []
    for k in (0, 2):
        assert outcomes[k].error is None and len(outcomes[k].history) == 2
        alone = _alone("mlp1x256", x.double(), y, replace(members[k], poison_x=members[k].poison_x.double()))
        assert _max_difference(models[k], alone) < 1e-5


def test_dropout_masks_are_not_shared_between_models():
    """CNN002 (dropout 0.5): two models with the same seed, data and recipe end up different, because each
    draws its own masks; without dropout they would be identical. (Not the masks a model draws alone, so
    sweeps do not pack dropout models: see test_grouping_keeps_unpackable_jobs_alone.)"""
    x, y, _ = _toy((1, 28, 28), 64)
    settings = TrainSettings(epochs=1, batch_size=32)
    empty = PackMember(settings, torch.zeros(0, dtype=torch.long), torch.zeros(0, 1, 28, 28, dtype=torch.float64))
    models = _fresh("cnn", (1, 28, 28), 2)
    outcomes = train_packed(models, x, y, [empty, replace(empty)])
    assert all(o.error is None for o in outcomes)
    assert _max_difference(models[0], models[1]) > 1e-6


def test_models_of_one_pack_must_share_the_recipe():
    x, y, g = _toy((1, 28, 28), 20)
    base = TrainSettings(epochs=1, batch_size=10)
    members = _members(x, [base, replace(base, lr=0.1)], g)
    with pytest.raises(ValueError, match="share train setting 'lr'"):
        train_packed(_fresh("mlp1x256", (1, 28, 28), 2), x, y, members)


# --- grouping -------------------------------------------------------------------------------------------------


def test_grouping_packs_only_what_may_differ(tmp_path):
    """2 models x 2 optimizers x 2 patterns x 3 counts x 2 seeds = 48 jobs. Each (model, optimizer) group of 12
    trains 9 models (the 4 clean baselines are one model, scored 4 ways): at most 5 per pack, 2 packs (5 + 4)."""
    sweep = Sweep(
        None,
        [
            "model=mlp1x256,mlp3x256",
            "optim=sgd,adam",
            "pattern=s1,s3",
            "poison.count=0,3,10",
            "poison.seed=0,1",
            f"results_dir={tmp_path}",
        ],
    )
    plan = plan_packs(sweep.job_overrides, sweep.resolved_here, 5, tmp_path / "packs")
    assert len(sweep) == 48 and plan.packs == 8 and plan.packed_jobs == 48 and len(plan.launches) == 8
    trainings = []
    for launch in plan.launches:
        (line,) = [item for item in launch if item.startswith("pack.members=")]
        _, members, _ = read_pack_file(line.split("=", 1)[1].strip("'"))
        assert len({(m["model"]["name"], m["optim"]["name"]) for m in members}) == 1
        assert len({RunDir(tmp_path, m).key for m in members}) == len(members)
        trainings.append(len({training_key(m) for m in members}))
    assert sorted(trainings) == [4] * 4 + [5] * 4
    # a relaunch packs only what is not done
    done = RunDir(tmp_path, sweep.resolved_here(sweep.job_overrides[0]))
    done.path.mkdir(parents=True)
    done.file(DONE).write_text(json.dumps({"files": {}}))  # a done marker that vouches for no file: undamaged
    again = plan_packs(sweep.job_overrides, sweep.resolved_here, 5, tmp_path / "packs")
    assert again.done == 1 and again.packed_jobs == 47


# 16 jobs of which only 2 (mlp3x256, no DP-SGD, experiment=train) may pack together
MOSTLY_UNPACKABLE = (
    "model=mlp3x256,cnn",
    "regularizer=none,dp_sgd",
    "experiment=train,mem_inference",
    "poison.count=0,3",
)


def test_grouping_keeps_unpackable_jobs_alone(tmp_path):
    sweep = Sweep(None, [*MOSTLY_UNPACKABLE, f"results_dir={tmp_path}"])
    plan = plan_packs(sweep.job_overrides, sweep.resolved_here, 8, tmp_path / "packs")
    assert plan.packs == 1 and plan.packed_jobs == 2 and len(plan.launches) == 1 + 14
    reasons = " ".join(plan.alone)
    assert "experiment=mem_inference is not packed" in reasons and "regularizer=dp_sgd" in reasons
    assert "wrap_optimizer" in reasons  # why DP-SGD cannot pack: its per-sample clipping optimizer
    assert "model=cnn has dropout" in reasons and plan.alone[next(r for r in plan.alone if "dropout" in r)] == 2


def test_chaining_runs_the_jobs_left_alone_k_to_a_launcher_job(tmp_path):
    """pack.chain=3: 16 jobs, of which 2 pack (mlp3x256, no DP-SGD, train) and 14 cannot: chains of 3, 3, 3, 3, 2,
    in launch order; at pack.size=1 every job is left alone, so every job is chained."""
    sweep = Sweep(None, [*MOSTLY_UNPACKABLE, f"results_dir={tmp_path}"])
    plan = plan_packs(sweep.job_overrides, sweep.resolved_here, 8, tmp_path / "packs", chain=3)
    assert plan.packs == 1 and plan.chains == 5 and plan.chained_jobs == 14 and len(plan.launches) == 6
    chained, kinds = [], []
    for launch in plan.launches:
        (line,) = [item for item in launch if item.startswith("pack.members=")]
        name, members, is_chain = read_pack_file(line.split("=", 1)[1].strip("'"))
        kinds.append((name.split("-")[0], len(members)))
        assert is_chain == (name.split("-")[0] == "chain")
        if is_chain:
            chained += [RunDir(tmp_path, m).key for m in members]
    assert sorted(kinds) == [("chain", 2)] + [("chain", 3)] * 4 + [("pack", 2)]
    in_order = [RunDir(tmp_path, sweep.resolved_here(job)).key for job in sweep.job_overrides]
    assert chained == [key for key in in_order if key in chained] and len(set(chained)) == 14  # in launch order
    assert "14 alone (14 of them in 5 chain(s) of up to 3)" in plan.describe(8, 3)
    assert [[key for _, key in runs] for runs in plan.runs if len(runs) == 3][0] == chained[:3]

    everything = plan_packs(sweep.job_overrides, sweep.resolved_here, 1, tmp_path / "packs", chain=4)
    assert everything.packs == 0 and everything.chains == 4 and [len(r) for r in everything.runs] == [4, 4, 4, 4]
    assert "2 job(s) run alone: pack.size=1 packs nothing" in everything.describe(1, 4)
    unchained = plan_packs(sweep.job_overrides, sweep.resolved_here, 8, tmp_path / "packs")
    assert unchained.chains == 0 and len(unchained.launches) == 1 + 14
    # at pack.size=1 not even the clean baselines that share one model pack: 6 jobs, 3 chains of 2
    baselines = Sweep(None, ["pattern=s1,s3,r3", "poison.count=0,3", f"results_dir={tmp_path}"])
    alone = plan_packs(baselines.job_overrides, baselines.resolved_here, 1, tmp_path / "packs", chain=2)
    assert alone.packs == 0 and alone.chains == 3 and alone.chained_jobs == 6


@pytest.mark.slow  # 2 jobs chained and the same 2 alone
def test_a_chain_runs_each_job_as_alone_and_a_failure_stays_its_own(tmp_path):
    """A chain of 4 jobs in one process: the good ones give the records they give alone; a count larger than
    its class fails with its message, leaves no run directory, and the chain reports it after the others."""
    sweep = Sweep(
        None, ["poison.count=3,5000", "pattern=s1,s3", "epochs=1", "progress=false", f"results_dir={tmp_path}"]
    )
    members = [sweep.resolved_here(job) for job in sweep.job_overrides]
    chain_file = tmp_path / "chain.json"
    chain_file.write_text(json.dumps({"pack": "chain-test", "chained": True, "members": members}))
    with pytest.raises(PackFailed, match=r"2 of the 4 jobs of chain-test failed: .*poison.count=5000 is larger"):
        run_pack_file(chain_file)
    chained = _records(tmp_path)
    assert len(chained) == 2 and not any("packed_with.pack" in r for r in chained.values())
    alone = tmp_path / "alone"
    for job in sweep.job_overrides:
        if "poison.count=3" in job:
            overrides = [item for item in job if not item.startswith("results_dir=")]
            record = run_job(compose_config(*overrides, f"results_dir={alone}"))
            assert {k: record[k] for k in SCORES} == {k: chained[record["run_id"]][k] for k in SCORES}


def test_pack_key_ignores_only_per_model_keys():
    def key(*overrides):
        return pack_key(resolve(compose_config(*overrides)))

    same = key("pattern=s1", "poison.count=3", "poison.seed=1", "train.model_seed=2", "regularizer=l2")
    assert same == key("pattern=r3", "poison.count=0", "poison.target=1", "regularizer=l2", "regularizer.strength=0.1")
    for other in ("optim=adam", "model=mlp1x256", "epochs=3", "train.batch_size=64", "train.grad_clip=0.1"):
        assert key("regularizer=l2", other) != same, other
    assert why_not_packed(resolve(compose_config())) is None


@pytest.mark.slow  # 70 Hydra compositions of mnist_arch (~9 s)
def test_sweep_composes_once_per_kind_of_job(monkeypatch):
    """The start of a big grid: mnist_arch's 8,400 jobs are checked by one composition per choice of model,
    optimizer and pattern (70), not one per job (what keeps Hydra's basic sweeper busy for ten minutes)."""
    sweep = Sweep("mnist_arch")
    composed = []
    real = sweep.compose
    monkeypatch.setattr(sweep, "compose", lambda job: composed.append(job) or real(job))
    sweep.check_composes(sweep.job_overrides)
    assert len(sweep) == 8400 and len(composed) == 5 * 2 * 7


def test_a_member_with_a_bad_config_fails_alone(tmp_path):
    """A count larger than its class fails with its message and leaves no run directory; the others finish."""
    sweep = Sweep(
        None, ["poison.count=3,5000", "pattern=s1,s3", "epochs=1", "progress=false", f"results_dir={tmp_path}"]
    )
    bad = [job for job in sweep.job_overrides if "poison.count=5000" in job]
    members = [sweep.resolved_here(job) for job in sweep.job_overrides]
    pack_file = tmp_path / "pack.json"
    pack_file.write_text(json.dumps({"pack": "pack-test", "members": members}))
    with pytest.raises(PackFailed, match=r"2 of the 4 jobs of pack-test failed: .*poison.count=5000 is larger"):
        run_pack_file(pack_file)
    assert len(list(tmp_path.glob(f"*/{DONE}"))) == 2
    assert not any(RunDir(tmp_path, sweep.resolved_here(job)).path.exists() for job in bad)


# --- packed sweeps on real MNIST ------------------------------------------------------------------------------

GRID = ["pattern=s3,r3", "poison.count=0,20", "poison.seed=0,1"]
DATA = ["dataset=mnist", "data.train_limit=2000", "epochs=2", "device=cpu", "progress=false"]


def _plan(store: Path, size: int, root: Path, *extra: str):
    sweep = Sweep(None, [*GRID, *DATA, f"data.root={root}", f"results_dir={store}", *extra])
    return sweep, plan_packs(sweep.job_overrides, sweep.resolved_here, size, store.parent / f"packs-{store.name}")


def _pack_files(plan) -> list[str]:
    return [line.split("=", 1)[1].strip("'") for job in plan.launches for line in job if line.startswith("pack.m")]


def _records(store: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in store.glob(f"*/{RECORD}")}


@pytest.mark.slow  # 8 jobs on real MNIST, packed and alone
def test_packed_sweep_records_equal_unpacked(shared_data, tmp_path):
    """8 jobs (4 clean baselines that train one model, 4 poisoned: 5 models to train): float32 scores within 1e-4
    of the unpacked runs, in the same run directories, with packed_with; collect and status read the mixed store."""
    sweep, plan = _plan(tmp_path / "packed", 8, shared_data)
    assert plan.packs == 1 and plan.packed_jobs == 8
    (pack_file,) = _pack_files(plan)
    records = run_pack_file(pack_file)
    assert len(records) == 8
    packed = _records(tmp_path / "packed")
    alone_store = tmp_path / "alone"
    for job in sweep.jobs(alone_store):
        cfg = dict(job.config, results_dir=str(alone_store))
        run_job(cfg)
    alone = _records(alone_store)
    assert packed.keys() == alone.keys() and len(packed) == 8
    trained_in_pack = [r for r in packed.values() if "packed_with.pack" in r]
    assert len(trained_in_pack) == 5 and {r["packed_with.size"] for r in trained_in_pack} == {5}  # 1 clean + 4
    for key, record in packed.items():
        for name in SCORES:
            # one test image in 10,000 may flip (1e-4), stored as float32
            assert abs(record[name] - alone[key][name]) <= 1e-4 + 1e-7, (key, name, record[name], alone[key][name])
        assert record["poisoned_indices"] == alone[key]["poisoned_indices"]
        assert record.get("p_value") == pytest.approx(alone[key].get("p_value"), abs=1e-4)
        assert not (tmp_path / "packed" / key / TRAIN_STATE).exists()

    # a store that mixes packed and unpacked runs: collect and status read it as any other
    mixed = tmp_path / "packed"
    run_job(dict(sweep.resolved_here(sweep.job_overrides[0]), results_dir=str(mixed), epochs=1))
    table = collect_runs(mixed)
    assert len(table) == 9 and table["packed_with.size"].notna().sum() == 5
    status = rarespur_cli("status", str(mixed))
    assert re.search(r"all\s+9\s+9\s+0\s+0", status.stdout), status.stdout + status.stderr


@pytest.mark.slow  # a pack of 8 jobs on real MNIST, trained twice
def test_killed_pack_resumes_exactly(shared_data, tmp_path):
    """Killed after epoch 1 (every model's checkpoint written), launched again: every record exactly once,
    equal to an uninterrupted pack's."""
    _, plan = _plan(tmp_path / "whole", 8, shared_data, "epochs=3")
    run_pack_file(_pack_files(plan)[0])
    _, plan = _plan(tmp_path / "killed", 8, shared_data, "epochs=3")
    (pack_file,) = _pack_files(plan)
    with killed_after_epoch(1), pytest.raises(KeyboardInterrupt):
        run_pack_file(pack_file)
    store = tmp_path / "killed"
    assert len(list(store.glob(f"*/{TRAIN_STATE}"))) == 5 and not list(store.glob(f"*/{DONE}"))
    _, again = _plan(store, 8, shared_data, "epochs=3")
    run_pack_file(_pack_files(again)[0])
    whole, resumed = _records(tmp_path / "whole"), _records(store)
    assert whole.keys() == resumed.keys() and len(resumed) == 8
    for key in whole:
        assert all(whole[key][name] == resumed[key][name] for name in SCORES), key
    _, last = _plan(store, 8, shared_data, "epochs=3")
    assert last.done == 8 and last.launches == []


def test_failed_model_does_not_stop_its_pack(shared_data, tmp_path):
    """One L2 strength makes SGD diverge: that run fails (error.txt, no record), the others are committed."""
    sweep = Sweep(
        None,
        [
            "pattern=s3",
            "poison.count=20",
            "regularizer=l2",
            "regularizer.strength=0,1e-4,1e6",
            *DATA,
            f"data.root={shared_data}",
            f"results_dir={tmp_path}",
        ],
    )
    plan = plan_packs(sweep.job_overrides, sweep.resolved_here, 8, tmp_path / "packs")
    assert plan.packs == 1
    with pytest.raises(PackFailed, match="1 of the 3 jobs .* failed: .*diverged"):
        run_pack_file(_pack_files(plan)[0])
    runs = {
        sweep.resolved_here(j)["regularizer"]["strength"]: RunDir(tmp_path, sweep.resolved_here(j))
        for j in sweep.job_overrides
    }
    assert runs[1e6].file(ERROR).exists() and not runs[1e6].done and not runs[1e6].file(RECORD).exists()
    assert runs[0.0].done and runs[1e-4].done
    assert len(list(tmp_path.glob(f"*/{DONE}"))) == 2


@pytest.mark.slow  # run.py -m on real MNIST, launched twice
def test_packed_sweep_through_run_py(shared_data, tmp_path):
    """The command a researcher types: one launcher job per pack, the records in the store, a relaunch runs nothing."""
    sweep = (tmp_path / "store", tmp_path / "multirun", *GRID, *DATA, f"data.root={shared_data}", "pack.size=3")
    done = multirun(*sweep, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "pack.size=3: 8 job(s) in 2 pack(s)" in done.stdout + done.stderr  # 5 models to train: 3 + 2
    assert len(_records(tmp_path / "store")) == 8
    again = multirun(*sweep, timeout=600)
    assert again.returncode == 0 and "8 already done (not launched): 0 launcher job(s)" in again.stdout + again.stderr
