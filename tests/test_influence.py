"""Group influence (docs/science.md#deletion): HVPs, LiSSA and CG against dense Hessians; the update; the experiment.

The math tests run in float64 on tiny models whose full Hessian is cheap
(torch.func.hessian), so every estimate has an exact answer to compare with.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian

from rarespur.experiments.group_influence import default_depth, default_scale
from rarespur.methods.deletion.influence import (
    InfluenceSettings,
    ModelLoss,
    apply_update,
    chain_draws,
    conjugate_gradient,
    example_curvature,
    group_influence,
    group_update,
)
from rarespur.store.run_dir import MODEL

from conftest import job


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def tiny_data(n: int = 120, features: int = 6, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping Gaussian classes: not separable, so logistic regression has a finite optimum."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(classes, (n,), generator=g)
    means = torch.randn(classes, features, generator=g, dtype=torch.float64)
    return means[y] + 1.5 * torch.randn(n, features, generator=g, dtype=torch.float64), y


def tiny_mlp(features: int = 6, classes: int = 3) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(features, 5), nn.Tanh(), nn.Linear(5, classes)).double().eval()


def logistic(features: int = 6, classes: int = 3) -> nn.Module:
    torch.manual_seed(2)
    return nn.Linear(features, classes).double().eval()


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The P x P Hessian of the mean cross-entropy on (x, y), by torch.func.hessian of a flat function."""
    loss = ModelLoss(model)
    theta = loss.flatten(loss.params)

    def of_flat(flat: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, loss.unflatten(flat), (x,)), y)

    return hessian(of_flat)(theta)


def flat_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    loss = ModelLoss(model)
    return loss.flatten(loss.example_grads(x, y), batched=True)


