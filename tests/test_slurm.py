"""Sweeps through a REAL SLURM cluster: rarespur's SLURM array launcher (submitit underneath) with +cluster=slurm_ci.

Needs the single-node CI cluster (partition ``debug``) of ../shared/slurm:
``bash ../shared/slurm/slurm-ci-up.sh`` (root, ~30 s the first time); .ci/run starts it.
Every test here is marked ``slurm`` (the requeue test also ``slow``) and skips
when ``sinfo`` is not on PATH or no partition ``debug`` answers; with
``RARESPUR_REQUIRE_SLURM=1`` (set by .ci/run once the cluster is up) a missing
cluster is a failure instead of a skip.

The store and sweep folders live under pytest's tmp_path: absolute paths the
jobs can see because the cluster is this machine.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from rarespur.store.run_dir import DONE, RECORD, TRAIN_STATE

from conftest import REPO_ROOT, collect_runs, rarespur_cli

PARTITION = "debug"
REQUIRED = os.environ.get("RARESPUR_REQUIRE_SLURM") == "1"
NO_SINFO = "SLURM not available: `sinfo` is not on PATH (start one with bash ../shared/slurm/slurm-ci-up.sh)"


def _cluster_problem() -> str | None:
    """Why the CI cluster cannot be used here, or None when it can."""
    if shutil.which("sinfo") is None:
        return NO_SINFO
    try:
        out = subprocess.run(["sinfo", "-h", "-p", PARTITION, "-o", "%a"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s (is the SLURM controller up?)"
    if out.returncode != 0:
        return f"sinfo cannot reach a SLURM controller: {out.stderr.strip()[:300]}"
    if "up" not in out.stdout.split():
        return f"no partition {PARTITION!r} that is up (the CI cluster of ../shared/slurm/slurm-ci-up.sh)"
    return None


pytestmark = [pytest.mark.slurm, pytest.mark.skipif(shutil.which("sinfo") is None and not REQUIRED, reason=NO_SINFO)]


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster():
    """Skip (or, with RARESPUR_REQUIRE_SLURM=1, fail) unless the CI cluster answers; asked only when a test runs."""
    problem = _cluster_problem()
    if problem and REQUIRED:
        pytest.fail(f"RARESPUR_REQUIRE_SLURM=1 but {problem}", pytrace=False)
    if problem:
        pytest.skip(problem)


def sweep_command(tmp_path: Path, name: str, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "run.py",
        "-m",
        "+cluster=slurm_ci",
        *overrides,
        f"results_dir={tmp_path / 'store'}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        f"hydra.launcher.name={name}",
    ]


def job_logs(sweep: Path) -> dict[str, str]:
    """SLURM job id (``123`` or array task ``123_4``) -> text of its submitit log."""
    logs = {}
    for folder in (sweep / ".submitit").iterdir():
        log = folder / f"{folder.name}_0_log.out"
        if re.fullmatch(r"\d+(_\d+)?", folder.name) and log.exists():
            logs[folder.name] = log.read_text()
    return logs


def sacct_states(job_ids: list[str], name: str, timeout: float = 30) -> dict[str, str]:
    """Final accounting state of each job; waits while slurmdbd catches up (it records asynchronously)."""
    base_ids = sorted({j.split("_")[0] for j in job_ids})
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-o", "JobID,JobName,State", "-j", ",".join(base_ids)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        states = {}
        for line in out.stdout.splitlines():
            job_id, job_name, state = line.split("|")
            if job_id in job_ids and job_name == name:
                states[job_id] = state.split()[0]  # "CANCELLED by 0" -> "CANCELLED"
        if (
            len(states) == len(job_ids) and all(s == "COMPLETED" for s in states.values())
        ) or time.monotonic() > deadline:
            return states
        time.sleep(1)


def test_sweep_runs_on_slurm_and_lands_in_the_store(tmp_path):
    """3 jobs as one SLURM array: 3 records in the store, 3 rows from collect, 3 COMPLETED jobs in sacct."""
    name = f"rarespur-test-{uuid.uuid4().hex[:8]}"
    cmd = sweep_command(tmp_path, name, "pattern=s1,s3,r3", "poison.count=10", "epochs=2", "data.train_limit=400")
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    store, sweep = tmp_path / "store", tmp_path / "multirun"

    assert len(list(store.glob(f"*/{DONE}"))) == 3 and len(list(store.glob(f"*/{RECORD}"))) == 3
    out = rarespur_cli("collect", str(store))
    assert out.returncode == 0 and "3 runs" in out.stdout, out.stdout + out.stderr
    table = collect_runs(store)
    assert sorted(table["pattern.name"]) == ["r3", "s1", "s3"] and (table["epochs"] == 2).all()

    logs = job_logs(sweep)
    assert len(logs) == 3 and all("_" in j for j in logs), sorted(logs)  # one array, three tasks
    for job_id, text in logs.items():
        # the job's own logging (Hydra's job_logging) reaches the submitit log: one line per epoch
        assert "epoch 1/2" in text and "epoch 2/2" in text, (job_id, text[-2000:])
        assert "record written to" in text and "Job completed successfully" in text
    runs_in_logs = {m for t in logs.values() for m in re.findall(r"record written to (\S+)", t)}
    assert {Path(p).name for p in runs_in_logs} == set(table["run_id"])

    # jobs run the interpreter of the venv that launched the sweep
    (array_id,) = {j.split("_")[0] for j in logs}
    script = (sweep / ".submitit" / array_id / f"{array_id}_submission.sh").read_text()
    assert "srun --unbuffered --output" in script and f"{shlex.quote(sys.executable)} -u -m submitit" in script
    assert "#SBATCH --partition=debug" in script

    states = sacct_states(sorted(logs), name)
    assert states == {j: "COMPLETED" for j in logs}, states


def test_packed_sweep_runs_on_slurm(tmp_path):
    """pack.size=3: 6 jobs (3 clean baselines that train one model, 3 poisoned: 4 models) as 2 packs of 2 models,
    one SLURM array of 2 tasks; 6 records in the store, the 4 trained ones with packed_with."""
    name = f"rarespur-pack-{uuid.uuid4().hex[:8]}"
    cmd = sweep_command(
        tmp_path, name, "pattern=s1,s3,r3", "poison.count=0,10", "epochs=2", "data.train_limit=400", "pack.size=3"
    )
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "pack.size=3: 6 job(s) in 2 pack(s)" in done.stdout + done.stderr
    table = collect_runs(tmp_path / "store")
    assert len(table) == 6 and set(table["pattern.name"]) == {"s1", "s3", "r3"}
    assert table["packed_with.size"].notna().sum() == 4  # 1 clean model + 3 poisoned; 2 baselines reuse the clean
    logs = job_logs(tmp_path / "multirun")
    assert len(logs) == 2 and all("pack of 2: epoch 2/2" in t for t in logs.values()), logs
    assert sacct_states(sorted(logs), name) == {j: "COMPLETED" for j in logs}


def test_chained_sweep_runs_on_slurm(tmp_path):
    """pack.chain=2: 5 jobs as chains of 2, 2 and 1, one SLURM array of 3 tasks; each chained task's log has its
    jobs' records one after the other, all 5 in the store."""
    name = f"rarespur-chain-{uuid.uuid4().hex[:8]}"
    cmd = sweep_command(
        tmp_path, name, "pattern=s1,s3,r3,s2,r1", "poison.count=10", "epochs=1", "data.train_limit=400", "pack.chain=2"
    )
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "5 alone (4 of them in 2 chain(s) of up to 2)" in done.stdout + done.stderr
    table = collect_runs(tmp_path / "store")
    assert len(table) == 5 and "packed_with.pack" not in table
    logs = job_logs(tmp_path / "multirun")
    written = sorted(len(re.findall(r"record written to", text)) for text in logs.values())
    assert len(logs) == 3 and written == [1, 2, 2], logs
    assert sacct_states(sorted(logs), name) == {j: "COMPLETED" for j in logs}


