"""A job's fixed cost: the seconds of ``python run.py ...`` that are not its training epochs, stage by stage.

Each measurement is one fresh process running ``run.py``'s Hydra entry point on a fresh results folder, with
timers wrapped around the functions every version of the job calls (so the same driver measures an older
commit, checked out in a temporary git worktree, side by side with this checkout):

- interpreter start and exit: the process's wall time less everything timed inside it;
- ``import torch``, then ``torch._dynamo``, which torch's optimizers import on their first step;
- the other imports: Hydra, ``run.py`` and the runner (and what they pull in);
- Hydra: composing the config and setting the job up, until the runner starts;
- data: loading (decoding, or the memory-mapped cache) and the data's fingerprint;
- model build; the first epoch's warm-up (its time beyond the median of the later epochs);
- scoring; git provenance; writing the record; the rest of the runner (resolve, store, experiment checks).

The fixed cost is the wall time less ``epochs x median epoch``. Stages nest (the fingerprint inside data
loading): each second counts once, for the innermost stage running.

``--chain K`` also measures K such jobs (model seeds 0..K-1) chained in one process, as ``pack.chain=K``
launches them (:mod:`rarespur.launch.pack_plan`): the fixed cost per job is then the process's wall time
less every job's epochs, divided by K.

    python benchmarks/bench_job.py --data-root ../shared/data                       # this checkout
    python benchmarks/bench_job.py --data-root ../shared/data --baseline 32728eb    # and an older commit beside it
    python benchmarks/bench_job.py --data-root ../shared/data --chain 8             # alone and 8 in one chain
"""

from __future__ import annotations

import json
import os
import sys
import time

STAGES_FLAG = "--stages"


def _driver(tree: str, overrides: list[str]) -> None:
    """Inside the measured process: time the stages of ``run.py`` in `tree` and print them as one JSON line."""
    started = time.perf_counter()
    stages: dict[str, float] = {}
    epochs: list[float] = []
    stack: list[list] = []  # [stage, start of its current uncounted stretch]

    def charge(stage: str, seconds: float) -> None:
        stages[stage] = stages.get(stage, 0.0) + seconds

    def timed(stage: str, fn):
        def wrapper(*args, **kwargs):
            now = time.perf_counter()
            if stack:
                charge(stack[-1][0], now - stack[-1][1])
            stack.append([stage, now])
            try:
                return fn(*args, **kwargs)
            finally:
                end = time.perf_counter()
                name, since = stack.pop()
                charge(name, end - since)
                if name == "epochs":
                    epochs.append(stages.pop("epochs"))
                if stack:
                    stack[-1][1] = end

        return wrapper

    mark = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        charge(stage, now - mark)
        mark = now

    import torch  # noqa: F401

    lap("import torch")
    import torch._dynamo  # noqa: F401

    lap("import torch._dynamo")
    import runpy

    import hydra  # noqa: F401  (what run.py imports at its top)

    import rarespur
    import rarespur.launch.fast_help  # noqa: F401
    import rarespur.launch.pack_job  # noqa: F401
    import rarespur.launch.runner as runner

    if not rarespur.__file__.startswith(tree):
        raise SystemExit(f"measured {rarespur.__file__}, not the package of {tree}: set PYTHONPATH={tree}")
    lap("imports: hydra, run.py, runner")
    import rarespur.engine.loop as loop
    import rarespur.experiments.steps as steps

    steps._load_clean = timed("data: load", steps._load_clean)
    steps.data_fingerprint = timed("data: fingerprint", steps.data_fingerprint)
    steps.build_model = timed("model build", steps.build_model)
    steps.score_model = timed("scoring", steps.score_model)
    loop._epoch = timed("epochs", loop._epoch)
    runner.where_it_ran = timed("provenance (git)", runner.where_it_ran)
    runner.commit = timed("record", runner.commit)
    runner.run_job = timed("runner: resolve, store, checks", runner.run_job)
    for name in ("run_job", "where_it_ran", "commit"):  # a pack or chain calls them through its own module
        if hasattr(rarespur.launch.pack_job, name):
            setattr(rarespur.launch.pack_job, name, getattr(runner, name))
    sys.argv = [f"{tree}/run.py", *overrides]
    charged = sum(stages.values()) + sum(epochs)

    def finish() -> None:
        # what the timers inside the job did not take: Hydra's composition, job setup and teardown
        inside_job = time.perf_counter() - mark - (sum(stages.values()) + sum(epochs) - charged)
        charge("hydra: composition and job setup", inside_job)
        print(json.dumps({"stages": stages, "epochs": epochs, "inside": time.perf_counter() - started}), flush=True)

    try:  # a run.py that leaves without the interpreter's teardown: report just before it does
        import rarespur.launch.process_exit as process_exit

        leave = process_exit.exit_now
        process_exit.exit_now = lambda code=0: (finish(), leave(code))
    except ImportError:
        process_exit = None
    try:
        runpy.run_path(f"{tree}/run.py", run_name="__main__")  # as ``python run.py``: Hydra finds conf/ beside it
    except SystemExit as end:
        if end.code:
            raise
    finish()


