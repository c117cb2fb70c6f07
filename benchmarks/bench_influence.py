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
    python benchmarks/bench_influence.py --data-root ../shared/data --device cuda
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from common import Row, Timer, load_images, markdown_table, tensors

from rarespur.methods.deletion.influence import InfluenceSettings, group_influence
from rarespur.models import build_model

BENCHMARK = "influence"


@dataclass(frozen=True)
class InfluenceSizes:
    """n removed examples, r repeats (n x r LiSSA chains) of `depth` steps each; the loop baseline is timed on
    `baseline_steps` steps; `train` keeps the first training images (None: all)."""

    n: int = 3
    repeats: int = 10
    depth: int = 2000
    chain_batch: int = 64
    baseline_steps: int = 200
    train: int | None = None


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
    with Timer(x.device) as timer:
        for _ in range(steps):
            i = int(torch.randint(len(y), (1,), generator=gen))
            hv = original_hvp(model, x[i : i + 1], y[i : i + 1], h)
            h = [a + (1 - damping) * b - c / scale for a, b, c in zip(v, h, hv)]
    return timer.seconds / steps


def influence_rows(
    data_root: str,
    dataset: str,
    sizes: InfluenceSizes,
    device: torch.device,
    weights: str | None = None,
) -> list[Row]:
    """Ours measured in full against the per-chain loop extrapolated from `sizes.baseline_steps` steps, on LargeMLP
    at its initialization (or the model.pt `weights`)."""
    data = load_images(dataset, data_root, train=sizes.train)
    x, y = tensors(data.train_x, data.train_y, device)
    h, w, c = data.image_shape
    torch.manual_seed(0)
    model = build_model("largemlp", (c, h, w), data.num_classes).eval()
    if weights:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.to(device)
    settings = InfluenceSettings(
        depth=sizes.depth,
        repeats=sizes.repeats,
        chain_batch=sizes.chain_batch,
        scale=25.0,
        damping=0.01,
        log_every=max(1, sizes.depth // 5),
    )
    chains = sizes.n * sizes.repeats
    per_step = baseline_seconds_per_step(model, x, y, sizes.baseline_steps, settings.damping, settings.scale)
    with Timer(device) as timer:
        result = group_influence(model, x[: sizes.n], y[: sizes.n], x, y, settings)
    return [
        Row(
            BENCHMARK,
            f"LiSSA n={sizes.n} r={sizes.repeats} depth={sizes.depth}: vmapped chains vs per-chain loop",
            timer.seconds,
            per_step * chains * sizes.depth,
            note=f"LargeMLP/{dataset}, N={len(y)}, {chains} chains; loop extrapolated from {sizes.baseline_steps} "
            f"steps ({per_step * 1e3:.2f} ms/step); |update| {float(result.delta.norm()):.4g}",
            peak_bytes=timer.peak_bytes,
        )
    ]


def measure(device: str, quick: bool, data_root: str) -> list[Row]:
    """benchmarks/all.py's sizes. Quick: 1,000 MNIST images, n=3, r=2, depth 10, the loop timed on 10 steps. Full:
    docs/benchmarks.md's, all 60,000 images, n=3, r=10, depth 2000, the loop timed on 200 steps."""
    sizes = InfluenceSizes(repeats=2, depth=10, baseline_steps=10, train=1_000) if quick else InfluenceSizes()
    return influence_rows(data_root, "mnist", sizes, torch.device(device))


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
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    sizes = InfluenceSizes(args.n, args.repeats, args.depth, args.chain_batch, args.baseline_steps)
    rows = influence_rows(args.data_root, args.dataset, sizes, torch.device(args.device), args.model)
    print(f"threads={torch.get_num_threads()}, device {args.device}\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
