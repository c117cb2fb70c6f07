"""A sweep as SLURM arrays (rarespur.launch.arrays) and what status makes of the scheduler's answers.

No cluster here: squeue and sacct are replaced by their answers (tests/test_slurm.py submits for real)."""

from __future__ import annotations

import io
import itertools
import re

import pytest

from rarespur.errors import ConfigError, SchedulerError
from rarespur.launch import scheduler
from rarespur.launch import status as status_module
from rarespur.launch.arrays import (
    QueueView,
    Submission,
    describe_split,
    placements,
    read_submissions,
    split_arrays,
    unsubmitted,
    write_submission,
)
from rarespur.launch.runner import run_job
from rarespur.launch.status import report, survey
from rarespur.launch.sweep import Sweep, expand
from rarespur.store.run_dir import DONE


def simulate(plans, duration=lambda job: 1 + job % 3):
    """Run the plans as SLURM would (each array at most `throttle` at once, a chained array after its
    predecessor ends); return the peak number of tasks running at once, every job's start and the makespan."""
    clock, running, peak, starts = 0, [], 0, {}
    ended = {a: False for a in range(len(plans))}
    waiting = {a: list(p.jobs) for a, p in enumerate(plans)}
    while any(waiting.values()) or running:
        for a, plan in enumerate(plans):
            if plan.after is not None and not ended[plan.after]:
                continue
            while waiting[a] and sum(1 for _, arr in running if arr == a) < plan.throttle:
                job = waiting[a].pop(0)
                starts[job] = clock
                running.append((clock + duration(job), a))
        peak = max(peak, len(running))
        clock = min(end for end, _ in running)
        running = [(end, a) for end, a in running if end > clock]
        for a in ended:
            ended[a] = not waiting[a] and all(arr != a for _, arr in running)
    return peak, starts, clock


@pytest.mark.parametrize(
    ("n", "cap", "parallelism"),
    [(2500, 1001, 64), (8400, 1001, 8), (8400, 1001, 64), (7, 3, 2), (1001, 1001, 256), (40, 3, 5), (3, 1, 64)],
)
def test_arrays_fit_the_cluster_cover_every_job_once_and_never_run_more_than_the_bound(n, cap, parallelism):
    plans = split_arrays(n, cap, parallelism)
    assert all(1 <= p.size <= cap for p in plans)
    assert sorted(j for p in plans for j in p.jobs) == list(range(n))
    assert max(p.size for p in plans) - min(p.size for p in plans) <= 1  # even sizes
    assert sum(p.throttle for p in plans if p.after is None) <= parallelism
    peak, starts, makespan = simulate(plans)
    assert peak == min(parallelism, n) and sorted(starts) == list(range(n))
    ideal = sum(1 + j % 3 for j in range(n)) / min(parallelism, n)
    assert makespan <= ideal * 1.1 + 3, (makespan, ideal)  # no slot left idle for long


def test_more_arrays_than_the_bound_wait_for_each_other_in_even_lanes():
    plans = split_arrays(7, 3, 2)
    assert [(list(p.jobs), p.throttle, p.after) for p in plans] == [
        ([0, 4], 1, None), ([1, 5], 1, None), ([2, 6], 1, 0), ([3], 1, 1)
    ]  # fmt: skip
    text = describe_split(plans, 2, 3)
    assert text.startswith("7 launcher job(s) in 4 array(s) of 1/2 task(s) (MaxArraySize 3)")
    assert "at most 2 running at once" in text and "2 array(s) wait for an earlier one (afterany)" in text
    # the paper's largest grid on SLURM's default limits: every lane holds the same number of jobs
    lanes = split_arrays(8400, 1001, 8)
    assert len(lanes) == 16 and {p.size for p in lanes} == {525} and {p.throttle for p in lanes} == {1}


def test_no_bound_means_every_task_may_run():
    assert [(p.size, p.throttle) for p in split_arrays(5, 1001, None)] == [(5, 5)]
    assert [(p.size, p.throttle) for p in split_arrays(2003, 1001, None)] == [(668, 668), (668, 668), (667, 667)]
    assert split_arrays(0, 1001, 8) == []
    with pytest.raises(ValueError, match="max_array_size must be at least 1"):
        split_arrays(5, 0, 8)


def submission(job_id: str, keys: list[list[str]], submitted: float) -> Submission:
    tasks = [f"{job_id}_{t}" for t in range(len(keys))]
    return Submission(job_id, submitted, "/sweep", tasks, keys, [f"/logs/{t}.out" for t in tasks])


def test_records_map_each_run_key_to_its_latest_task(tmp_path):
    write_submission(submission("10", [["a"], ["b", "c"]], 1.0), [tmp_path])
    write_submission(submission("11", [["c"]], 2.0), [tmp_path])  # c relaunched later
    (tmp_path / ".slurm" / "broken.json").write_text("{")  # skipped, not fatal
    assert [s.job_id for s in read_submissions(tmp_path)] == ["10", "11"]
    placed = placements([tmp_path])
    assert {k: p.task_id for k, p in placed.items()} == {"a": "10_0", "b": "10_1", "c": "11_0"}
    assert placed["b"].log == "/logs/10_1.out"


@pytest.fixture
def fake_queue(monkeypatch):
    """squeue's answer (task id -> state) and sacct's, as dicts the test fills in."""
    queue, final = {}, {}
    monkeypatch.setattr(scheduler, "queue_states", lambda ids: {i: queue[i] for i in ids if i in queue})
    monkeypatch.setattr(scheduler, "final_states", lambda ids: {i: final[i] for i in ids if i in final})
    return queue, final


