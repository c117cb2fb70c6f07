"""The local pool launchers (local_cpu, local_gpus: a job starts as soon as any slot is free) and the
progress line they write while they wait (rarespur.launch.progress).

The pool's bookkeeping is checked in-process with a fake submitit executor (which slot a job gets, how
many run at once, failed jobs, job order); one slow test runs real jobs on 2 slots end to end.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import sys
from pathlib import Path

import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from hydra_plugins.rarespur_launchers import InSlot, LocalCpuLauncher, LocalGpuLauncher
from rarespur.launch.progress import Progress, format_duration, progress_line

from conftest import multirun

# ---------------------------------------------------------------------------------------------- progress_line


def test_progress_line_reads_like_the_example():
    counts = {"done": 12, "running": 2, "queued": 26, "failed": 0}
    # 12 done in 1000 s: 43.2 models/h; 28 left: 28 / 43.2 h = 38.9 min
    assert (
        progress_line(40, counts, 1000.0)
        == "sweep: 12/40 done, 2 running, 26 queued, 0 failed | 43.2 models/h | ETA 39 min"
    )


def test_progress_line_states_in_order_zero_ones_left_out():
    counts = {"corrupt": 1, "missing": 3, "stale": 2, "queued": 0, "running": 0, "done": 4, "other": 9}
    line = progress_line(10, counts, 100.0, label="status")
    assert line.startswith("status: 4/10 done, 2 stale, 3 missing, 1 corrupt | ")
    assert "running" not in line and "queued" not in line and "failed" not in line and "other" not in line
    assert progress_line(3, {}, 5.0) == "sweep: 0/3 done | ? models/h | ETA ?"  # done is always shown


def test_progress_line_eta_leaves_out_failed_and_has_no_rate_before_the_first_done():
    assert progress_line(10, {"done": 0, "running": 2, "failed": 1}, 600.0).endswith("| ? models/h | ETA ?")
    # 2 done in an hour: 2 models/h; 10 - 2 - 3 failed = 5 left: 2.5 h
    assert progress_line(10, {"done": 2, "failed": 3}, 3600.0).endswith("| 2.0 models/h | ETA 2.5 h")
    assert progress_line(4, {"done": 3, "failed": 1}, 10.0).endswith("| 1080.0 models/h | ETA 0 s")
    assert progress_line(4, {"failed": 4}, 10.0).endswith("| ? models/h | ETA 0 s")


@pytest.mark.parametrize(
    "seconds,text",
    [(0, "0 s"), (44.6, "45 s"), (89, "89 s"), (90, "2 min"), (38 * 60, "38 min"), (89 * 60, "89 min"),
     (90 * 60, "1.5 h"), (5 * 3600, "5.0 h"), (-3, "0 s")],
)  # fmt: skip
def test_durations(seconds, text):
    assert format_duration(seconds) == text


# ---------------------------------------------------------------------------------------------- Progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(Progress, "clock", staticmethod(fake))
    return fake


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_log_file_writes_on_start_every_s_on_5_percent_and_on_force(clock):
    out = io.StringIO()
    progress = Progress(100, stream=out, every_s=60)
    lines = lambda: out.getvalue().splitlines()  # noqa: E731

    progress.update({"done": 0, "running": 2, "queued": 98, "failed": 0})
    assert lines() == ["sweep: 0/100 done, 2 running, 98 queued, 0 failed | ? models/h | ETA ?"]
    clock.now += 10
    progress.update({"done": 4, "running": 2, "queued": 94, "failed": 0})  # 4 < 5 % of 100, 10 s < 60 s
    assert len(lines()) == 1
    clock.now += 10
    progress.update({"done": 4, "running": 2, "queued": 93, "failed": 1})  # done + failed moved by 5
    assert len(lines()) == 2
    # 4 done in 20 s = 720 models/h; 95 left: 475 s = 8 min
    assert lines()[-1] == "sweep: 4/100 done, 2 running, 93 queued, 1 failed | 720.0 models/h | ETA 8 min"
    clock.now += 59
    progress.update({"done": 5, "running": 2, "queued": 92, "failed": 1})
    assert len(lines()) == 2
    clock.now += 1  # 60 s since the last line
    progress.update({"done": 5, "running": 2, "queued": 92, "failed": 1})
    assert len(lines()) == 3
    progress.update({"done": 5, "running": 2, "queued": 92, "failed": 1}, force=True)
    assert len(lines()) == 4
    progress.close({"done": 99, "failed": 1})  # 99 done in 80 s
    assert out.getvalue().endswith("sweep: 99/100 done, 1 failed | 4455.0 models/h | ETA 0 s\n")
    assert "\r" not in out.getvalue()


def test_progress_step_is_at_least_one_job(clock):
    out = io.StringIO()
    progress = Progress(3, label="local_cpu", stream=out)
    for done in range(4):
        progress.update({"done": done, "queued": 3 - done})
    assert len(out.getvalue().splitlines()) == 4  # every finished job of a small sweep is a line


def test_progress_rate_counts_only_jobs_done_since_it_started(clock):
    out = io.StringIO()
    progress = Progress(100, label="status", stream=out)
    progress.update({"done": 50})  # done before the watcher started: not its rate
    clock.now += 3600
    progress.close({"done": 60})
    assert out.getvalue().splitlines()[-1] == "status: 60/100 done | 10.0 models/h | ETA 4.0 h"


def test_progress_on_a_terminal_rewrites_one_line_a_few_times_a_second(clock):
    out = TtyStream()
    progress = Progress(10, stream=out)
    progress.update({"done": 0, "running": 2, "queued": 8})
    progress.update({"done": 0, "running": 2, "queued": 8})  # too soon: not written
    assert out.getvalue() == "\rsweep: 0/10 done, 2 running, 8 queued | ? models/h | ETA ?"
    clock.now += Progress.tty_interval_s
    progress.update({"done": 1, "queued": 9})
    assert out.getvalue().count("\r") == 2 and "\n" not in out.getvalue()
    short = "sweep: 1/10 done, 9 queued | 14400.0 models/h | ETA 2 s"
    # the longer line before is blanked out to its length
    assert out.getvalue().endswith(
        "\r" + short.ljust(len("sweep: 0/10 done, 2 running, 8 queued | ? models/h | ETA ?"))
    )
    progress.update({"done": 2, "queued": 8}, force=True)
    assert out.getvalue().count("\r") == 3
    progress.close({"done": 10})  # 10 done in 0.25 s; padded over the line before, then a newline
    last = out.getvalue().split("\r")[-1]
    assert last.endswith("\n") and last.rstrip() == "sweep: 10/10 done | 144000.0 models/h | ETA 0 s"


# ---------------------------------------------------------------------------------------------- the pool


class FakeJob:
    """A submitit job that has written its result after `runs_for` polls of done() and exits `exits_after` later."""

    def __init__(self, folder: Path, job_num: int, runs_for: int, exits_after: int, fails: str | None) -> None:
        self.job_num, self.runs_for, self.exits_after, self.fails = job_num, runs_for, exits_after, fails
        self.polls = 0
        self.job_id = str(job_num)
        self.paths = type("Paths", (), {})()
        self.paths.stdout = folder / f"{job_num}_log.out"
        self.paths.result_pickle = folder / f"{job_num}_result.pkl"

    def done(self) -> bool:
        self.polls += 1
        if self.polls >= self.runs_for:
            self.paths.result_pickle.touch()
        return self.polls >= self.runs_for + self.exits_after

    def results(self) -> list[JobReturn]:
        assert self.polls >= self.runs_for + self.exits_after, "results() of a job still running"
        if self.fails == "raise":  # the job process died: submitit raises
            raise RuntimeError(f"job {self.job_num} was killed")
        if self.fails == "return":  # the task raised: Hydra's run_job returns a FAILED JobReturn
            return [JobReturn(overrides=[f"job={self.job_num}"], status=JobStatus.FAILED, _return_value=ValueError())]
        return [JobReturn(overrides=[f"job={self.job_num}"], status=JobStatus.COMPLETED, _return_value=self.job_num)]


class FakeExecutor:
    """Records what the pool submits: (job number, slot, jobs not yet exited at that moment)."""

    def __init__(self, folder: Path, runs_for: dict[int, int], exits_after: int = 0, fails: dict | None = None):
        self.folder, self.runs_for, self.exits_after, self.fails = folder, runs_for, exits_after, fails or {}
        self.jobs: list[FakeJob] = []
        self.submitted: list[tuple[int, int, int]] = []

    def submit(self, fn, sweep_overrides, job_dir_key, job_num, job_id, singleton_state) -> FakeJob:
        assert type(fn).__name__ == "InSlot"  # by name: Hydra's plugin scan re-executes the module (new classes)
        alive = sum(j.polls < j.runs_for + j.exits_after for j in self.jobs)
        self.submitted.append((job_num, fn.slot, alive))
        job = FakeJob(self.folder, job_num, self.runs_for[job_num], self.exits_after, self.fails.get(job_num))
        self.jobs.append(job)
        return job


def pool(launcher, tmp_path: Path, executor: FakeExecutor, n_jobs: int) -> list[JobReturn]:
    launcher.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    launcher.poll_s = 0.0
    module = sys.modules[type(launcher).__module__]  # the launcher's own module (Hydra's scan may re-execute it)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "make_executor", lambda name, params: executor)
        return list(launcher.launch([[f"job={i}"] for i in range(n_jobs)], initial_job_idx=0))


def test_pool_starts_a_job_on_the_first_free_gpu(tmp_path, monkeypatch):
    """local_gpus, GPUs 4 and 5, a long job and three short ones: the short ones all take GPU 5, the
    slot the long job does not hold (rounds gave job 2 to GPU 4, under the long job), two at a time."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    launcher = LocalGpuLauncher(gpus_per_node=1, submitit_folder=str(tmp_path / "%j"))
    assert launcher.slots == [["4"], ["5"]]
    executor = FakeExecutor(tmp_path, {0: 20, 1: 2, 2: 2, 3: 2})
    returns = pool(launcher, tmp_path, executor, 4)
    assert [(num, slot) for num, slot, _ in executor.submitted] == [(0, 0), (1, 1), (2, 1), (3, 1)]
    assert max(alive for _, _, alive in executor.submitted) < 2  # never more than 2 at once
    assert [r.return_value for r in returns] == [0, 1, 2, 3]  # job order


