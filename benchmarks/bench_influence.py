"""Wall time of group influence (LiSSA, docs/science.md#deletion) on LargeMLP / MNIST: our vmapped chains vs a plain
loop.

Ours (rarespur.methods.deletion.influence.group_influence) advances all n x r LiSSA
chains together: one vmapped torch.func HVP per step, each chain with its own
training example and vector, and the recursion in place on per-parameter
tensors. The baseline is the original's arithmetic run chain by chain, step
by step: one ``torch.autograd.grad`` double backward (the original's ``hvp``)
per chain and step on one random training example. The baseline is timed on
``--baseline-steps`` steps of one chain and extrapolated linearly to
n x r x depth (every step costs the same); ours is timed in full.
Speed does not depend on the weights, so the model is LargeMLP at its
initialization (``--model`` loads a model.pt instead).

    OMP_NUM_THREADS=1 python benchmarks/bench_influence.py --data-root ../shared/data --threads 1
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
import torch.nn.functional as F

from rarespur.data.loaders import load_dataset
from rarespur.engine.scoring import to_tensor
from rarespur.methods.deletion.influence import InfluenceSettings, group_influence
from rarespur.models import build_model


def original_hvp(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, vec: list[torch.Tensor]
) -> list[torch.Tensor]:
    """The original's ``hvp``: grad with create_graph, dot with vec, grad again."""
    params = [p for p in model.parameters() if p.requires_grad]
    first = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
    dot = sum(torch.sum(g * v) for g, v in zip(first, vec))
    return [t.detach() for t in torch.autograd.grad(dot, params)]


def baseline_seconds_per_step(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, damping: float, scale: float
) -> float:
    """Seconds of one LiSSA step of one chain, the original's way (one example, one double backward)."""
    params = [p for p in model.parameters() if p.requires_grad]
    v = [t.detach() for t in torch.autograd.grad(F.cross_entropy(model(x[:1]), y[:1]), params)]
    h = [t.clone() for t in v]
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        i = int(torch.randint(len(y), (1,), generator=gen))
        hv = original_hvp(model, x[i : i + 1], y[i : i + 1], h)
        h = [a + (1 - damping) * b - c / scale for a, b, c in zip(v, h, hv)]
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--model", default=None, help="a model.pt of LargeMLP to load (default: initial weights)")
    parser.add_argument("--n", type=int, default=3, help="removed examples")
    parser.add_argument("--depth", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--chain-batch", type=int, default=64)
    parser.add_argument("--baseline-steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)

    data = load_dataset(args.dataset, root=args.data_root, download=False)
    x, y = to_tensor(data.train_x, torch.device("cpu")), torch.from_numpy(data.train_y)
    h, w, c = data.image_shape
    torch.manual_seed(0)
    model = build_model("largemlp", (c, h, w), data.num_classes).eval()
    if args.model:
        model.load_state_dict(torch.load(args.model, map_location="cpu", weights_only=True))
    settings = InfluenceSettings(
        depth=args.depth,
        repeats=args.repeats,
        chain_batch=args.chain_batch,
        scale=25.0,
        damping=0.01,
        log_every=max(1, args.depth // 5),
    )
    chains = args.n * args.repeats

    per_step = baseline_seconds_per_step(model, x, y, args.baseline_steps, settings.damping, settings.scale)
    baseline = per_step * chains * args.depth
    start = time.perf_counter()
    result = group_influence(model, x[: args.n], y[: args.n], x, y, settings)
    ours = time.perf_counter() - start
    print(
        f"LargeMLP/{args.dataset}: n={args.n} r={args.repeats} depth={args.depth} ({chains} chains), "
        f"N={len(y)}, threads={torch.get_num_threads()}"
    )
    print(f"  ours (vmapped chains, measured):        {ours:8.1f} s   |update| {float(result.delta.norm()):.4g}")
    print(
        f"  plain per-chain loop (extrapolated from {args.baseline_steps} steps, "
        f"{per_step * 1e3:.2f} ms/step): {baseline:8.1f} s"
    )
    print(f"  speed-up: {baseline / ours:.1f}x")


if __name__ == "__main__":
    main()
