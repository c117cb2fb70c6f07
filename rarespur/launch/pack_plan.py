"""Which jobs of a sweep run together in one process (``pack.size``, ``pack.chain``), and the files that say so.

Jobs pack when their resolved configs differ only in what a pack can vary per
model (:data:`PER_MODEL_KEYS`: the pattern, the poisoning, the model seed, the
weight decay or noise strength, the scoring settings) and their experiment and
training objective can be packed (:func:`why_not_packed`). A plan is a list of
launcher jobs: each job that cannot pack keeps its own overrides, and each pack
becomes one job, the overrides of its first member plus ``pack.members=<file>``,
a JSON file with every member's resolved config (see :mod:`rarespur.launch.pack_job`).
Jobs whose run is already done (and not corrupt) are left out, so a relaunch packs only the rest. ``pack.size``
counts the models a pack trains: clean baselines that differ only in how they are scored train one.

``pack.chain=K`` puts the jobs that would still launch one by one (they cannot pack, or nothing is left
to pack them with) K to a launcher job, run one after another in one process: a job alone spends
seconds starting (interpreter, torch, Hydra, the data) before its first epoch (docs/benchmarks.md), and
a chain pays that once. A chain's file is a pack file marked ``chained``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from rarespur.config.resolve import without_keys
from rarespur.engine.packed_loop import PER_MODEL_SETTINGS
from rarespur.errors import MissingFileError, UserError
from rarespur.experiments import EXPERIMENTS, get_experiment
from rarespur.experiments.steps import train_settings
from rarespur.launch.arrays import finished
from rarespur.methods.regularizers import build_objective, objective_class
from rarespur.models import build_model
from rarespur.store.atomic import write_atomic
from rarespur.store.run_dir import RunDir, training_key

log = logging.getLogger(__name__)

# Dotted keys (or whole nodes) that may differ between the models of one pack.
PER_MODEL_KEYS = (
    "pattern",
    "poison.count",
    "poison.target",
    "poison.seed",
    "train.model_seed",
    "train.weight_decay",
    "regularizer.strength",
    "eval",
    "pack",
)
Member = tuple[Sequence[str], dict[str, Any]]  # a job's overrides and its resolved config


def why_not_packed(resolved: dict[str, Any]) -> str | None:
    """Why the job of `resolved` must run alone (None: it can be packed)."""
    if get_experiment(resolved["experiment"]).run_pack is None:
        packed = sorted(name for name, experiment in EXPERIMENTS.items() if experiment.run_pack is not None)
        return f"experiment={resolved['experiment']['name']} is not packed (packed: {', '.join(packed)})"
    reg = resolved["regularizer"]
    why = objective_class(reg).why_not_packed()
    if why:
        return f"regularizer={reg['name']}: {why}"
    if has_dropout(resolved["model"]["name"]):
        return (
            f"model={resolved['model']['name']} has dropout, whose masks come from torch's global generator: "
            "in a pack they would differ from the masks the model draws alone"
        )
    return None


@functools.cache
def has_dropout(model_name: str) -> bool:
    """Whether the architecture has dropout layers (built without memory, on the meta device)."""
    for shape in ((1, 28, 28), (3, 32, 32)):  # whichever input the architecture accepts; dropout does not care
        try:
            with torch.device("meta"):
                model = build_model(model_name, shape, 10)
        except (ValueError, RuntimeError):
            continue
        return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())
    return False


def pack_key(resolved: dict[str, Any]) -> str:
    """Equal for exactly the configs that may share a pack: the config without its per-model keys, and the
    training settings their regularizer makes of it but for those a pack sets per model."""
    shared = without_keys(resolved, PER_MODEL_KEYS)
    settings = asdict(build_objective(resolved["regularizer"]).adjust(train_settings(resolved)))
    shared["adjusted"] = {k: v for k, v in settings.items() if k not in PER_MODEL_SETTINGS}
    blob = json.dumps(shared, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Plan:
    """The launcher jobs of a packed sweep, and what became of the sweep's jobs."""

    launches: list[list[str]] = field(default_factory=list)
    runs: list[list[tuple[str, str]]] = field(default_factory=list)  # per launch: (results_dir, run key) of each job
    packs: int = 0  # launcher jobs that train several models
    packed_jobs: int = 0  # sweep jobs inside those packs
    chains: int = 0  # launcher jobs that run several jobs one after another
    chained_jobs: int = 0  # sweep jobs inside those chains
    done: int = 0  # sweep jobs left out because their run is already done
    held: int = 0  # sweep jobs left out because the scheduler already holds them (queued or running)
    alone: Counter = field(default_factory=Counter)  # why jobs run one per launcher job -> how many

    def describe(self, size: int, chain: int = 1) -> str:
        chained = f"{self.chained_jobs} of them in {self.chains} chain(s) of up to {chain}, " if chain > 1 else ""
        lines = [
            f"pack.size={size}: {self.packed_jobs} job(s) in {self.packs} pack(s), "
            f"{sum(self.alone.values())} alone ({chained.rstrip(', ') or 'one per launcher job'}), "
            f"{self.done} already done (not launched): {len(self.launches)} launcher job(s)"
        ]
        if self.held:
            lines.append(f"  {self.held} job(s) already queued or running on the cluster: not submitted again")
        lines += [f"  {count} job(s) run alone: {why}" for why, count in self.alone.items()]
        return "\n".join(lines)


