"""First-order group influence (docs/science.md#deletion): undo the poisoned images with one Newton-like step.

Removing a group Z of n examples from a training set of N changes the
optimum, to first order, by  Delta theta = sum_{z in Z} H^-1 grad L(z) / ((1 - p) N)
with p = n / N and H the Hessian of the mean training loss. The paper's code
(``spurious_ml/influence_utils/influence.py``, after nimarb/pytorch_influence_functions)
estimates each H^-1 grad L(z) with LiSSA; we follow it, with these readings of
the original made explicit:

- Hessian data: the LiSSA draws (and ``N``) are over the FULL training set the
  parent was trained on, poisoned images included (the original passes
  ``trnX`` of the poisoned dataset); ``p = n / N`` with that ``N``. The
  ``clean`` option uses the cleaned set instead.
- One draw per step: the original takes one uniformly random training example
  per recursion step (a shuffled DataLoader with batch size 1, first batch).
  We draw indices with replacement from a per-chain ``torch.Generator`` seeded
  from (seed, chain number), so results do not depend on how chains are batched
  or on the device.
- Scale: the recursion h <- v + (1 - damp) h - H h / scale converges (when the
  eigenvalues of H lie in (-scale*damp, scale*(2 - damp))) to
  h = scale * (H + scale*damp*I)^-1 v. The original never divides by `scale`,
  so its update is `scale` times a damped inverse-HVP update; we keep that.
- Sign: the original returns -sum h / ((1 - p) N) and applies theta - that,
  i.e. theta <- theta + sum_z h_z / ((1 - p) N).
- Repeats: the paper says average r estimates. The original's
  ``calc_s_test_single`` does ``list += list`` (concatenation, not addition)
  and only the first P tensors of the result reach the parameters, so it
  effectively applies the FIRST estimate divided by r. ``combine: mean`` is
  the paper's; ``combine: first_over_r`` reproduces the original's arithmetic.

The model is used in eval mode (as the original, ``model.model.eval()``):
with dropout active the loss and hence H would be random from one HVP to
the next, and batch norm in train mode would normalize a single example by
its own statistics (degenerate); eval mode gives the Hessian of the function
that is actually deployed and scored.

HVPs use torch.func (vjp of grad, see :class:`ModelLoss`); the chains of all
(example, repeat) pairs advance together under vmap, each with its own
training example per step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vjp, vmap

from rarespur.errors import ConfigError

log = logging.getLogger(__name__)

SOLVERS = ("lissa", "cg")
COMBINES = ("mean", "first_over_r")
Progress = Callable[[], None]
Tree = dict[str, torch.Tensor]


class ModelLoss:
    """The mean cross-entropy of `model` as a function of its trainable parameters, for torch.func.

    Vectors in parameter space are dicts name -> tensor ("trees"), optionally
    with a leading chain/example dimension; keeping them as dicts (not one flat
    vector) spares a full-size concatenation in every HVP (measured: about 40%
    of the LiSSA step on LargeMLP). HVPs are reverse-over-reverse (vjp of
    grad): every op with a double backward supports it, and on LargeMLP it
    was about 10% faster than forward-over-reverse (jvp of grad).
    """

    def __init__(self, model: nn.Module) -> None:
        if model.training:
            raise ValueError("influence needs the model in eval mode (dropout/batch norm); call model.eval() first")
        self.model = model
        self.params: Tree = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
        self.buffers: Tree = {name: b.detach() for name, b in model.named_buffers()}

    @property
    def size(self) -> int:
        return sum(p.numel() for p in self.params.values())

    def flatten(self, tree: Tree, batched: bool = False) -> torch.Tensor:
        """A tree as one vector (P) or, `batched`, one row per leading index (B x P), in parameter order."""
        lead = 1 if batched else 0
        return torch.cat([tree[n].reshape(*tree[n].shape[:lead], -1) for n in self.params], dim=lead)

    def unflatten(self, flat: torch.Tensor) -> Tree:
        """The inverse of :meth:`flatten` for one vector (views, no copy)."""
        sizes = [p.numel() for p in self.params.values()]
        return {n: t.view(p.shape) for (n, p), t in zip(self.params.items(), flat.split(sizes))}

    def loss(self, params: Tree, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy on the batch (x, y) at `params`."""
        return F.cross_entropy(functional_call(self.model, (params, self.buffers), (x,)), y)

    def hvp(self, x: torch.Tensor, y: torch.Tensor, vec: Tree) -> Tree:
        """H(x, y) @ vec at the model's parameters, H the Hessian of the mean loss on the batch."""
        _, pullback = vjp(lambda w: grad(self.loss)(w, x, y), self.params)
        return pullback(vec)[0]

    def example_grads(self, x: torch.Tensor, y: torch.Tensor) -> Tree:
        """One loss gradient per example (leading dimension n)."""
        return vmap(lambda xi, yi: grad(self.loss)(self.params, xi[None], yi[None]))(x, y)

    def chain_hvps(self, x: torch.Tensor, y: torch.Tensor, vecs: Tree, chunk: int | None) -> Tree:
        """Row i: H(x_i, y_i) @ vecs[i], the single-example Hessian of chain i times its own vector."""
        return vmap(lambda xi, yi, v: self.hvp(xi[None], yi[None], v), chunk_size=chunk)(x, y, vecs)

    def dataset_hvp(self, x: torch.Tensor, y: torch.Tensor, vec: Tree, batch_size: int) -> Tree:
        """H @ vec with H the Hessian of the mean loss over all of (x, y), accumulated over batches."""
        out = {n: torch.zeros_like(t) for n, t in vec.items()}
        for start in range(0, len(y), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            part = self.hvp(xb, yb, vec)
            torch._foreach_add_(list(out.values()), list(part.values()), alpha=len(yb) / len(y))
        return out

    def add_to_model(self, delta: torch.Tensor) -> None:
        """theta <- theta + delta (flat, in parameter order) on the model itself."""
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, step in self.unflatten(delta).items():
                params[name].add_(step.to(params[name].dtype))


@dataclass(frozen=True)
class InfluenceSettings:
    """All knobs of the update; `scale` and `depth` already resolved (see the experiment for defaults)."""

    solver: str = "lissa"
    damping: float = 0.01
    scale: float = 25.0
    depth: int = 2000
    repeats: int = 10
    seed: int = 0
    combine: str = "mean"
    chain_batch: int = 64  # LiSSA chains advanced together (memory: chain_batch x P floats, a few times)
    vmap_chunk: int | None = None  # split each chain batch's vmap into chunks of this many (None = all at once)
    cg_lambda: float | None = None  # None = scale * damping, the damping LiSSA's fixed point has
    cg_max_iter: int = 100
    cg_tol: float = 1e-6
    hvp_batch_size: int = 1024  # batch of the full-data HVPs of CG
    log_every: int = 200
    curvature_examples: int = 64  # LiSSA only: examples whose single-example Hessian norm is estimated first; 0 = skip
    curvature_iters: int = 20  # power iterations of that estimate
    # > 0: LiSSA raises `scale` to auto_scale_margin * (largest sampled single-example Hessian norm) / 2 when that
    # is larger (stable only below 2 * scale; the margin covers the examples the sample missed); 0: `scale` as given.
    # Without a curvature sample (curvature_examples = 0) there is nothing to raise it from: `scale` as given.
    auto_scale_margin: float = 0.0

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ConfigError(f"influence.solver={self.solver!r} unknown; choose one of {SOLVERS}")
        if self.combine not in COMBINES:
            raise ConfigError(f"influence.combine={self.combine!r} unknown; choose one of {COMBINES}")
        positive = {
            "scale": self.scale,
            "depth": self.depth,
            "repeats": self.repeats,
            "chain_batch": self.chain_batch,
            "cg_max_iter": self.cg_max_iter,
            "hvp_batch_size": self.hvp_batch_size,
            "log_every": self.log_every,
            "curvature_iters": self.curvature_iters,
        }
        bad = [k for k, v in positive.items() if not v > 0]
        if bad:
            raise ConfigError(f"influence.{bad[0]}={positive[bad[0]]} must be positive")
        if self.curvature_examples < 0:
            raise ConfigError(f"influence.curvature_examples={self.curvature_examples} must be >= 0 (0 = skip)")

        if not 0 <= self.damping < 1:
            raise ConfigError(f"influence.damping={self.damping} must be in [0, 1)")

    @property
    def lam(self) -> float:
        """The ridge of (H + lam I) that both solvers invert."""
        return self.scale * self.damping if self.cg_lambda is None else self.cg_lambda


@dataclass
class InfluenceResult:
    delta: torch.Tensor  # the parameter change theta_after - theta_before (flat)
    h_sum: torch.Tensor  # sum over removed z of the (unnormalized, scale-times) inverse HVP h_z
    info: dict[str, Any] = field(default_factory=dict)


def chain_generator(seed: int, chain: int) -> torch.Generator:
    """The generator of one LiSSA chain: independent streams from (seed, chain) via NumPy's SeedSequence."""
    state = np.random.SeedSequence([seed, chain]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def chain_draws(seed: int, chain: int, n_train: int, depth: int) -> torch.Tensor:
    """The training indices chain `chain` uses at steps 0..depth-1 (uniform, with replacement)."""
    return torch.randint(n_train, (depth,), generator=chain_generator(seed, chain))


def lissa_step_(
    h: list[torch.Tensor], v: list[torch.Tensor], hv: list[torch.Tensor], damping: float, scale: float
) -> None:
    """One LiSSA recursion step in place (docs/science.md#deletion): h <- v + (1 - damp) h - (H h) / scale."""
    torch._foreach_mul_(h, 1 - damping)
    torch._foreach_add_(h, v)
    torch._foreach_add_(h, hv, alpha=-1 / scale)


def _fmt_s(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.1f} s"


class _Clock:
    """Progress over all LiSSA steps of a run: a log line every `log_every` steps (step, |h|, elapsed, ETA)."""

    def __init__(self, total_steps: int, depth: int, log_every: int, on_progress: Progress | None) -> None:
        self.total, self.depth, self.every, self.on_progress = total_steps, depth, log_every, on_progress
        self.done, self.start = 0, time.perf_counter()

    def tick(self, h: Tree, chains: list[int], step: int) -> None:
        self.done += 1
        if self.done % self.every and self.done != self.total:
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        norms = _row_norms(h)
        log.info(
            "LiSSA chains %d-%d: step %d/%d  |h| mean %.4g max %.4g  elapsed %s  ETA %s",
            chains[0],
            chains[-1],
            step + 1,
            self.depth,
            float(norms.mean()),
            float(norms.max()),
            _fmt_s(elapsed),
            _fmt_s(eta),
        )
        if not torch.isfinite(norms).all():
            raise RuntimeError(_DIVERGED)
        if self.on_progress is not None:
            self.on_progress()


_DIVERGED = (
    "LiSSA diverged (non-finite h): single-example Hessians have eigenvalues above 2*scale (or below "
    "-scale*damping), see influence.example_curvature_* in the log; raise influence.scale (the paper also used "
    "150 and 1000) or influence.damping"
)


def example_curvature(
    loss: ModelLoss, x: torch.Tensor, y: torch.Tensor, examples: int, iters: int, seed: int
) -> torch.Tensor:
    """The largest |eigenvalue| of the single-example Hessians of `examples` random training examples.

    Power iteration (`iters` HVPs, vmapped over the examples). LiSSA draws one
    example per step and multiplies h's component along such an eigenvector by
    |1 - damp - lambda / scale|, so it is stable only while lambda < ~2 * scale:
    this is the check that tells a diverging run's cause (and the scale to use).
    """
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(y), (examples,), generator=gen).to(y.device)
    vec = {
        n: torch.randn(examples, *p.shape, generator=gen, dtype=p.dtype).to(p.device) for n, p in loss.params.items()
    }
    for _ in range(iters):
        norms = _row_norms(vec)
        vec = loss.chain_hvps(x[idx], y[idx], {n: t / _expand(norms, t) for n, t in vec.items()}, None)
    return _row_norms(vec)


def _row_norms(tree: Tree) -> torch.Tensor:
    return sum(t.reshape(len(t), -1).square().sum(1) for t in tree.values()).sqrt()


def _expand(row_values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return row_values.clamp_min(torch.finfo(like.dtype).tiny).view(-1, *[1] * (like.dim() - 1))


def lissa_chains(
    loss: ModelLoss,
    v: Tree,
    chains: list[int],
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    settings: InfluenceSettings,
    clock: _Clock,
) -> Tree:
    """Run the LiSSA chains `chains` (numbers, for their generators) from start vectors `v` (one row each)."""
    draws = torch.stack([chain_draws(settings.seed, c, len(train_y), settings.depth) for c in chains], 1)
    draws = draws.to(train_y.device)
    h = {n: t.clone() for n, t in v.items()}
    h_list, v_list = list(h.values()), list(v.values())
    for step in range(settings.depth):
        idx = draws[step]
        hv = loss.chain_hvps(train_x[idx], train_y[idx], h, settings.vmap_chunk)
        lissa_step_(h_list, v_list, [hv[n] for n in h], settings.damping, settings.scale)
        clock.tick(h, chains, step)
    if not all(torch.isfinite(t).all() for t in h_list):
        raise RuntimeError(_DIVERGED)
    return h


def lissa_h_sum(
    loss: ModelLoss,
    removed_x: torch.Tensor,
    removed_y: torch.Tensor,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    settings: InfluenceSettings,
    on_progress: Progress | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """sum_z h_z (flat), h_z the LiSSA estimate of scale * (H + scale*damp I)^-1 grad L(z), over repeats.

    Chain number of (example i, repeat j) is i * repeats + j; `combine=first_over_r`
    runs only the j = 0 chains and divides by r (the original's effective arithmetic).
    """
    v = loss.example_grads(removed_x, removed_y)
    used = range(settings.repeats) if settings.combine == "mean" else range(1)
    chains = [i * settings.repeats + j for i in range(len(removed_y)) for j in used]
    groups = [chains[k : k + settings.chain_batch] for k in range(0, len(chains), settings.chain_batch)]
    log.info(
        "LiSSA: %d removed examples x %d chains, depth %d, %d parameters, %d training examples, %d batch(es)",
        len(removed_y),
        len(used),
        settings.depth,
        loss.size,
        len(train_y),
        len(groups),
    )
    info: dict[str, Any] = {"lissa_chains": len(chains)}
    if settings.curvature_examples:
        norms = example_curvature(
            loss, train_x, train_y, settings.curvature_examples, settings.curvature_iters, settings.seed
        )
        settings = auto_scale(settings, norms)
        info.update(curvature_report(norms, settings))
    info.update(scale_used=settings.scale, lambda_used=settings.lam)
    clock = _Clock(len(groups) * settings.depth, settings.depth, settings.log_every, on_progress)
    total = torch.zeros(loss.size, dtype=removed_x.dtype, device=removed_x.device)
    for group in groups:
        rows = torch.tensor([c // settings.repeats for c in group], device=removed_x.device)
        h = lissa_chains(loss, {n: t[rows] for n, t in v.items()}, group, train_x, train_y, settings, clock)
        total += loss.flatten({n: t.sum(0) for n, t in h.items()})
    return total / settings.repeats, info


def auto_scale(settings: InfluenceSettings, norms: torch.Tensor) -> InfluenceSettings:
    """`settings` with LiSSA's scale raised to auto_scale_margin * max(norms) / 2 where that is larger."""
    if not settings.auto_scale_margin:
        return settings
    needed = settings.auto_scale_margin * float(norms.max()) / 2
    if needed <= settings.scale:
        return settings
    log.info(
        "influence.scale=auto: scale %.4g instead of %.4g (margin %g over the largest sampled curvature / 2)",
        needed,
        settings.scale,
        settings.auto_scale_margin,
    )
    return replace(settings, scale=needed)


def curvature_report(norms: torch.Tensor, settings: InfluenceSettings) -> dict[str, Any]:
    """The sampled single-example Hessian norms against LiSSA's stable 2 * scale; a warning above it."""
    limit = 2 * settings.scale
    info = {
        "example_curvature_median": float(norms.median()),
        "example_curvature_max": float(norms.max()),
        "example_curvature_frac_above_2scale": float((norms > limit).double().mean()),
    }
    log.info(
        "single-example Hessian norm over %d training examples: median %.4g, max %.4g (LiSSA stable below "
        "2*scale = %.4g)",
        len(norms),
        info["example_curvature_median"],
        info["example_curvature_max"],
        limit,
    )
    if info["example_curvature_max"] > limit:
        log.warning(
            "%.0f%% of the sampled single-example Hessians have norm above 2*scale = %.4g: each draw of such "
            "an example amplifies h, so LiSSA may diverge (or be noisy); influence.scale above %.4g avoids "
            "it",
            100 * info["example_curvature_frac_above_2scale"],
            limit,
            info["example_curvature_max"] / 2,
        )
    return info


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    max_iter: int,
    tol: float,
    on_iter: Callable[[int, float], None] | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Solve A x = b for symmetric positive definite A given as `matvec`; stop at |r| <= tol |b|.

    Raises on non-positive curvature (A not positive definite: the ridge is too small
    for a non-convex loss), because CG's answer would then be meaningless.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = float(r @ r)
    b_norm = float(torch.linalg.vector_norm(b))
    iters = 0
    while iters < max_iter and rr**0.5 > tol * b_norm:
        ap = matvec(p)
        curvature = float(p @ ap)
        if curvature <= 0:
            rayleigh = curvature / float(p @ p)
            raise RuntimeError(
                f"CG met non-positive curvature at iteration {iters}: the matrix has an eigenvalue <= {rayleigh:.3g} "
                "(not positive definite); for (H + lambda I) raise influence.cg_lambda by more than "
                f"{-rayleigh:.3g} (or influence.damping / influence.scale)"
            )
        alpha = rr / curvature
        x += alpha * p
        r -= alpha * ap
        rr_new = float(r @ r)
        p = r + (rr_new / rr) * p
        rr = rr_new
        iters += 1
        if on_iter is not None:
            on_iter(iters, rr**0.5 / b_norm)
    rel = rr**0.5 / b_norm if b_norm else 0.0
    return x, {"cg_iters": iters, "cg_rel_residual": rel, "cg_converged": rel <= tol}


def cg_h_sum(
    loss: ModelLoss,
    removed_x: torch.Tensor,
    removed_y: torch.Tensor,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    settings: InfluenceSettings,
    on_progress: Progress | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """sum_z scale * (H + lam I)^-1 grad L(z) (flat), H over all of (train_x, train_y): LiSSA's target, solved.

    The solve is linear in the right-hand side, so one CG on sum_z grad L(z) suffices.
    """
    b = loss.flatten({n: t.sum(0) for n, t in loss.example_grads(removed_x, removed_y).items()})
    lam = settings.lam
    start = time.perf_counter()

    def matvec(u: torch.Tensor) -> torch.Tensor:
        return loss.flatten(loss.dataset_hvp(train_x, train_y, loss.unflatten(u), settings.hvp_batch_size)) + lam * u

    def on_iter(it: int, rel: float) -> None:
        log.info(
            "CG iteration %d/%d  relative residual %.3g  elapsed %s",
            it,
            settings.cg_max_iter,
            rel,
            _fmt_s(time.perf_counter() - start),
        )
        if on_progress is not None:
            on_progress()

    x, info = conjugate_gradient(matvec, b, settings.cg_max_iter, settings.cg_tol, on_iter)
    info.update(scale_used=settings.scale, lambda_used=lam)
    if not info["cg_converged"]:
        log.warning(
            "CG stopped after %d iterations at relative residual %.3g > cg_tol %.3g",
            info["cg_iters"],
            info["cg_rel_residual"],
            settings.cg_tol,
        )
    return settings.scale * x, info


def group_update(h_sum: torch.Tensor, n_removed: int, n_train: int) -> torch.Tensor:
    """The parameter change sum_z h_z / ((1 - p) N), p = n / N (the original applies theta - (-this))."""
    if not 0 < n_removed < n_train:
        raise ValueError(f"group influence needs 0 < removed ({n_removed}) < training set size ({n_train})")
    p = n_removed / n_train
    return h_sum / ((1 - p) * n_train)


def group_influence(
    model: nn.Module,
    removed_x: torch.Tensor,
    removed_y: torch.Tensor,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    settings: InfluenceSettings,
    on_progress: Progress | None = None,
) -> InfluenceResult:
    """The group-influence update of `model` (eval mode) for removing (removed_x, removed_y).

    (train_x, train_y) is the set whose Hessian is used and whose size is N
    (the original: the full poisoned training set). The model is not changed;
    :func:`apply_update` applies ``result.delta``.
    """
    loss = ModelLoss(model)
    solve = lissa_h_sum if settings.solver == "lissa" else cg_h_sum
    h_sum, info = solve(loss, removed_x, removed_y, train_x, train_y, settings, on_progress)
    return InfluenceResult(delta=group_update(h_sum, len(removed_y), len(train_y)), h_sum=h_sum, info=info)


def apply_update(model: nn.Module, delta: torch.Tensor) -> None:
    """theta <- theta + delta on the model's trainable parameters (flat, in parameter order), in place."""
    ModelLoss(model).add_to_model(delta)
