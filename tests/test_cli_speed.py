"""The command line answers without loading torch or the experiments (seconds): run.py --help, --cfg job,
--info, tab completion and Hydra's plugin discovery, and python -m rarespur --help."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

HEAVY = ("torch", "rarespur.experiments")  # and their submodules

COMMANDS = {
    "help": (["run.py", "--help"], {}),
    "cfg job": (["run.py", "--cfg", "job", "pattern=s3", "model=largemlp", "dataset=mnistv8-3-0-0"], {}),
    "info": (["run.py", "--info"], {}),
    "completion": (["run.py", "--shell-completion", "query=bash"], {"COMP_LINE": "python run.py dataset="}),
    "rarespur help": (["-m", "rarespur", "--help"], {}),
    "rarespur collect help": (["-m", "rarespur", "collect", "--help"], {}),
}


def imported_modules(importtime: str) -> list[str]:
    """The modules named by ``python -X importtime`` output (lines ``import time: self | cumulative | name``,
    the name indented by its depth); the header line and any other output are skipped.

    Hydra loads the hydra_plugins modules themselves in a way importtime does not name, but everything
    they import is named, so a plugin that imports torch shows here."""
    names = []
    for line in importtime.splitlines():
        if not line.startswith("import time:"):
            continue
        name = line.rsplit("|", 1)[-1].strip()
        if name != "imported package":  # the header
            names.append(name)
    return names


def test_imported_modules_reads_importtime_lines():
    out = (
        "import time: self [us] | cumulative | imported package\n"
        "import time:       100 |        100 |   torch._C\n"
        "import time:      2000 |       2100 | torch\n"
        "some other line | torch\n"
    )
    assert imported_modules(out) == ["torch._C", "torch"]


@pytest.mark.parametrize("name", COMMANDS)
def test_the_command_line_loads_no_torch_and_no_experiment(name):
    args, env = COMMANDS[name]
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip()  # it answered
    modules = imported_modules(done.stderr)
    assert "rarespur.errors" in modules or "rarespur" in modules  # the output was read: not vacuous
    heavy = [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert not heavy, f"{' '.join(args)} imports {heavy[:5]}: import them where the job runs, not at the top"


STOCK = """
import runpy, sys
import rarespur.launch.fast_help as fast_help
fast_help.speed_up_help = lambda argv=None: None
sys.argv = ["run.py", "{flag}"]
runpy.run_path("run.py", run_name="__main__")
"""


@pytest.mark.parametrize("flag", ["--help", "--hydra-help"])
def test_the_faster_help_prints_what_hydra_prints(flag):
    """speed_up_help (run.py's reuse of one config repository for the group listings) changes the time, not
    the text: run.py's output equals Hydra's own, from run.py run with speed_up_help switched off."""
    fast = subprocess.run([sys.executable, "run.py", flag], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    stock = subprocess.run(
        [sys.executable, "-c", STOCK.format(flag=flag)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert fast.returncode == stock.returncode == 0, fast.stderr + stock.stderr
    assert "== Config groups" in fast.stdout or "Hydra" in fast.stdout
    assert fast.stdout == stock.stdout


def test_exit_now_runs_the_exit_handlers_flushes_and_keeps_the_code():
    script = (
        "import atexit, sys\n"
        "from rarespur.launch.process_exit import exit_now\n"
        "atexit.register(lambda: print('handler ran', file=sys.stderr))\n"
        "print('buffered', end='')\n"
        "exit_now(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 3 and done.stdout == "buffered" and done.stderr == "handler ran\n"


@pytest.mark.slow  # a real train job (3 s of torch import alone)
def test_a_train_job_imports_its_own_experiment_and_none_of_the_analysis_libraries(tmp_path, shared_data):
    """Every job paid seconds for importing every experiment (Captum, scikit-learn, SciPy's stats, Matplotlib);
    a train job now imports the one it runs (benchmarks/bench_job.py measures what that saves)."""
    done = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "run.py",
            "dataset=mnist",
            f"data.root={shared_data}",
            "data.train_limit=500",
            "data.test_limit=500",
            "epochs=1",
            f"results_dir={tmp_path}",
            f"hydra.run.dir={tmp_path}/h",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "HYDRA_FULL_ERROR": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    modules = set(imported_modules(done.stderr))
    assert {"torch", "rarespur.experiments.steps"} <= modules
    loaded = sorted(
        m
        for m in modules
        if m.split(".")[0] in ("captum", "sklearn", "matplotlib")
        or m.startswith(("scipy.stats", "rarespur.experiments.detect", "rarespur.experiments.mem_inference"))
    )
    assert loaded == []