def test_pool_gives_the_slot_back_when_the_result_is_written(tmp_path):
    """A job whose result is written but whose process still exits frees its slot: the next job starts then."""
    launcher = LocalCpuLauncher(cpus_per_task=1, submitit_folder=str(tmp_path / "%j"))
    launcher.slots = [0]
    executor = FakeExecutor(tmp_path, {0: 3, 1: 3, 2: 3}, exits_after=2)
    returns = pool(launcher, tmp_path, executor, 3)
    assert [alive for _, _, alive in executor.submitted] == [0, 1, 1]  # each started while the last one exited
    assert [r.return_value for r in returns] == [0, 1, 2]


def test_pool_runs_every_job_when_some_fail(tmp_path, caplog, capsys):
    """A job that failed in the sweep (a FAILED JobReturn) or whose process died (results() raises) does not
    stop the others; every JobReturn comes back in job order and the failed ones are named with their logs."""
    launcher = LocalCpuLauncher(cpus_per_task=1, submitit_folder=str(tmp_path / "%j"))
    launcher.slots = [0, 1]
    executor = FakeExecutor(tmp_path, {0: 3, 1: 1, 2: 1, 3: 1, 4: 2}, fails={1: "return", 3: "raise"})
    with caplog.at_level(logging.INFO):
        returns = pool(launcher, tmp_path, executor, 5)
    assert [num for num, _, _ in executor.submitted] == [0, 1, 2, 3, 4]
    assert [r.status for r in returns] == [JobStatus.COMPLETED, JobStatus.FAILED] * 2 + [JobStatus.COMPLETED]
    with pytest.raises(RuntimeError, match=r"job 3 ended without a result \(job 3 was killed\); log .*3_log\.out"):
        _ = returns[3].return_value
    assert returns[3].overrides == ["job=3"]
    assert "local_cpu: 2 of 5 job(s) failed:" in caplog.text
    assert f"#1 : job=1 (log: {tmp_path / '1_log.out'})" in caplog.text
    assert f"#3 : job=3 (log: {tmp_path / '3_log.out'})" in caplog.text
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("local_cpu")]  # progress
    assert err[0] == "local_cpu: 0/5 done, 1 running, 3 queued, 1 failed | ? models/h | ETA ?"
    assert err[-1].startswith("local_cpu: 3/5 done, 2 failed | ")


