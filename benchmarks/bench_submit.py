"""Time to submit a paper grid to SLURM, and time of ``run.py --help``: this checkout vs a baseline commit.

A grid of 8,400 jobs (``mnist_arch``) is only useful if a cluster with SLURM's default limits accepts it
and the launching process can then go. For each ``pack.size`` this runs, side by side on the same
machine and cluster, this checkout and the baseline (an older commit checked out in a temporary git
worktree), with ``hydra.launcher.wait=false`` and every task held in the queue (``--begin=now+1hour``),
and reports the seconds from the command to "all arrays submitted" (or to the scheduler's refusal),
how many tasks squeue holds, then cancels them. ``--help`` is timed the same way (best of 3).

Needs a SLURM controller (e.g. ``bash ../shared/slurm/slurm-ci-up.sh``) and the data for the grid:

    python benchmarks/bench_submit.py --data-root ../shared/data                     # baseline 116a3d6
    python benchmarks/bench_submit.py --data-root ../shared/data --sweep mnist_score --packs 1
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUBMITTED = " submitted in "  # "all N array(s) submitted in" before the pool rewrite, "N job(s) submitted in" now
REFUSED = ("Invalid job array specification", "Batch job submission failed")


def submit(code: Path, sweep: str, pack_size: int, data_root: str, work: Path) -> tuple[str, float, int]:
    """(outcome, seconds to it, tasks in the queue) of launching `sweep` from the checkout `code`; cancels them."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    cmd = [
        sys.executable, "run.py", "-m", "--config-dir", "sweeps", "--config-name", sweep, "+cluster=slurm_ci",
        f"pack.size={pack_size}", f"data.root={Path(data_root).resolve()}", f"results_dir={work / 'store'}",
        f"hydra.sweep.dir={work / 'multirun'}", f"hydra.launcher.name={name}",
        "+hydra.launcher.additional_parameters={begin:now+1hour}",
    ]  # fmt: skip
    if (code / "hydra_plugins" / "rarespur_launchers" / "slurm.py").exists():  # older launchers have no `wait`
        cmd.append("hydra.launcher.wait=false")
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=code, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outcome, took = "exited without submitting", 0.0
    tail: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = [*tail[-4:], line.rstrip()]
            if SUBMITTED in line:
                outcome, took = "all arrays submitted", time.perf_counter() - started
                break
            if any(word in line for word in REFUSED):
                outcome, took = "refused by sbatch", time.perf_counter() - started
                break
        else:
            took = time.perf_counter() - started
            outcome += ": " + " / ".join(tail)[-300:]
    finally:
        proc.kill()
        proc.wait()
    queued = subprocess.run(["squeue", "-h", "-r", "--name", name, "-o", "%i"], capture_output=True, text=True)
    subprocess.run(["scancel", "--name", name], check=False)
    return outcome, took, len(queued.stdout.split())


def help_seconds(code: Path) -> float:
    times = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([sys.executable, "run.py", "--help"], cwd=code, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="folder with MNIST (../shared/data)")
    parser.add_argument("--sweep", default="mnist_arch", help="sweep file in sweeps/ (default mnist_arch, 8,400 jobs)")
    parser.add_argument("--packs", default="1,64", help="pack.size values, comma-separated")
    parser.add_argument("--baseline", default="116a3d6", help="commit to compare with (before issue 23)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-submit-") as tmp:
        old = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), args.baseline], cwd=REPO, check=True,
                       capture_output=True)  # fmt: skip
        try:
            rows = []
            for size in [int(p) for p in args.packs.split(",")]:
                for label, code in (("baseline " + args.baseline, old), ("this checkout", REPO)):
                    work = Path(tmp) / f"{label.split()[0]}-{size}"
                    outcome, took, queued = submit(code, args.sweep, size, args.data_root, work)
                    rows.append((f"pack.size={size}", label, outcome, took, queued))
            helps = {"baseline " + args.baseline: help_seconds(old), "this checkout": help_seconds(REPO)}
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO, check=False)

    print(
        f"\n{args.sweep} on the SLURM cluster here (MaxArraySize from scontrol), wait=false, tasks held and cancelled\n"
    )
    print("| setting | code | outcome | s from command | tasks in queue |")
    print("|---|---|---|---|---|")
    for setting, label, outcome, took, queued in rows:
        print(f"| {setting} | {label} | {outcome} | {took:.1f} | {queued} |")
    old_help, new_help = helps.values()
    print(f"\n`run.py --help` (best of 3): baseline {old_help:.2f} s, this checkout {new_help:.2f} s, "
          f"{old_help / new_help:.1f}x faster")  # fmt: skip


if __name__ == "__main__":
    main()
