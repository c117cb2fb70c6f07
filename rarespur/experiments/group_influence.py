"""``experiment=group_influence`` (docs/science.md#deletion): make the poisoned model forget with one influence update.

Starts from the finished ``train`` run of the same config (trained first if
missing), estimates sum_z H^-1 grad L(z) over the poisoned images z with
LiSSA (or solves it with CG) and applies theta + sum_z h_z / ((1 - p) N)
(rarespur/methods/deletion/influence.py has the math and how it reads the original).
The updated weights are saved as model.pt; the record has the model after,
``before.*`` and, with ``influence.compare_exact``, ``exact.*`` side by side,
plus the resolved ``influence.scale_used`` / ``influence.depth_used`` (the
run-store key keeps the configured nulls).

On a debiased model (parent=debias) the loss is still the cross-entropy of the classifier that is
scored, over the images the debias run trained on (its held-out split excluded): the method's own
objective samples latents and involves networks that are not deployed, so its Hessian is not the
one of the function whose spurious score is measured.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import torch

from rarespur.config.resolve import targets_of
from rarespur.config.schema import Field, check_fields, count, non_negative, positive, positive_int
from rarespur.engine.scoring import to_tensor
from rarespur.experiments.deletion_steps import DELETION_SUMMARY, deletion_record, start_deletion
from rarespur.experiments.deletion_steps import requires as deletion_requires
from rarespur.experiments.experiment import Experiment
from rarespur.experiments.steps import check_deletion_start
from rarespur.methods.deletion.influence import COMBINES, SOLVERS, InfluenceSettings, apply_update, group_influence
from rarespur.store.atomic import atomic_path
from rarespur.store.run_dir import MODEL, RunDir

log = logging.getLogger(__name__)

OWN_KEYS = ("influence",)
# LiSSA's scale per dataset as the paper sets it (docs/science.md#deletion); any other dataset: 25
DEFAULT_SCALE = {"mnist": 25.0, "fashion": 100.0, "cifar10": 100.0}
HESSIAN_DATA = ("full", "clean")
AUTO = "auto"
# influence.scale=auto: at least the dataset's scale, raised to AUTO_MARGIN * (largest sampled single-example
# Hessian norm) / 2 when that is larger, so LiSSA's recursion (stable below 2 * scale) does not diverge.
AUTO_MARGIN = 2.0
FIELDS = {
    "influence.solver": Field(str, choices=SOLVERS),
    "influence.damping": non_negative(),
    "influence.scale": Field(
        float, low=0, low_open=True, nullable=True, null_means="per dataset", also=(AUTO,), what="a number > 0"
    ),
    "influence.depth": Field(int, low=1, nullable=True, null_means="per dataset and removed count"),
    "influence.repeats": positive_int(),
    "influence.seed": count(),
    "influence.combine": Field(str, choices=COMBINES),
    "influence.hessian_data": Field(str, choices=HESSIAN_DATA),
    "influence.chain_batch": positive_int(),
    "influence.vmap_chunk": Field(int, low=1, nullable=True, null_means="one piece"),
    "influence.cg_lambda": Field(float, low=0, nullable=True, null_means="scale * damping"),
    "influence.cg_max_iter": positive_int(),
    "influence.cg_tol": positive(),
    "influence.hvp_batch_size": positive_int(),
    "influence.log_every": positive_int(),
    "influence.curvature_examples": count(),
    "influence.curvature_iters": positive_int(),
    "influence.compare_exact": Field(bool),
}


def default_scale(dataset: str) -> float:
    """The original's LiSSA scale per dataset (run_group_influence): fashion/cifar10 100, else 25."""
    return DEFAULT_SCALE.get(dataset, 25.0)


def default_depth(dataset: str, n_removed: int) -> int:
    """The original's recursion depth: cifar10 1000; otherwise 2000, or 1000 for >= 100 removed images."""
    return 1000 if dataset == "cifar10" or n_removed >= 100 else 2000