def train_to_optimum(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Full-batch L-BFGS to a gradient norm near machine precision (float64)."""
    opt = torch.optim.LBFGS(
        model.parameters(),
        lr=1,
        max_iter=500,
        tolerance_grad=1e-13,
        tolerance_change=0,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        out = F.cross_entropy(model(x), y)
        out.backward()
        return out

    for _ in range(5):
        opt.step(closure)


def test_hvps_equal_dense_hessian_times_vector():
    model = tiny_mlp()
    x, y = tiny_data(50)
    loss = ModelLoss(model)
    vec = torch.randn(loss.size, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    dense = dense_hessian(model, x, y)
    # batch 16 of 50: the batch-weighted sum must equal the mean-loss Hessian
    got = loss.flatten(loss.dataset_hvp(x, y, loss.unflatten(vec), batch_size=16))
    assert rel_err(got, dense @ vec) < 1e-12
    # per-chain HVPs: chain i uses example idx[i] and its own vector
    idx = torch.tensor([4, 4, 17, 0])
    vecs = torch.randn(len(idx), loss.size, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    rows = loss.chain_hvps(x[idx], y[idx], {n: t for n, t in zip(loss.params, _split(loss, vecs))}, chunk=3)
    got = loss.flatten(rows, batched=True)
    for i, j in enumerate(idx):
        assert rel_err(got[i], dense_hessian(model, x[j : j + 1], y[j : j + 1]) @ vecs[i]) < 1e-12


def _split(loss: ModelLoss, batched_flat: torch.Tensor) -> list[torch.Tensor]:
    sizes = [p.numel() for p in loss.params.values()]
    return [t.reshape(len(batched_flat), *p.shape) for t, p in zip(batched_flat.split(sizes, 1), loss.params.values())]


def test_lissa_is_exactly_the_spec_recursion_with_its_draws():
    """Re-run the paper's LiSSA recursion (docs/science.md#deletion) by hand with dense per-example Hessians and the
    chains' own draws."""
    model = tiny_mlp()
    x, y = tiny_data(40)
    removed = torch.tensor([3, 11])
    s = InfluenceSettings(depth=30, repeats=3, seed=5, scale=10.0, damping=0.05, chain_batch=4)
    got = group_influence(model, x[removed], y[removed], x, y, s)
    per_example = [dense_hessian(model, x[i : i + 1], y[i : i + 1]) for i in range(len(y))]
    v = flat_grads(model, x[removed], y[removed])
    h_sum = torch.zeros_like(v[0])
    for i in range(len(removed)):
        for j in range(s.repeats):
            h = v[i].clone()
            for k in chain_draws(s.seed, i * s.repeats + j, len(y), s.depth).tolist():
                h = v[i] + (1 - s.damping) * h - per_example[k] @ h / s.scale
            h_sum += h / s.repeats
    assert rel_err(got.h_sum, h_sum) < 1e-12
    p = len(removed) / len(y)
    assert rel_err(got.delta, h_sum / ((1 - p) * len(y))) < 1e-12
    # the original's arithmetic: only the first chain of each example, divided by r
    first = group_influence(model, x[removed], y[removed], x, y, replace(s, combine="first_over_r"))
    assert first.info["lissa_chains"] == len(removed) and got.info["lissa_chains"] == len(removed) * s.repeats
    h_first = torch.zeros_like(v[0])
    for i in range(len(removed)):
        h = v[i].clone()
        for k in chain_draws(s.seed, i * s.repeats, len(y), s.depth).tolist():
            h = v[i] + (1 - s.damping) * h - per_example[k] @ h / s.scale
        h_first += h / s.repeats
    assert rel_err(first.h_sum, h_first) < 1e-12


def test_lissa_and_cg_agree_with_dense_solve():
    """Both estimate scale * (H + scale*damp I)^-1 sum_z grad L(z); CG exactly, LiSSA up to sampling noise."""
    model = logistic()
    x, y = tiny_data(300)
    removed = torch.tensor([0, 1, 2])
    scale, damping = 25.0, 0.01
    dense = dense_hessian(model, x, y)
    b = flat_grads(model, x[removed], y[removed]).sum(0)
    want = scale * torch.linalg.solve(dense + scale * damping * torch.eye(len(b), dtype=b.dtype), b)
    cg = group_influence(
        model,
        x[removed],
        y[removed],
        x,
        y,
        InfluenceSettings(solver="cg", scale=scale, damping=damping, cg_tol=1e-12, hvp_batch_size=64),
    )
    assert cg.info["cg_converged"] and rel_err(cg.h_sum, want) < 1e-9
    many = InfluenceSettings(scale=scale, damping=damping, depth=600, repeats=400, chain_batch=1200)
    lissa = group_influence(model, x[removed], y[removed], x, y, many)
    # truncation (1 - damp)^600 ~ 2e-3; the rest is the noise of single-example Hessians, which averages
    # out like 1/sqrt(chains): measured 9% with 10 repeats, 2.5% with 100, 0.9% with 400 (seeds 0 and 1)
    assert rel_err(lissa.h_sum, want) < 0.02
    few = group_influence(model, x[removed], y[removed], x, y, replace(many, repeats=10))
    assert rel_err(few.h_sum, want) > 2 * rel_err(lissa.h_sum, want)


def test_example_curvature_is_the_largest_eigenvalue_of_single_example_hessians():
    model = tiny_mlp()
    x, y = tiny_data(40)
    got = example_curvature(ModelLoss(model), x, y, examples=6, iters=300, seed=0)
    idx = torch.randint(len(y), (6,), generator=torch.Generator().manual_seed(0))
    want = torch.stack(
        [torch.linalg.eigvalsh(dense_hessian(model, x[i : i + 1], y[i : i + 1])).abs().max() for i in idx]
    )
    assert rel_err(got, want) < 1e-4  # power iteration: measured 3e-6 after 300 iterations


def test_update_matches_retraining_without_the_group():
    """Sign and 1/((1-p) N): at a strict optimum the update is one Newton step towards the retrained optimum."""
    model = logistic()
    x, y = tiny_data(400, seed=1)
    train_to_optimum(model, x, y)
    removed = torch.tensor([5, 50, 120, 300])
    keep = torch.tensor([i for i in range(len(y)) if i not in removed.tolist()])
    retrained = logistic()
    retrained.load_state_dict(model.state_dict())
    train_to_optimum(retrained, x[keep], y[keep])
    loss = ModelLoss(model)
    want = loss.flatten(ModelLoss(retrained).params) - loss.flatten(loss.params)
    # scale 1, ridge 1e-8 (softmax weights have a null direction): h = H^-1 grad
    got = group_influence(
        model,
        x[removed],
        y[removed],
        x,
        y,
        InfluenceSettings(solver="cg", scale=1.0, damping=0.0, cg_lambda=1e-8, cg_tol=1e-12),
    )
    assert rel_err(got.delta, want) < 0.05
    assert rel_err(-got.delta, want) > 1.9  # the opposite sign would be far off
    before = F.cross_entropy(model(x[removed]), y[removed]).item()
    apply_update(model, got.delta)
    assert F.cross_entropy(model(x[removed]), y[removed]).item() > before  # it forgets the removed group


def test_group_update_by_hand():
    # p = 2/10, (1 - p) N = 8
    assert torch.equal(group_update(torch.tensor([2.0, -4.0]), 2, 10), torch.tensor([0.25, -0.5]))
    with pytest.raises(ValueError, match="0 < removed"):
        group_update(torch.ones(2), 10, 10)


def test_conjugate_gradient_on_a_known_system_and_indefinite_error():
    a = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    x, info = conjugate_gradient(lambda u: a @ u, torch.tensor([1.0, 2.0], dtype=torch.float64), 10, 1e-14)
    assert torch.allclose(x, torch.tensor([1 / 11, 7 / 11], dtype=torch.float64), atol=1e-14)
    assert info["cg_converged"] and info["cg_iters"] == 2
    with pytest.raises(RuntimeError, match="raise influence.cg_lambda"):
        conjugate_gradient(lambda u: -u, torch.ones(2, dtype=torch.float64), 10, 1e-10)


def test_lissa_is_deterministic_per_seed_and_independent_of_batching():
    model = tiny_mlp()
    x, y = tiny_data(60)
    removed = torch.tensor([1, 2, 3])
    s = InfluenceSettings(depth=20, repeats=4, seed=0, scale=10.0, chain_batch=64)
    a = group_influence(model, x[removed], y[removed], x, y, s).delta
    assert torch.equal(a, group_influence(model, x[removed], y[removed], x, y, s).delta)
    batched = replace(s, chain_batch=5, vmap_chunk=2)
    assert rel_err(group_influence(model, x[removed], y[removed], x, y, batched).delta, a) < 1e-13
    other = replace(s, seed=1)
    assert rel_err(group_influence(model, x[removed], y[removed], x, y, other).delta, a) > 1e-3


def test_bad_settings_and_train_mode_fail_clearly():
    with pytest.raises(ValueError, match="influence.solver"):
        InfluenceSettings(solver="newton")
    with pytest.raises(ValueError, match="influence.depth"):
        InfluenceSettings(depth=0)
    with pytest.raises(ValueError, match="eval mode"):
        ModelLoss(nn.Linear(2, 2))
    model = tiny_mlp()
    x, y = tiny_data(30)
    with pytest.raises(RuntimeError, match="diverged"):
        group_influence(model, x[:2], y[:2], x, y, InfluenceSettings(scale=1e-3, depth=400, repeats=1))


def test_resolved_defaults():
    assert [default_scale(d) for d in ("mnist", "fashion", "cifar10", "digits")] == [25.0, 100.0, 100.0, 25.0]
    assert [default_depth("mnist", n) for n in (3, 99, 100)] == [2000, 2000, 1000]
    assert default_depth("cifar10", 3) == 1000


def test_group_influence_experiment_on_digits(tmp_path):
    base = ("model=mlp", "epochs=3", "poison.count=5", "pattern=s3", "data.train_limit=400", "data.test_limit=100")
    record = job(
        tmp_path,
        "experiment=group_influence",
        *base,
        "influence.depth=30",
        "influence.repeats=2",
        "influence.compare_exact=false",
        "influence.curvature_examples=8",
    )
    assert record["experiment.name"] == "group_influence" and record["influence.scale"] == "auto"  # the default
    assert 0 < record["influence.example_curvature_median"] <= record["influence.example_curvature_max"]
    assert record["influence.lissa_chains"] == 10
    assert (
        record["influence.scale_used"] == 25.0 and record["influence.depth_used"] == 30
    )  # stable: the dataset default
    assert record["influence.scale_auto_margin"] == 2.0
    assert record["influence.n_train_used"] == 400 and record["influence.p_used"] == 5 / 400
    assert record["n_removed"] == 5 and record["n_train_after"] == 395
    for metric in ("test_acc", "spurious_score"):
        assert f"before.{metric}" in record and metric in record
    # what changed is the saved model, by exactly the reported update
    assert record["influence.update_norm"] > 0
    assert record["param_dist.before_after"] == pytest.approx(record["influence.update_norm"], rel=1e-5)
    after = torch.load(tmp_path / record["run_id"] / MODEL, weights_only=True)
    parent = torch.load(tmp_path / record["parent_run_id"] / MODEL, weights_only=True)
    diff = torch.cat([(after[k] - parent[k]).reshape(-1) for k in parent])
    assert float(diff.norm()) == pytest.approx(record["influence.update_norm"], rel=1e-5)
    stored = json.loads((tmp_path / record["run_id"] / "record.json").read_text())
    assert stored["influence.depth_used"] == 30
    # same config -> the same (stored) run
    assert (
        job(
            tmp_path,
            "experiment=group_influence",
            *base,
            "influence.depth=30",
            "influence.repeats=2",
            "influence.compare_exact=false",
            "influence.curvature_examples=8",
        )["run_id"]
        == record["run_id"]
    )
    # the Hessian of the cleaned set instead: N and p change with it
    clean = job(
        tmp_path,
        "experiment=group_influence",
        *base,
        "influence.depth=30",
        "influence.repeats=2",
        "influence.compare_exact=false",
        "influence.curvature_examples=0",
        "influence.hessian_data=clean",
    )
    assert clean["influence.n_train_used"] == 395 and clean["influence.p_used"] == 5 / 395
    assert "influence.example_curvature_max" not in clean  # check skipped
    assert clean["influence.update_norm"] != record["influence.update_norm"]
    # CG on the same parent, against the model retrained from scratch. This MLP's Hessian has an
    # eigenvalue below -0.3, so the default ridge scale * damp = 0.25 is not positive definite (CG refuses).
    with pytest.raises(RuntimeError, match="raise influence.cg_lambda by more than"):
        job(tmp_path, "experiment=group_influence", *base, "influence.solver=cg")
    exact = job(
        tmp_path,
        "experiment=group_influence",
        *base,
        "influence.solver=cg",
        "influence.cg_max_iter=5",
        "influence.cg_lambda=2",
    )
    assert exact["parent_run_id"] == record["parent_run_id"] and 1 <= exact["influence.cg_iters"] <= 5
    assert exact["influence.lambda_used"] == 2.0 and exact["influence.update_norm"] > 0
    for column in ("exact.test_acc", "exact.spurious_score", "param_dist.after_exact", "param_dist.before_exact"):
        assert column in exact


def test_bad_influence_config_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="influence.hessian_data"):
        job(tmp_path, "experiment=group_influence", "influence.hessian_data=test", "epochs=1")
    assert list(tmp_path.rglob(MODEL)) == []  # no parent was trained


