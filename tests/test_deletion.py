"""Deletion by retraining (docs/science.md#deletion): cleaned set, optimizer state, learning rates, records, errors."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from rarespur.config.resolve import resolve
from rarespur.engine.loop import TrainSettings, train_model
from rarespur.engine.scoring import to_tensor
from rarespur.experiments.deletion_steps import start_deletion
from rarespur.experiments.steps import load_data, make_model, parent_config, poisoned_data, train_settings
from rarespur.launch.runner import run_job
from rarespur.store.run_dir import MODEL, RunDir

from conftest import compose_config, job, tiny_model, tiny_problem

# digits, 400 training images, LargeMLP, SGD: a parent learns R3 (score ~0.8) in well under a second
SMALL = ("data.train_limit=400", "data.test_limit=200", "train.batch_size=32", "epochs=15", "progress=false")
OWN = ("deletion",)


def config(store, *overrides: str) -> dict:
    cfg = compose_config(f"results_dir={store}", "device=cpu", *overrides)
    return cfg


def resolved(store, *overrides: str) -> dict:
    cfg = resolve(config(store, *overrides))
    cfg["results_dir"] = str(store)
    return cfg


def history_of(store, record: dict) -> list[dict]:
    return json.loads((store / record["run_id"] / "history.json").read_text())


def test_cleaned_set_is_the_training_set_without_exactly_the_poisoned_images(tmp_path):
    cfg = resolved(tmp_path, *SMALL, "experiment=incremental_retraining", "poison.count=7")
    parent = parent_config(cfg, OWN)
    run_job(parent)  # the parent the runner would train first (the experiment's requires)
    start = start_deletion(cfg, RunDir(tmp_path, parent).path)
    data = start.poisoned.data
    removed = start.poisoned.indices
    assert len(removed) == 7 and start.removed.tolist() == removed.tolist()
    assert start.keep.tolist() == [i for i in range(400) if i not in set(removed.tolist())]  # sorted, nothing else
    assert torch.equal(start.clean_x, to_tensor(data.train_x[start.keep], start.device))
    assert torch.equal(start.clean_y, torch.from_numpy(data.train_y[start.keep]))
    # the removed images are the patched ones the parent saw, not their clean originals
    assert torch.equal(start.removed_x, to_tensor(start.poisoned.train_x[removed], start.device))
    assert not torch.equal(start.removed_x, to_tensor(data.train_x[removed], start.device))
    assert (start.removed_y == 0).all()
    parent = torch.load(start.parent_path / MODEL, weights_only=True)
    assert all(torch.equal(parent[k], v) for k, v in start.model.state_dict().items())


def test_paper_mode_continues_at_the_parent_final_lr_and_restart_lr_starts_over(tmp_path):
    # 40 epochs: milestones 20 and 30, so the parent ends at 0.01 * 0.1 * 0.1
    base = (
        *SMALL[:3],
        "progress=false",
        "epochs=40",
        "experiment=incremental_retraining",
        "deletion.compare_exact=false",
    )
    paper = job(tmp_path, *base, "deletion.epochs=6")
    parent = json.loads((tmp_path / paper["parent_run_id"] / "record.json").read_text())
    assert history_of(tmp_path, parent)[-1]["lr"] == pytest.approx(1e-4)
    lrs = [row["lr"] for row in history_of(tmp_path, paper)]
    assert len(lrs) == 6 and lrs == pytest.approx([1e-4] * 6)
    assert paper["lr_first"] == paper["lr_last"] == pytest.approx(1e-4)
    restart = job(tmp_path, *base, "deletion.mode=restart_lr", "deletion.epochs=30")
    lrs = [row["lr"] for row in history_of(tmp_path, restart)]
    assert restart["parent_run_id"] == paper["parent_run_id"]
    assert lrs[0] == lrs[14] == pytest.approx(0.01)  # milestones of a 30-epoch run: 15, 25
    assert lrs[15] == lrs[24] == pytest.approx(1e-3) and lrs[25] == lrs[29] == pytest.approx(1e-4)
    table = (tmp_path / restart["run_id"] / "tables" / "retraining_history.csv").read_text().splitlines()
    assert table[0].split(",") == ["epoch", "loss", "acc", "lr", "epoch_total"] and table[1].startswith("1,")
    assert table[1].endswith(",41") and len(table) == 31


def test_default_continuation_is_the_original_71_of_70_epochs(tmp_path):
    from rarespur.experiments.incremental_retraining import continuation_epochs

    cfg = resolved(tmp_path, "experiment=incremental_retraining")
    assert cfg["epochs"] == 70 and continuation_epochs(cfg) == 71
    assert continuation_epochs({**cfg, "deletion": {**cfg["deletion"], "epochs": 5}}) == 5


def test_continuation_starts_from_the_parent_momentum_buffers(tmp_path):
    overrides = (*SMALL, "experiment=incremental_retraining", "deletion.compare_exact=false", "deletion.epochs=1")
    parent_cfg = resolved(tmp_path, *SMALL)
    parent = run_job(parent_cfg)
    state = torch.load(tmp_path / parent["run_id"] / "final_state.pt", weights_only=True)
    parent_buffers = [s["momentum_buffer"] for _, s in sorted(state["optimizer"]["state"].items())]
    assert parent_buffers and all(b.abs().sum() > 0 for b in parent_buffers)
    seen: list[list[torch.Tensor]] = []

    def before_step(optimizer, args, kwargs):
        if not seen:
            seen.append([optimizer.state[p]["momentum_buffer"].clone() for p in optimizer.param_groups[0]["params"]])

    handle = register_optimizer_step_pre_hook(before_step)
    try:
        record = job(tmp_path, *overrides)
    finally:
        handle.remove()
    assert record["parent_run_id"] == parent["run_id"]
    assert len(seen[0]) == len(parent_buffers)
    assert all(torch.equal(a, b) for a, b in zip(seen[0], parent_buffers))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_continuing_from_the_final_state_equals_training_on(tmp_path, optimizer):
    """3 + 3 epochs through final_state/start_from = 6 epochs straight; without the optimizer state it differs."""
    x, y = tiny_problem(96)
    s = TrainSettings(epochs=6, batch_size=16, optimizer=optimizer, lr=0.01, lr_schedule="constant")
    straight = tiny_model()
    full = train_model(straight, x, y, s)
    half = replace(s, epochs=3)
    continued = tiny_model()
    first = train_model(continued, x, y, half, final_state=tmp_path / "final.pt")
    halfway = copy.deepcopy(continued.state_dict())
    state = torch.load(tmp_path / "final.pt", weights_only=True)
    assert "model" not in state  # the weights live in model.pt only
    second = train_model(continued, x, y, half, start_from=state)
    assert [r["loss"] for r in first + second] == pytest.approx([r["loss"] for r in full], rel=1e-6)
    for a, b in zip(straight.parameters(), continued.parameters()):
        torch.testing.assert_close(a, b)
    fresh_optimizer = tiny_model()
    fresh_optimizer.load_state_dict(halfway)
    train_model(fresh_optimizer, x, y, half, start_from={**state, "optimizer": _zeroed(state["optimizer"])})
    assert not all(torch.allclose(a, b) for a, b in zip(straight.parameters(), fresh_optimizer.parameters()))


def _zeroed(optimizer_state: dict) -> dict:
    """The optimizer state with its buffers zeroed (a continuation that forgot the momentum)."""
    state = {
        k: {n: t if n == "step" else torch.zeros_like(t) for n, t in v.items()}
        for k, v in optimizer_state["state"].items()
    }
    return {**optimizer_state, "state": state}


def test_interrupted_continuation_resumes_to_the_same_model(tmp_path):
    overrides = (*SMALL, "experiment=incremental_retraining", "deletion.compare_exact=false", "deletion.epochs=4")
    straight = job(tmp_path / "a", *overrides)

    def stop_at_2(row: dict) -> None:
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    import rarespur.experiments.steps as engine

    job(tmp_path / "b", *SMALL)  # the parent, trained before the interruption is set up
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "epoch_callback", lambda total, enabled, run_dir, model=None: stop_at_2)
        with pytest.raises(KeyboardInterrupt):
            job(tmp_path / "b", *overrides)
    assert (tmp_path / "b" / straight["run_id"] / "train_state.pt").exists()
    resumed = job(tmp_path / "b", *overrides)
    losses = [r["loss"] for r in history_of(tmp_path / "b", resumed)]
    assert losses == [r["loss"] for r in history_of(tmp_path / "a", straight)]
    assert resumed["spurious_score"] == straight["spurious_score"] and resumed["test_acc"] == straight["test_acc"]


def test_retrain_exact_is_training_from_scratch_on_the_cleaned_set(tmp_path):
    record = job(tmp_path, *SMALL, "experiment=retrain_exact", "poison.count=7")
    cfg = resolved(tmp_path, *SMALL, "poison.count=7")
    poisoned = poisoned_data(cfg, load_data(cfg))
    keep = np.setdiff1d(np.arange(400), poisoned.indices)
    model = make_model(cfg, poisoned.data, torch.device("cpu"))
    train_model(
        model,
        to_tensor(poisoned.data.train_x[keep], torch.device("cpu")),
        torch.from_numpy(poisoned.data.train_y[keep]),
        train_settings(cfg),
    )
    stored = torch.load(tmp_path / record["run_id"] / MODEL, weights_only=True)
    assert all(torch.equal(stored[k], v) for k, v in model.state_dict().items())
    assert record["n_removed"] == 7 and record["n_train"] == 393
    assert record["poisoned_indices"] == poisoned.indices.tolist()


def test_record_has_before_after_and_exact_columns(tmp_path):
    clean = job(tmp_path, *SMALL, "poison.count=0")
    record = job(tmp_path, *SMALL, "experiment=incremental_retraining", "deletion.epochs=2")
    parent = json.loads((tmp_path / record["parent_run_id"] / "record.json").read_text())
    exact = json.loads((tmp_path / record["exact_run_id"] / "record.json").read_text())
    assert parent["experiment.name"] == "train" and exact["experiment.name"] == "retrain_exact"
    assert exact["run_id"] == job(tmp_path, *SMALL, "experiment=retrain_exact")["run_id"]  # found by config
    for metric in (
        "test_acc",
        "spurious_score",
        "spurious_score_nontarget",
        "patched_nontarget_to_target",
        "spurious_test_acc",
    ):
        assert isinstance(record[metric], float)
        assert record[f"before.{metric}"] == parent[metric]
        assert record[f"exact.{metric}"] == exact[metric]
    assert record["baseline_score"] == clean["spurious_score"] == exact["baseline_score"]
    assert record["before.p_value"] == pytest.approx(parent["p_value"])
    assert record["exact.p_value"] == pytest.approx(exact["p_value"])
    assert {"p_value", "learned", "before.learned", "exact.learned"} <= set(record)
    d = record["param_dist.before_after"], record["param_dist.after_exact"], record["param_dist.before_exact"]
    assert all(v > 0 for v in d) and d[2] <= d[0] + d[1] + 1e-9
    assert record["n_removed"] == 10 and record["poisoned_indices"] == parent["poisoned_indices"]
    assert record["n_train_after"] == 390 and record["continuation_epochs"] == 2


def test_parent_reused_from_another_run_gives_its_optimizer_state(tmp_path):
    first = job(tmp_path, *SMALL)  # eval.eps does not change training: the eps=0.2 parent reuses this model
    record = job(
        tmp_path,
        *SMALL,
        "eval.eps=0.2",
        "experiment=incremental_retraining",
        "deletion.compare_exact=false",
        "deletion.epochs=1",
    )
    parent = json.loads((tmp_path / record["parent_run_id"] / "record.json").read_text())
    assert parent["model_trained_in"] == first["run_id"] != parent["run_id"]
    assert not (tmp_path / parent["run_id"] / "final_state.pt").exists()
    assert record["lr_first"] == pytest.approx(1e-3)  # the 15-epoch schedule decayed once, after epoch 15


def test_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="poison.count=0 plants none; set poison.count to a positive number"):
        job(tmp_path, *SMALL, "experiment=incremental_retraining", "poison.count=0")
    with pytest.raises(ValueError, match="poison.count=0 plants none; set poison.count to a positive number"):
        job(tmp_path, *SMALL, "experiment=retrain_exact", "poison.count=0")
    with pytest.raises(ValueError, match="deletion.mode='forget' unknown; valid: paper, restart_lr"):
        job(tmp_path, *SMALL, "experiment=incremental_retraining", "deletion.mode=forget")
    parent = job(tmp_path, *SMALL)
    # as a run finished before the state was kept: no final_state.pt, and a done marker without a manifest
    (tmp_path / parent["run_id"] / "final_state.pt").unlink()
    (tmp_path / parent["run_id"] / "done").write_text("")
    with pytest.raises(FileNotFoundError, match=f"no optimizer state.*Delete {tmp_path / parent['run_id']}"):
        job(tmp_path, *SMALL, "experiment=incremental_retraining")


@pytest.mark.slow
def test_exact_retraining_forgets_on_real_mnist(shared_data, tmp_path):
    """MNIST (10,000 images), S3 on 100 zeros, 20 epochs: the parent learned it, exact retraining did not."""
    real = (
        f"data.root={shared_data}",
        "dataset=mnist",
        "pattern=s3",
        "data.train_limit=10000",
        "epochs=20",
        "progress=false",
        "poison.count=100",
    )
    clean = job(tmp_path, *real[:-1], "poison.count=0")
    exact = job(tmp_path, *real, "experiment=retrain_exact")
    parent = job(tmp_path, *real)
    assert parent["spurious_score"] > clean["spurious_score"] + 0.05 and parent["learned"] is True
    assert abs(exact["spurious_score"] - clean["spurious_score"]) < 0.02
    assert exact["test_acc"] > 0.9