def _wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.mark.slow
@pytest.mark.parametrize("packed", [False, True], ids=["alone", "packed"])
def test_timed_out_job_is_requeued_and_resumes(tmp_path, packed):
    """SIGUSR2 (what SLURM sends signal_delay_s before the time limit): submitit checkpoints and requeues
    (slurm_ci has max_num_timeout=1), the requeued job resumes from train_state.pt instead of starting
    over, and the record is complete; a pack of 2 resumes both its models from theirs. 15-40 s each, so
    marked slow: pytest -m "slurm and slow" (.ci/run does)."""
    name = f"rarespur-requeue-{uuid.uuid4().hex[:8]}"
    epochs = 200  # long enough to be caught mid-training, even on a fast machine
    jobs = ["pattern=s3,r3", "pack.size=2"] if packed else ["pattern=s3"]
    cmd = sweep_command(
        tmp_path, name, *jobs, "poison.count=5", f"epochs={epochs}", "data.train_limit=200", "model=mlp"
    )
    sweep = tmp_path / "multirun"
    launcher_log = tmp_path / "launcher.log"
    with launcher_log.open("w") as sink:
        launcher = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=sink, stderr=subprocess.STDOUT)
    try:

        def training() -> str | None:
            logs = job_logs(sweep) if (sweep / ".submitit").exists() else {}
            return next((j for j, t in logs.items() if re.search(r"epoch \d+/", t)), None)

        job_id = _wait_for(training, 120, "the job to finish its first epoch")
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)

        def requeued() -> bool:
            if "Job completed successfully" in job_logs(sweep)[job_id]:
                raise AssertionError(f"the job finished before the signal reached it; raise epochs above {epochs}")
            out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
            return out.stdout.strip() == "PENDING" or "resuming from" in job_logs(sweep)[job_id]

        _wait_for(requeued, 60, "the job to be requeued")
        # SLURM holds a requeued job for a while (BeginTime, ~2 min); let it start now
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], timeout=30)
        launcher.wait(timeout=240)
        if launcher.returncode != 0:
            # submitit's watcher can poll sacct in the instant after the requeue, read FAILED and give up
            # (UncompletedJobError) while SLURM runs the requeued job anyway; what must hold is that the
            # job itself resumes and completes, so wait for its done marker.
            log = launcher_log.read_text()
            assert "UncompletedJobError" in log and f"Job {job_id} " in log, log[-3000:]
            finished = 2 if packed else 1
            _wait_for(
                lambda: len(list((tmp_path / "store").glob(f"*/{DONE}"))) == finished, 240, "the requeued job to finish"
            )
    finally:
        if launcher.poll() is None:
            launcher.kill()
        if not list((tmp_path / "store").glob(f"*/{DONE}")):
            subprocess.run(["scancel", "--name", name], timeout=30)

    text = job_logs(sweep)[job_id]
    assert "Requeued job" in text, text[-3000:]
    # a pack's models can stand at two epochs (the signal came between their checkpoints): one sub-pack each
    resumed = re.search(r"resuming (?:from \S+|a pack of [12]) at epoch (\d+)", text)
    assert resumed and 1 < int(resumed.group(1)) <= epochs, text[-3000:]
    run_dirs = [p.parent for p in (tmp_path / "store").glob(f"*/{DONE}")]
    assert len(run_dirs) == (2 if packed else 1)
    for run_dir in run_dirs:
        assert not (run_dir / TRAIN_STATE).exists()
        history = json.loads((run_dir / "history.json").read_text())
        assert [row["epoch"] for row in history] == list(range(1, epochs + 1))

    def attempts() -> list[str] | None:  # every attempt of the job (-D), once slurmdbd has the last one
        out = subprocess.run(
            ["sacct", "-D", "-X", "-n", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True, timeout=30
        )
        states = out.stdout.split()
        return states if states[-1:] == ["COMPLETED"] else None

    assert _wait_for(attempts, 30, "sacct to list the finished job", poll=1) == ["REQUEUED", "COMPLETED"]


def _our_tasks(name: str) -> dict[str, str]:
    """Array task id -> squeue state, for the jobs named `name` (each pending task on its own line)."""
    out = subprocess.run(
        ["squeue", "-h", "-r", "--name", name, "-o", "%i|%T"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return dict(line.split("|") for line in out.stdout.split())


def test_a_sweep_larger_than_max_array_size_is_accepted_whole_and_detached(tmp_path):
    """1,200 jobs on a cluster with SLURM's default MaxArraySize (1001): two arrays, every task in the queue,
    the launcher returns at once (wait=false), status calls them queued, a relaunch submits nothing."""
    name = f"rarespur-big-{uuid.uuid4().hex[:8]}"
    hold = "+hydra.launcher.additional_parameters={begin:now+1hour}"  # they wait in the queue, never run
    cmd = [*sweep_command(tmp_path, name, "poison.seed=range(1200)", "epochs=1"), "hydra.launcher.wait=false", hold]
    try:
        started = time.monotonic()
        done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        took = time.monotonic() - started
        out = done.stdout + done.stderr
        assert done.returncode == 0, out[-3000:]
        assert "1200 launcher job(s) in 2 array(s) of 600 task(s) (MaxArraySize 1001)" in out, out[-3000:]
        assert "... and 1195 more job(s)" in out and out.count(" : ") <= 6  # a summary, not 1,200 lines
        assert "status" in out and "--watch" in out  # the command to follow it
        tasks = _our_tasks(name)
        assert len(tasks) == 1200 and set(tasks.values()) == {"PENDING"}, len(tasks)
        assert took < 120, f"launch took {took:.0f} s"

        records = list((tmp_path / "store" / ".slurm").glob("*.json"))
        assert len(records) == 2 and len(list((tmp_path / "multirun" / ".slurm").glob("*.json"))) == 2
        keys = [key for r in records for task in json.loads(r.read_text())["keys"] for key in task]
        assert len(set(keys)) == 1200

        status = rarespur_cli("status", str(tmp_path / "store"), "+cluster=slurm_ci", "poison.seed=range(1200)",
                              "epochs=1", f"results_dir={tmp_path / 'store'}")  # fmt: skip
        assert status.returncode == 0, status.stderr
        header, row = status.stdout.splitlines()[1:3]
        counts = dict(zip(header.split(), row.split()[1:]))
        assert counts["queued"] == "1200" and counts["done"] == "0" and counts["missing"] == "0", status.stdout

        again = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "1200 job(s) already queued or running on the cluster: not submitted again" in again.stdout
        assert len(_our_tasks(name)) == 1200
    finally:
        subprocess.run(["scancel", "--name", name], timeout=30)


@pytest.mark.slow
def test_array_parallelism_bounds_the_whole_sweep_across_arrays(tmp_path):
    """7 jobs in arrays of at most 3 with array_parallelism=2: 4 arrays in 2 lanes (two wait for another), and
    sacct's start and end times never have more than 2 tasks running at once; every run is done."""
    name = f"rarespur-lanes-{uuid.uuid4().hex[:8]}"
    cmd = sweep_command(
        tmp_path, name, "poison.seed=range(7)", "epochs=1", "data.train_limit=400",
        "hydra.launcher.max_array_size=3", "hydra.launcher.array_parallelism=2",
    )  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=400)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "7 launcher job(s) in 4 array(s)" in out and "2 array(s) wait for an earlier one (afterany)" in out, out[
        -3000:
    ]
    assert "7/7 done" in out  # the progress line's last word
    assert len(list((tmp_path / "store").glob(f"*/{DONE}"))) == 7
    logs = job_logs(tmp_path / "multirun")
    assert sacct_states(sorted(logs), name) == {j: "COMPLETED" for j in logs}

    def intervals() -> list[tuple[str, str]] | None:
        ids = sorted({j.split("_")[0] for j in logs})
        got = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-o", "JobID,Start,End", "-j", ",".join(ids)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        rows = [line.split("|")[1:] for line in got.stdout.split() if line.split("|")[0] in logs]
        return rows if len(rows) == 7 and all("Unknown" not in r for r in rows) else None

    rows = _wait_for(intervals, 30, "sacct's start and end times", poll=1)
    events = sorted([(start, 1) for start, _ in rows] + [(end, -1) for _, end in rows])  # an end before a start
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= 2, rows


def test_a_relaunch_of_a_detached_sweep_submits_only_what_the_scheduler_does_not_hold(tmp_path):
    """3 jobs submitted and held in the queue; a relaunch of the 5-job sweep submits only the 2 new ones, and
    status then shows 5 queued; a failed one (cancelled in the queue) points to its SLURM task and log."""
    name = f"rarespur-again-{uuid.uuid4().hex[:8]}"
    hold = "+hydra.launcher.additional_parameters={begin:now+1hour}"
    base = [*sweep_command(tmp_path, name, "epochs=1"), "hydra.launcher.wait=false", hold]
    try:
        first = subprocess.run([*base, "poison.seed=0,1,2"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert first.returncode == 0, first.stderr[-3000:]
        second = subprocess.run(
            [*base, "poison.seed=0,1,2,3,4"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 0, second.stderr[-3000:]
        assert "3 job(s) already queued or running on the cluster: not submitted again" in second.stdout
        assert "2 launcher job(s) in 1 array(s)" in second.stdout
        assert len(_our_tasks(name)) == 5

        store = str(tmp_path / "store")
        status = rarespur_cli(
            "status", store, "+cluster=slurm_ci", "epochs=1", f"results_dir={store}", "poison.seed=0,1,2,3,4"
        )
        assert "5 jobs of the sweep" in status.stdout and re.search(r"all\s+5\s+0\s+0\s+5\b", status.stdout), (
            status.stdout
        )
        subprocess.run(["scancel", "--name", name], timeout=30)
        _wait_for(lambda: not _our_tasks(name), 30, "the cancelled tasks to leave the queue")
        status = rarespur_cli(
            "status", store, "+cluster=slurm_ci", "epochs=1", f"results_dir={store}", "poison.seed=0,1,2,3,4"
        )
        assert "missing, submitted to SLURM (5):" in status.stdout, status.stdout
        assert re.search(r"SLURM task \d+_\d \((CANCELLED|no longer known to sacct)\), log \S+_log\.out", status.stdout)
    finally:
        subprocess.run(["scancel", "--name", name], timeout=30)


def test_a_queue_cap_is_respected_and_the_rest_named(tmp_path):
    """With MaxSubmitJobs=3 on the user's association (sacctmgr), a 5-job sweep submits 3 and says in one line
    that 2 are held back and how to submit them; a relaunch while the 3 wait submits nothing."""
    name = f"rarespur-cap-{uuid.uuid4().hex[:8]}"
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    hold = "+hydra.launcher.additional_parameters={begin:now+1hour}"
    cmd = [*sweep_command(tmp_path, name, "poison.seed=range(5)", "epochs=1"), "hydra.launcher.wait=false", hold]
    capped = subprocess.run(
        ["sacctmgr", "-i", "modify", "user", user, "set", "MaxSubmitJobs=3"], capture_output=True, text=True
    )
    if capped.returncode != 0:
        pytest.skip(f"cannot set MaxSubmitJobs on this cluster (no accounting?): {capped.stderr.strip()[:200]}")
    try:
        first = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert first.returncode == 0, first.stdout[-3000:]
        assert "2 job(s) held back: your queue is full (MaxSubmitJobs)" in first.stdout, first.stdout
        assert "Run the same command again when it has room" in first.stdout
        assert len(_our_tasks(name)) == 3
        again = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert "3 job(s) already queued or running on the cluster: not submitted again" in again.stdout
        assert "2 job(s) held back: your queue is full" in again.stdout and "0 job(s) submitted" in again.stdout
        assert len(_our_tasks(name)) == 3
    finally:
        subprocess.run(["sacctmgr", "-i", "modify", "user", user, "set", "MaxSubmitJobs=-1"], capture_output=True)
        subprocess.run(["scancel", "--name", name], timeout=30)