SWEEP = ["pattern=s1,s3", "poison.count=0,10", "epochs=1"]


def test_a_relaunch_leaves_out_what_is_done_or_held_by_the_scheduler_and_reruns_a_corrupt_run(tmp_path, fake_queue):
    queue, _ = fake_queue
    store = tmp_path / "store"
    sweep = Sweep(None, [*SWEEP, f"results_dir={store}"])
    jobs = list(sweep.jobs())
    keys = [job.run.key for job in jobs]
    write_submission(submission("20", [[k] for k in keys], 1.0), [store])
    queue.update({"20_0": "PENDING", "20_1": "REQUEUE_HOLD"})  # any state squeue lists holds the job
    run_job({**jobs[2].config, "device": "cpu"})  # done for real
    jobs[3].run.path.mkdir(parents=True)
    (jobs[3].run.path / DONE).write_text("")  # a done marker that vouches for nothing: corrupt, run again

    launches, runs, left_out = unsubmitted(sweep.job_overrides, sweep.resolved_here, QueueView(strict=True))
    assert launches == [list(jobs[3].overrides)] and runs == [[(str(store), keys[3])]]
    assert left_out == {"already queued or running on the cluster": 2, "already done": 1}


def test_status_shows_the_scheduler_view_and_points_failures_to_their_log(tmp_path, fake_queue):
    queue, final = fake_queue
    store = tmp_path / "store"
    jobs = expand(None, SWEEP, store)
    write_submission(submission("30", [[j.run.key] for j in jobs[:3]], 1.0), [store])
    queue.update({"30_0": "PENDING", "30_1": "RUNNING"})
    final["30_2"] = "CANCELLED"  # left the queue without a run directory
    states = [e.state for e in survey(store, jobs)]
    assert states == ["queued", "running", "missing", "missing"]

    out = io.StringIO()
    report(store, jobs, out=out)
    text = out.getvalue()
    assert text.splitlines()[1].split() == ["total", "done", "running", "queued", "failed", "stale", "missing"]
    assert text.splitlines()[2].split() == ["all", "4", "0", "1", "1", "0", "0", "2"]
    assert "missing, submitted to SLURM (1):" in text and "SLURM task 30_2 (CANCELLED), log /logs/30_2.out" in text
    assert "submitted" in text and "ETA ?" in text  # nothing finished since the submission


def test_status_without_submissions_has_no_queued_column(tmp_path, fake_queue):
    out = io.StringIO()
    report(tmp_path, expand(None, SWEEP, tmp_path), out=out)
    assert "queued" not in out.getvalue() and "ETA" not in out.getvalue()


def test_every_split_deals_every_job_once():
    for n, cap, parallelism in itertools.product([1, 5, 1002], [1, 4, 1001], [1, 3, None]):
        plans = split_arrays(n, cap, parallelism)
        assert sorted(itertools.chain.from_iterable(p.jobs for p in plans)) == list(range(n))
        assert all(p.size <= cap for p in plans)


def test_a_relaunch_refuses_to_guess_when_squeue_does_not_answer(tmp_path, monkeypatch):
    """Guessing "nothing queued" would submit every waiting job twice: the relaunch stops with one message;
    status shows the store's view and says squeue did not answer."""
    monkeypatch.setattr(scheduler, "queue_states", lambda ids: None)
    store = tmp_path / "store"
    jobs = expand(None, SWEEP, store)
    write_submission(submission("40", [[j.run.key] for j in jobs], 1.0), [store])
    with pytest.raises(SchedulerError, match="squeue did not answer.*records 4 run.*nothing is submitted"):
        QueueView(strict=True).holds(store, jobs[0].run.key)
    out = io.StringIO()
    report(store, jobs, out=out)
    assert "squeue did not answer" in out.getvalue() and [e.state for e in survey(store, jobs)] == ["missing"] * 4


def test_watch_refreshes_until_nothing_is_queued_or_running(tmp_path, fake_queue, monkeypatch):
    queue, _ = fake_queue
    store = tmp_path / "store"
    jobs = expand(None, SWEEP, store)
    write_submission(submission("50", [[j.run.key] for j in jobs], 1.0), [store])
    queue.update({"50_0": "RUNNING", "50_1": "PENDING"})
    naps = []

    def nap(seconds):  # the scheduler moves on while status sleeps: the tasks leave the queue
        naps.append(seconds)
        queue.clear()

    monkeypatch.setattr(status_module.time, "sleep", nap)
    out = io.StringIO()
    entries = status_module.watch(store, jobs, every_s=7, out=out)
    text = out.getvalue()
    assert naps == [7] and text.count("refreshed every 7 s") == 2
    assert [e.state for e in entries] == ["missing"] * 4
    first, second = text.split("refreshed every 7 s")[1:]
    assert re.search(r"all\s+4\s+0\s+1\s+1\s+0\s+0\s+2", first) and re.search(
        r"all\s+4\s+0\s+0\s+0\s+0\s+0\s+4", second
    )


def test_launcher_keys_are_checked_with_one_message():
    from hydra_plugins.rarespur_launchers.slurm import SlurmArrayLauncher

    for key, value in [("max_array_size", 0), ("max_submit_jobs", -3), ("array_parallelism", 0)]:
        with pytest.raises(ConfigError, match=rf"hydra.launcher.{key}={value}: must be a positive number"):
            SlurmArrayLauncher(submitit_folder="x", **{key: value})