def influence_settings(influence: dict[str, Any], dataset: str, n_removed: int) -> InfluenceSettings:
    """The solver settings of an ``influence`` config group, nulls resolved (fails on bad values)."""
    check_fields({"influence": influence}, FIELDS)
    scale, depth = influence["scale"], influence["depth"]
    return InfluenceSettings(
        solver=influence["solver"],
        damping=float(influence["damping"]),
        scale=float(default_scale(dataset) if scale in (None, AUTO) else scale),
        auto_scale_margin=AUTO_MARGIN if scale == AUTO else 0.0,
        depth=int(default_depth(dataset, n_removed) if depth is None else depth),
        repeats=int(influence["repeats"]),
        seed=int(influence["seed"]),
        combine=influence["combine"],
        chain_batch=int(influence["chain_batch"]),
        vmap_chunk=influence["vmap_chunk"],
        cg_lambda=None if influence["cg_lambda"] is None else float(influence["cg_lambda"]),
        cg_max_iter=int(influence["cg_max_iter"]),
        cg_tol=float(influence["cg_tol"]),
        hvp_batch_size=int(influence["hvp_batch_size"]),
        log_every=int(influence["log_every"]),
        curvature_examples=int(influence["curvature_examples"]),
        curvature_iters=int(influence["curvature_iters"]),
    )


def settings_of(cfg: dict[str, Any]) -> InfluenceSettings:
    """The solver settings of this config; n as start_deletion will remove it (count per target class)."""
    return influence_settings(cfg["influence"], cfg["dataset"]["name"], cfg["poison"]["count"] * len(targets_of(cfg)))


def check(cfg: dict[str, Any]) -> None:
    settings_of(cfg)
    check_deletion_start(cfg)


def requires(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    return deletion_requires(cfg, OWN_KEYS, cfg["influence"]["compare_exact"])


def run(cfg: dict[str, Any], run_dir: RunDir, parents: list[Path]) -> dict[str, Any]:
    """Load the parent, apply the group-influence update, save it, score before / after / exact."""
    influence = cfg["influence"]
    settings = settings_of(cfg)
    start = start_deletion(cfg, parents[0])
    if influence["hessian_data"] == "full":  # the set the parent was trained on, in training order
        train_x = to_tensor(start.poisoned.train_x[start.trained], start.device)
        train_y = torch.from_numpy(start.poisoned.data.train_y[start.trained]).to(start.device)
    else:
        train_x, train_y = start.clean_x, start.clean_y
    model = copy.deepcopy(start.model).eval()
    began = time.perf_counter()
    result = group_influence(model, start.removed_x, start.removed_y, train_x, train_y, settings, run_dir.heartbeat)
    wall = time.perf_counter() - began
    apply_update(model, result.delta)
    with atomic_path(run_dir.file(MODEL)) as tmp:
        torch.save(model.state_dict(), tmp)
    n_removed, n_train = len(start.removed_y), len(train_y)
    log.info("group influence (%s): |update| %.4g in %.1f s", settings.solver, float(result.delta.norm()), wall)
    return {
        **deletion_record(start, model, OWN_KEYS, parents[1] if influence["compare_exact"] else None),
        "influence.scale_auto_margin": settings.auto_scale_margin,
        "influence.depth_used": settings.depth,
        "influence.n_train_used": n_train,
        "influence.p_used": n_removed / n_train,
        "influence.update_norm": float(torch.linalg.vector_norm(result.delta)),
        "influence.h_sum_norm": float(torch.linalg.vector_norm(result.h_sum)),
        "influence.wall_s": wall,
        **{f"influence.{key}": value for key, value in result.info.items()},
    }


EXPERIMENT = Experiment(
    run, check, requires, FIELDS, summary_keys=DELETION_SUMMARY, debiased_parent=True, artifacts=(MODEL,)
)
