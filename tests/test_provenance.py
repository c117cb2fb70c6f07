"""Every record says where its run ran: SLURM job and array task, host, the job's log, the code's commit."""

from __future__ import annotations

import json
import platform
import subprocess

import pandas as pd
import pytest

import rarespur
from rarespur.launch import provenance
from rarespur.launch.provenance import code_version, where_it_ran
from rarespur.store.collect import write_table
from rarespur.store.run_dir import RECORD

from conftest import REPO_ROOT, collect_runs, job

SCHEDULER_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SUBMITIT_EXECUTOR", "SUBMITIT_FOLDER")


@pytest.fixture(autouse=True)
def no_scheduler(monkeypatch):
    """The tests' own environment, whatever runs them (CI may itself be a SLURM job)."""
    for name in SCHEDULER_VARS:
        monkeypatch.delenv(name, raising=False)


def test_outside_a_scheduler_only_the_host_is_known():
    ran_on = where_it_ran()
    assert ran_on["host"] == platform.node()
    assert ran_on["slurm_job_id"] is None and ran_on["slurm_array_task"] is None and ran_on["log"] is None


def test_a_slurm_job_records_its_job_id(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert where_it_ran()["slurm_job_id"] == "4242" and where_it_ran()["slurm_array_task"] is None


def test_an_array_task_records_the_array_job_and_its_task(monkeypatch):
    """An array task's own SLURM_JOB_ID is a number of its own; sacct and the logs go by ARRAYJOB_TASK."""
    monkeypatch.setenv("SLURM_JOB_ID", "4250")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    ran_on = where_it_ran()
    assert (ran_on["slurm_job_id"], ran_on["slurm_array_task"]) == ("4242", "7")


def test_a_submitit_job_records_its_log_file(monkeypatch, tmp_path):
    """The variables submitit's local executor gives a job: the log is submitit's own stdout file."""
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("SUBMITIT_FOLDER", str(tmp_path / "%j"))
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "1234")
    monkeypatch.setenv("SUBMITIT_LOCAL_GLOBALID", "0")
    assert where_it_ran()["log"] == str(tmp_path / "1234" / "1234_0_log.out")


def test_an_unknown_submitit_environment_leaves_the_log_out(monkeypatch, tmp_path):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "no-such-cluster")
    monkeypatch.setenv("SUBMITIT_FOLDER", str(tmp_path))
    assert where_it_ran()["log"] is None


def test_in_this_checkout_the_commit_is_head():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip(f"not a git checkout: {head.stderr.strip()}")
    ran_on = where_it_ran()
    assert ran_on["commit"] == head.stdout.strip() and isinstance(ran_on["dirty"], bool)
    assert ran_on["version"] is None


def test_outside_a_git_work_tree_the_version_is_recorded(monkeypatch, tmp_path):
    """An sdist or wheel install: no commit to give, so the package version."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no work tree above tmp_path counts
    monkeypatch.setattr(provenance, "PACKAGE_DIR", tmp_path)
    ran_on = where_it_ran()
    assert (ran_on["commit"], ran_on["dirty"], ran_on["version"]) == (None, None, rarespur.__version__)


def test_files_in_a_work_tree_that_git_does_not_track_are_not_its_code(tmp_path):
    """A package installed into an ignored virtual environment inside some other checkout."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("venv/\n")
    subprocess.run([*git, "add", ".gitignore"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], cwd=tmp_path, check=True)
    installed = tmp_path / "venv" / "site-packages" / "rarespur"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("")
    assert code_version(installed)["version"] == rarespur.__version__
    assert code_version(tmp_path)["commit"] and code_version(tmp_path)["dirty"] is False


def test_a_job_records_where_it_ran_and_collect_keeps_it(tmp_path):
    record = job(tmp_path, "model=mlp1x256", "epochs=1", "data.train_limit=200", "data.test_limit=50", "progress=false")
    stored = json.loads((tmp_path / record["run_id"] / RECORD).read_text())
    ran_on = {key.removeprefix("ran_on."): value for key, value in stored.items() if key.startswith("ran_on.")}
    assert ran_on == where_it_ran() and ran_on["host"] == platform.node()
    table = collect_runs(tmp_path)
    assert table.loc[0, "ran_on.host"] == platform.node()
    parquet, _ = write_table(table, tmp_path / "table")  # a column of None only (ran_on.log) too
    assert pd.read_parquet(parquet).loc[0, "ran_on.host"] == platform.node()