if __name__ == "__main__" and STAGES_FLAG in sys.argv:
    at = sys.argv.index(STAGES_FLAG)
    _driver(sys.argv[at + 1], sys.argv[at + 2 :])
    sys.exit(0)

import argparse  # noqa: E402
import functools  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from common import JOB_KEY, Row, worktree  # noqa: E402

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
ORDER = (
    "interpreter start and exit",
    "import torch",
    "import torch._dynamo",
    "imports: hydra, run.py, runner",
    "hydra: composition and job setup",
    "runner: resolve, store, checks",
    "data: load",
    "data: fingerprint",
    "model build",
    "first epoch warm-up",
    "scoring",
    "provenance (git)",
    "record",
)


def job_overrides(data_root: str, results: Path, device: str, quick: bool) -> list[str]:
    """A plain MNIST train job: the full dataset for 3 epochs, or (quick) 1,000 images for 2."""
    limits = ["data.train_limit=1000", "data.test_limit=1000"] if quick else []
    return [
        "dataset=mnist",
        f"data.root={Path(data_root).resolve()}",
        f"epochs={2 if quick else 3}",
        f"device={device}",
        f"results_dir={results}",
        f"hydra.run.dir={results}/hydra",
        "progress=false",
        *limits,
    ]


def one_job(tree: Path, overrides: list[str]) -> dict[str, float]:
    """Stage seconds of one fresh ``run.py`` process on `tree` (``epochs``: the steady epochs' seconds)."""
    # Bytecode is cached as on a user's machine (some sandboxes turn that off): compiling the package's
    # sources again in every process is not a cost a job has.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | {"PYTHONPATH": str(tree)}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(HERE), STAGES_FLAG, str(tree), *overrides],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"the job on {tree} failed:\n{done.stderr[-2000:]}")
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    epochs = measured["epochs"]
    steady = statistics.median(epochs[1:]) if len(epochs) > 1 else 0.0
    stages = dict(measured["stages"])
    stages["first epoch warm-up"] = epochs[0] - steady
    stages["interpreter start and exit"] = wall - measured["inside"]
    stages["epochs"] = steady * len(epochs)
    stages["wall"] = wall
    stages["fixed"] = wall - steady * len(epochs)
    return stages


def chain_job(tree: Path, overrides: list[str], k: int, results: Path) -> dict[str, float]:
    """Stage seconds of one fresh process running `k` jobs of `overrides` (model seeds 0..k-1) as a chain,
    the launcher job ``pack.chain=k`` makes of them; ``fixed`` is then per job."""
    from rarespur.launch.pack_plan import write_pack_file
    from rarespur.launch.sweep import Sweep

    seeds = ",".join(str(seed) for seed in range(k))
    sweep = Sweep(None, [*(o for o in overrides if not o.startswith("hydra.")), f"train.model_seed={seeds}"])
    members = [sweep.resolved_here(job) for job in sweep.job_overrides]
    path = write_pack_file(results / "chains", members, chained=True)
    stages = one_job(tree, [*overrides, f"pack.members={path}"])
    return {**stages, "fixed": stages["fixed"] / k}


