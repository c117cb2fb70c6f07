"""Launcher presets (conf/cluster/*.yaml, used as +cluster=<name>): they compose, say what they promise,
render the sbatch options a GPU cluster needs, and leave the run store key alone.

No SLURM and no GPU needed: tests/test_slurm.py submits to a real cluster; here
submitit's local executor shows which GPUs each job is given.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import submitit
from omegaconf import OmegaConf

from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.rarespur_launchers.slurm import OWN_KEYS
from rarespur.config.resolve import CONF_DIR, resolve
from rarespur.store.run_dir import config_key

from conftest import compose_config, multirun, run_py

PRESETS = sorted(p.stem for p in (Path(CONF_DIR) / "cluster").glob("*.yaml"))
SLURM = "hydra_plugins.rarespur_launchers.slurm.SlurmArrayLauncher"
LOCAL = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
LOCAL_GPUS = "hydra_plugins.rarespur_launchers.LocalGpuLauncher"
LOCAL_CPU = "hydra_plugins.rarespur_launchers.LocalCpuLauncher"


def compose_with_hydra(*overrides: str):
    return compose_config(*overrides, return_hydra_config=True)


@pytest.fixture
def srun_on_path(monkeypatch):
    """Rendering a batch script needs no cluster, but submitit's SLURM executor refuses to exist without
    `srun` on PATH (its affinity check): pretend it is there, so these tests run on any machine."""
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))


def sbatch_script(launcher, folder: Path) -> str:
    """The batch script submitit writes for these launcher settings, mapped as hydra-submitit-launcher does."""
    params = OmegaConf.to_container(launcher, resolve=False)
    for key in ("_target_", "submitit_folder", *OWN_KEYS):  # the launcher's own keys are not sbatch's
        params.pop(key)
    params["name"] = "run"
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor = submitit.AutoExecutor(
        folder=folder, cluster="slurm", slurm_max_num_timeout=params.pop("max_num_timeout")
    )
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    return executor._executor._make_submission_file_text("python -u -m submitit.core._submit X", "uid")


def test_the_expected_presets_exist():
    assert {"slurm_gpu", "slurm_cpu", "slurm_ci", "slurm_site", "local_gpus", "local_cpu"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_composes(name):
    cfg = compose_with_hydra(f"+cluster={name}")
    launcher = cfg.hydra.launcher
    assert launcher._target_ in (SLURM, LOCAL, LOCAL_GPUS, LOCAL_CPU)
    assert launcher.tasks_per_node == 1 and launcher.nodes == 1
    if launcher._target_ == SLURM and name != "slurm_site":
        assert launcher.max_num_timeout >= 1, "time-outs must be requeued (jobs resume from train_state.pt)"
        assert launcher.signal_delay_s < 60 * launcher.timeout_min
        assert launcher.stderr_to_stdout, "one log file per job"


@pytest.mark.slow  # a run.py launch; the presets' composition is checked in-process below
def test_cfg_hydra_shows_the_gpu_preset():
    """The command from docs/cluster.md: what the launcher will do, without submitting anything."""
    out = run_py("--cfg", "hydra", "+cluster=slurm_gpu", timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    launcher = OmegaConf.create(out.stdout).hydra.launcher
    assert launcher._target_ == SLURM
    assert launcher.gpus_per_node == 1 and launcher.cpus_per_task >= 1 and launcher.mem_gb >= 1
    assert launcher.max_num_timeout >= 1 and launcher.array_parallelism >= 1
    assert "partition: null" in out.stdout  # placeholder, set with hydra.launcher.partition=...


def test_gpu_and_cpu_presets():
    gpu = compose_with_hydra("+cluster=slurm_gpu")
    assert gpu.device == "cuda" and gpu.hydra.launcher.gpus_per_node == 1
    cpu = compose_with_hydra("+cluster=slurm_cpu")
    assert cpu.device == "cpu" and not cpu.hydra.launcher.gpus_per_node and not cpu.hydra.launcher.gres
    ci = compose_with_hydra("+cluster=slurm_ci")
    assert ci.hydra.launcher.partition == "debug" and not ci.hydra.launcher.gpus_per_node
    assert ci.hydra.launcher.mem_gb <= 4 and ci.hydra.launcher.timeout_min <= 15 and ci.device == "cpu"
    assert ci.hydra.launcher.account is None and ci.hydra.launcher.setup is None  # the site file is not used
    local = compose_with_hydra("+cluster=local_cpu")
    assert local.hydra.launcher._target_ == LOCAL_CPU and local.hydra.launcher.gpus_per_node == 0
    assert local.hydra.launcher.cpus_per_task == 1 and local.device == "cpu"
    # the launcher runs the jobs as a pool; sweeper batches would stop the sweep at the first failed job
    assert local.hydra.sweeper.max_batch_size is None
    gpus = compose_with_hydra("+cluster=local_gpus")
    assert gpus.hydra.launcher._target_ == LOCAL_GPUS and gpus.hydra.launcher.gpus_per_node == 1
    assert gpus.device == "cuda"


def test_site_settings_are_overridable():
    cfg = compose_with_hydra(
        "+cluster=slurm_gpu",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.account=myproj",
        "hydra.launcher.qos=high",
        "hydra.launcher.setup=[module load cuda/12.4,source /opt/env.sh]",
        "+hydra.launcher.additional_parameters.mail-type=FAIL",
        "hydra.launcher.array_parallelism=8",
        "hydra.launcher.timeout_min=60",
    )
    launcher = cfg.hydra.launcher
    assert (launcher.partition, launcher.account, launcher.qos) == ("gpu", "myproj", "high")
    assert list(launcher.setup) == ["module load cuda/12.4", "source /opt/env.sh"]
    assert launcher.additional_parameters == {"mail-type": "FAIL"}


def test_gpu_preset_renders_the_sbatch_options(tmp_path, srun_on_path):
    cfg = compose_with_hydra(
        "+cluster=slurm_gpu",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.account=myproj",
        "hydra.launcher.qos=high",
        "hydra.launcher.setup=[module load cuda/12.4]",
        "+hydra.launcher.additional_parameters.mail-type=FAIL",
    )
    script = sbatch_script(cfg.hydra.launcher, tmp_path)
    for flag in (
        "--gpus-per-node=1",
        "--partition=gpu",
        "--account=myproj",
        "--qos=high",
        "--mail-type=FAIL",
        "--cpus-per-task=4",
        "--mem=32GB",
        "--time=240",
        "--signal=USR2@120",
    ):
        assert f"#SBATCH {flag}\n" in script, (flag, script)
    assert "#SBATCH --error" not in script  # stderr goes to the same log file
    assert script.index("module load cuda/12.4") < script.index("srun ")
    cpu = sbatch_script(compose_with_hydra("+cluster=slurm_cpu").hydra.launcher, tmp_path)
    assert "--gpus" not in cpu and "--gres" not in cpu
    assert "--partition" not in cpu  # null partition: the cluster's default


def test_cluster_presets_keep_the_run_key():
    """A run done on a laptop is found (and skipped) when the same sweep goes to the cluster."""
    keys = set()
    for overrides in (
        [],
        ["+cluster=slurm_gpu"],
        ["+cluster=slurm_ci"],
        ["+cluster=local_cpu"],
        ["+cluster=local_gpus"],
    ):
        keys.add(config_key(resolve(compose_config(*overrides))))
    assert len(keys) == 1


def _gpus_seen_by_jobs(tmp_path, n_jobs: int, **params) -> list[str]:
    executor = submitit.LocalExecutor(folder=tmp_path / "%j")
    executor.update_parameters(timeout_min=2, **params)
    show = submitit.helpers.CommandFunction(["sh", "-c", 'printf %s "$CUDA_VISIBLE_DEVICES"', "sh"])
    jobs = executor.map_array(show, [str(i) for i in range(n_jobs)])
    return [job.result() for job in jobs]


@pytest.mark.slow  # five submitit processes
def test_stock_submitit_local_gives_every_job_the_same_gpus(tmp_path):
    """Why local_gpus has its own launcher: submitit_local sets CUDA_VISIBLE_DEVICES to the first
    gpus_per_node GPUs (of visible_gpus) for EVERY job, so a sweep would pile onto GPU 0;
    gpus_per_node=0 (local_cpu) hides all GPUs from the jobs."""
    assert _gpus_seen_by_jobs(tmp_path / "a", 3, gpus_per_node=1, visible_gpus=(0, 1, 2)) == ["0", "0", "0"]
    assert _gpus_seen_by_jobs(tmp_path / "b", 2, gpus_per_node=0) == ["", ""]


@pytest.mark.slow  # run.py -m with one submitit process per job
def test_local_gpus_gives_each_job_its_own_gpu(tmp_path):
    """local_gpus with two (pretend) GPUs and three jobs: one job per GPU at a time, job 2 on the GPU of
    whichever of jobs 0 and 1 gave it back first, and only once that job had finished.

    No GPU here: the jobs train on CPU (device=cpu); what is checked is the CUDA_VISIBLE_DEVICES each job got.
    """
    store, sweep = tmp_path / "store", tmp_path / "multirun"
    grid = ("+cluster=local_gpus", "device=cpu", "pattern=s1,s3,r3", "epochs=1", "data.train_limit=200")
    done = multirun(store, sweep, *grid, env={**os.environ, "CUDA_VISIBLE_DEVICES": "4,5"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list(store.glob("*/done"))) == 3
    seen, started, ended = {}, {}, {}
    for log in (sweep / ".submitit").glob("*/*_log.out"):
        text = log.read_text()
        match = re.search(r"job (\d+) runs on GPU (\S+)", text)
        assert match, text[-2000:]
        assert "epoch 1/1" in text  # per-epoch progress reaches the job's log file
        num = int(match.group(1))
        seen[num] = match.group(2)
        stamps = re.findall(r"^submitit INFO \((.+?)\)", text, flags=re.M)  # first: starting, last: exiting
        started[num], ended[num] = stamps[0], stamps[-1]
    assert (seen[0], seen[1]) == ("4", "5") and seen[2] in ("4", "5")
    before = 0 if seen[2] == "4" else 1  # the job that had job 2's GPU
    assert started[2] > ended[before], (started, ended)


@pytest.mark.slow  # run.py -m with one submitit process per job
def test_local_cpu_sweep(tmp_path):
    """local_cpu end to end: submitit_local processes, records in the store, per-epoch lines in the job logs."""
    store, sweep = tmp_path / "store", tmp_path / "multirun"
    done = multirun(store, sweep, "+cluster=local_cpu", "pattern=s1,s3", "epochs=2", "data.train_limit=200")
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list(store.glob("*/done"))) == 2
    logs = [p.read_text() for p in (sweep / ".submitit").glob("*/*_log.out")]
    assert len(logs) == 2 and all("epoch 1/2" in t and "epoch 2/2" in t for t in logs)


@pytest.mark.slow  # run.py -m with one submitit process per job, in a pool of slots
def test_local_cpu_runs_every_job_when_one_fails(tmp_path):
    """local_cpu with a job that fails while training (lr 1e6 diverges): the other jobs
    still run, those started after it too, the failed one leaves error.txt and no done marker, and the
    sweep exits non-zero at the end, naming the failed job.

    cpus_per_task is half the cores (rounded up), so at most 2 jobs run at once on any machine: the
    failing job 0 starts first and job 2 only when a slot is free (what max_batch_size used to lose).
    """
    store, sweep = tmp_path / "store", tmp_path / "multirun"
    threads = -(-(os.cpu_count() or 1) // 2)
    grid = ("+cluster=local_cpu", f"hydra.launcher.cpus_per_task={threads}", "train.lr=1e6,0.01,0.02", "epochs=1")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # OMP_NUM_THREADS would win
    done = multirun(store, sweep, *grid, "data.train_limit=300", env=env)
    assert done.returncode != 0, done.stderr[-3000:]
    errors, dones = list(store.glob("*/error.txt")), list(store.glob("*/done"))
    assert len(errors) == 1 and not (errors[0].parent / "done").exists(), done.stderr[-3000:]
    assert len(dones) == 2 and errors[0].parent not in {d.parent for d in dones}, done.stderr[-3000:]
    # the launcher names the failed job and its log; Hydra then its error
    assert "local_cpu: 1 of 3 job(s) failed:" in done.stdout, done.stdout[-3000:]
    summary = done.stdout.split("local_cpu: 1 of 3 job(s) failed:")[-1]
    assert "train.lr=1000000.0" in summary and "_log.out)" in summary, done.stdout[-3000:]
    assert "training diverged" in done.stderr, done.stderr[-3000:]
    logs = [p.read_text() for p in (sweep / ".submitit").glob("*/*_log.out")]
    assert len(logs) == 3
    for text in logs:  # the thread count reached torch in every job, the failed one included
        assert f"RARESPUR_THREADS={threads}" in text, text[-2000:]
        assert f"ran with {threads} torch thread(s)" in text, text[-2000:]