def test_in_slot_pickles_sets_the_gpu_and_requeues_itself(tmp_path, monkeypatch, capsys):
    import cloudpickle  # what submitit pickles the job with
    import submitit

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    launcher = LocalGpuLauncher(gpus_per_node=1, submitit_folder=str(tmp_path / "%j"))
    wrapper = pickle.loads(cloudpickle.dumps(InSlot(launcher, 1)))
    assert wrapper.slot == 1 and wrapper.launcher.slots == [["4"], ["5"]]
    called = []
    monkeypatch.setattr(
        LocalGpuLauncher, "__call__", lambda self, *args: called.append(os.environ["CUDA_VISIBLE_DEVICES"])
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # what submitit_local gives every job
    wrapper(["a=1"], "hydra.sweep.dir", 7, "job_id_for_7", {})
    assert called == ["5"] and "local_gpus: job 7 runs on GPU 5" in capsys.readouterr().out
    again = wrapper.checkpoint(["a=1"], "hydra.sweep.dir", 7, "job_id_for_7", {})
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    assert again.function is wrapper and again.args[2] == 7


# ---------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow  # three submitit processes of real training, about 30-40 s on 2 cores
def test_local_cpu_short_jobs_pass_a_long_one(tmp_path):
    """local_cpu on 2 slots, one long job (200 epochs) and two short ones (1 and 2 epochs): the second short
    job starts when the first ends, not when the long one does, so both finish before it (in rounds of 2
    the second short job waited for the long one).

    cpus_per_task is half the cores, so there are 2 slots on any machine with an even number of cores."""
    cores = os.cpu_count() or 1
    if cores < 2:
        pytest.skip("needs 2 cores for 2 slots")
    threads = cores // 2
    store, sweep = tmp_path / "store", tmp_path / "multirun"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    grid = ("+cluster=local_cpu", f"hydra.launcher.cpus_per_task={threads}", "epochs=200,1,2")
    done = multirun(store, sweep, *grid, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    slots = cores // threads  # 2, or 3 on 3 cores
    assert f"local_cpu: {slots} job(s) at a time" in done.stdout
    finished = {}  # epochs -> when its done marker was written
    for marker in store.glob("*/done"):
        finished[json.loads((marker.parent / "record.json").read_text())["epochs"]] = marker.stat().st_mtime
    assert sorted(finished) == [1, 2, 200]
    assert finished[1] < finished[200] and finished[2] < finished[200], finished
    progress = [line for line in done.stderr.splitlines() if line.startswith("local_cpu: ")]
    queued = f"{3 - slots} queued, " if slots < 3 else ""
    assert progress[0] == f"local_cpu: 0/3 done, {slots} running, {queued}0 failed | ? models/h | ETA ?"
    assert progress[-1].startswith("local_cpu: 3/3 done, 0 failed | ")