def median_stages(
    trees: dict[str, Path], overrides_for, repeats: int, warm_up: bool = True, chain: int = 0
) -> dict[str, dict[str, float]]:
    """Per tree, the median of each stage over `repeats` processes; the trees take turns, so a change in the
    machine's load falls on both alike. `warm_up`: one untimed process per tree first, which writes the
    bytecode and the data's array cache that any earlier job leaves behind. `chain` > 1: this checkout's
    jobs chained that many to a process, as one more column (``chain of K``)."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    if chain > 1:
        runs[f"chain of {chain}"] = []
    for tree in trees.values() if warm_up else ():
        with tempfile.TemporaryDirectory(prefix="bench-job-") as results:
            one_job(tree, overrides_for(Path(results)))
    for _ in range(repeats):
        for name, tree in trees.items():
            with tempfile.TemporaryDirectory(prefix="bench-job-") as results:
                runs[name].append(one_job(tree, overrides_for(Path(results))))
        if chain > 1:
            with tempfile.TemporaryDirectory(prefix="bench-job-") as results:
                runs[f"chain of {chain}"].append(chain_job(REPO, overrides_for(Path(results)), chain, Path(results)))
    return {
        name: {key: statistics.median(run.get(key, 0.0) for run in measured) for key in measured[0]}
        for name, measured in runs.items()
    }


CHAIN = 8  # jobs per chained process in measure()


def measure(device: str, quick: bool, data_root: str, repeats: int = 3) -> list[Row]:
    """This checkout's fixed cost per job and its stages (no baseline: ``--baseline`` compares commits), and
    per job in a chain of 8 (of 2 when quick) against alone; quick: one process of the quick job."""
    repeats = 1 if quick else repeats
    chain = 2 if quick else CHAIN
    overrides = functools.partial(job_overrides, data_root, device=device, quick=quick)
    measured = median_stages({"this checkout": REPO}, lambda results: overrides(results=results), repeats, chain=chain)
    stages = measured["this checkout"]
    case = f"MNIST{' 1,000 images' if quick else ''}, {2 if quick else 3} epochs"
    rows = [Row("job", f"fixed cost of one job ({case})", stages["fixed"], None, "s", key=JOB_KEY)]
    rows += [Row("job", f"  {name}", stages.get(name, 0.0), None, "s") for name in ORDER]
    per_job = measured[f"chain of {chain}"]["fixed"]
    rows.append(Row("job", f"fixed cost per job, {chain} chained in one process vs alone", per_job, stages["fixed"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="1,000 training images and 2 epochs")
    parser.add_argument("--repeats", type=int, default=3, help="processes per tree (the median is shown)")
    parser.add_argument("--baseline", help="a git revision to measure side by side (e.g. the commit before)")
    parser.add_argument("--chain", type=int, default=0, help="also K jobs chained in one process (pack.chain=K)")
    args = parser.parse_args()

    def overrides(results: Path) -> list[str]:
        return job_overrides(args.data_root, results, args.device, args.quick)

    if args.baseline:
        with worktree(args.baseline) as tree:
            trees = {args.baseline: tree, "this checkout": REPO}
            measured = median_stages(trees, overrides, args.repeats, chain=args.chain)
    else:
        measured = median_stages({"this checkout": REPO}, overrides, args.repeats, chain=args.chain)
    names = list(measured)
    print(f"one job: {' '.join(overrides(Path('RESULTS')))}")
    print(f"median of {args.repeats} fresh processes each; seconds")
    print(f"| stage | {' | '.join(names)} |")
    print(f"|---|{'---:|' * len(names)}")
    for stage in (*ORDER, "fixed", "epochs", "wall"):
        label = {"fixed": "**fixed cost (wall less the epochs)**", "epochs": "epochs (steady)", "wall": "wall"}.get(
            stage, stage
        )
        print(f"| {label} | {' | '.join(f'{measured[n].get(stage, 0.0):.2f}' for n in names)} |")
    if args.chain > 1:
        print(f"(chain of {args.chain}: every stage summed over its {args.chain} jobs; the fixed cost is per job)")
    for before_name, after_name in zip(names, names[1:]):
        before, after = measured[before_name]["fixed"], measured[after_name]["fixed"]
        print(
            f"fixed cost per job, {before_name} -> {after_name}: {before:.2f} s -> {after:.2f} s ({before / after:.2f}x)"
        )


if __name__ == "__main__":
    main()