def plan_packs(
    jobs: Sequence[Sequence[str]],
    resolve: Callable[[Sequence[str]], dict[str, Any]],
    size: int,
    pack_dir: Path,
    held: Callable[[dict[str, Any]], bool] | None = None,
    chain: int = 1,
) -> Plan:
    """Group `jobs` (override lists, in launch order) into packs of at most `size`, and the jobs left alone
    into chains of at most `chain`; write the pack files.

    `resolve` gives a job's resolved config with an absolute ``results_dir``. A job it cannot
    resolve runs alone, so it fails on its own with its message, as without packing.
    """
    plan = Plan()
    groups: dict[str, list[Member]] = {}
    order: list[tuple] = []  # launch order: ("alone", overrides[, resolved]) or ("pack", key)
    for job in jobs:
        try:
            resolved = resolve(job)
        except (UserError, ValueError):
            plan.alone["its config does not resolve (the job reports why)"] += 1
            order.append(("alone", job, None))
            continue
        if finished(RunDir(resolved["results_dir"], resolved)):
            plan.done += 1
            continue
        if held is not None and held(resolved):
            plan.held += 1
            continue
        why = why_not_packed(resolved)
        if why is not None:
            plan.alone[why] += 1
            order.append(("alone", job, resolved))
            continue
        key = pack_key(resolved)
        if key not in groups:
            groups[key] = []
            order.append(("pack", key))
        groups[key].append((job, resolved))
    pending: list[Member] = []  # jobs that launch one by one, or chained `chain` to a launcher job

    def single(member: Member) -> None:
        pending.append(member)
        if len(pending) == chain:
            _add_chain(plan, pack_dir, pending[:])
            pending.clear()

    for kind, item, *resolved in order:
        if kind == "pack":
            _add_packs(plan, pack_dir, groups[item], size, single)
        elif resolved[0] is None:  # it fails on its own, with its message
            plan.launches.append(list(item))
            plan.runs.append([])
        else:
            single((item, resolved[0]))
    if pending:
        _add_chain(plan, pack_dir, pending)
    return plan


def _add_packs(plan: Plan, pack_dir: Path, members: list[Member], size: int, single: Callable[[Member], None]) -> None:
    """One launcher job per pack of `members` (at most `size` models each), in order; a member left alone
    goes to `single`. At ``pack.size=1`` nothing packs, not even the clean baselines that share a model."""
    if size == 1:
        plan.alone["pack.size=1 packs nothing"] += len(members)
        for member in members:
            single(member)
        return
    for chunk in _chunks(members, size):
        if len(chunk) == 1:
            plan.alone["the only job of its recipe left to run"] += 1
            single(chunk[0])
            continue
        plan.runs.append(_runs([member for _, member in chunk]))
        plan.launches.append(_pack_launch(pack_dir, chunk, chained=False))
        plan.packs += 1
        plan.packed_jobs += len(chunk)


def _add_chain(plan: Plan, pack_dir: Path, links: list[Member]) -> None:
    """One launcher job for `links`: the job itself when it is one, else a chain that runs them in turn."""
    plan.runs.append(_runs([member for _, member in links]))
    if len(links) == 1:
        plan.launches.append(list(links[0][0]))
        return
    plan.launches.append(_pack_launch(pack_dir, links, chained=True))
    plan.chains += 1
    plan.chained_jobs += len(links)


def _pack_launch(pack_dir: Path, members: list[Member], chained: bool) -> list[str]:
    """The launcher job of a pack or chain: its first member's overrides and the file that lists them all."""
    path = str(write_pack_file(pack_dir, [resolved for _, resolved in members], chained))
    quoted = path.replace("\\", "\\\\").replace("'", "\\'")  # a Hydra quoted value
    return [*members[0][0], f"pack.members='{quoted}'"]


def _runs(resolved: Sequence[dict[str, Any] | None]) -> list[tuple[str, str]]:
    return [(config["results_dir"], RunDir(config["results_dir"], config).key) for config in resolved if config]


def _chunks(members: list[Member], size: int) -> list[list[Member]]:
    """Members in packs that train at most `size` models each, as few packs as fit and as even as can be
    (11 at size 5: 3 + 4 + 4). Members that train the same weights (clean baselines scored with other
    patterns or seeds) count once and stay in one pack, which trains that model once for all of them."""
    units: dict[str, list] = {}
    for member in members:
        units.setdefault(training_key(member[1]), []).append(member)
    trainings = list(units.values())
    packs = -(-len(trainings) // size)
    return [
        [m for unit in trainings[p * len(trainings) // packs : (p + 1) * len(trainings) // packs] for m in unit]
        for p in range(packs)
    ]


def pack_id(members: Sequence[dict[str, Any]], chained: bool = False) -> str:
    """A pack's (or chain's) name: the same members (by run key) give the same name, whichever sweep
    launched them."""
    keys = sorted(RunDir("", cfg).key for cfg in members)
    return ("chain-" if chained else "pack-") + hashlib.sha256(",".join(keys).encode()).hexdigest()[:12]


def write_pack_file(pack_dir: Path, members: Sequence[dict[str, Any]], chained: bool = False) -> Path:
    """The file a packed (or chained) launcher job reads its members from."""
    name = pack_id(members, chained)
    pack_dir.mkdir(parents=True, exist_ok=True)
    path = pack_dir / f"{name}.json"
    write_atomic(path, json.dumps({"pack": name, "chained": chained, "members": list(members)}, default=str))
    return path


def read_pack_file(path: str | Path) -> tuple[str, list[dict[str, Any]], bool]:
    """(name, member configs, whether they run one after another) of a pack file."""
    try:
        spec = json.loads(Path(path).read_text())
        return spec["pack"], spec["members"], bool(spec.get("chained", False))
    except FileNotFoundError:
        raise MissingFileError(
            f"pack.members={path}: no such pack file; it is written by the sweep that launches the pack "
            "(run.py -m ... pack.size=K), so launch the sweep again"
        ) from None