def test_auto_scale_keeps_lissa_from_diverging_where_the_dataset_scale_does():
    """A linear model at zero weights (p = 1/2) on inputs of norm ~120: single-example Hessians of norm
    |x|^2 / 2 ~ 7000, far above the 2 * 25 LiSSA tolerates. The fixed scale diverges; scale=auto raises it to
    the sampled curvature."""
    gen = torch.Generator().manual_seed(0)
    x = 30 * torch.randn(200, 1, 4, 4, generator=gen, dtype=torch.float64)
    y = (x.flatten(1).sum(1) > 0).long()
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).double().eval()
    nn.init.zeros_(model[1].weight)
    nn.init.zeros_(model[1].bias)
    fixed = InfluenceSettings(scale=25.0, depth=150, repeats=1, curvature_examples=32)
    with pytest.raises(RuntimeError, match="LiSSA diverged"):
        group_influence(model, x[:3], y[:3], x, y, fixed)
    result = group_influence(model, x[:3], y[:3], x, y, replace(fixed, auto_scale_margin=2.0))
    info = result.info
    assert info["scale_used"] == pytest.approx(info["example_curvature_max"]) and info["scale_used"] > 100
    assert info["lambda_used"] == pytest.approx(0.01 * info["scale_used"])
    assert torch.isfinite(result.delta).all() and float(result.delta.norm()) > 0
    # where the dataset's scale is stable, auto leaves it as it is
    calm = group_influence(model, x[:3] / 300, y[:3], x / 300, y, replace(fixed, auto_scale_margin=2.0))
    assert calm.info["scale_used"] == 25.0
