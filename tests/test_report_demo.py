"""scripts/report_demo.sh: the README's demo runs every experiment type, collects them and draws the report,
and stops at the first failing step, naming it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "report_demo.sh"
EXPERIMENT_TYPES = sorted(path.stem for path in (REPO_ROOT / "conf" / "experiment").glob("*.yaml"))


def run_demo(*args: str | Path, timeout: float, **env: str) -> subprocess.CompletedProcess:
    """The script with this interpreter (the repository's venv under pytest) first on PATH and as PYTHON."""
    environ = {key: value for key, value in os.environ.items() if key != "RARESPUR_DEMO_EXTRA"}
    environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environ.get('PATH', '')}"
    environ["PYTHON"] = sys.executable
    environ.update(env)
    return subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environ,
    )


@pytest.mark.slow
def test_report_demo_runs_every_experiment_and_draws_the_report(tmp_path: Path) -> None:
    import pandas as pd

    results, report = tmp_path / "results", tmp_path / "report"
    done = run_demo(results, report, timeout=900)
    output = done.stdout + done.stderr
    print(output)  # pytest shows it when an assertion below fails
    assert done.returncode == 0, output[-5000:]
    assert str(report / "index.md") in output

    runs = pd.read_csv(results / "runs.csv")  # written by the script's `python -m rarespur collect` step
    counts = runs["experiment.name"].value_counts()
    missing = [name for name in EXPERIMENT_TYPES if counts.get(name, 0) == 0]
    assert not missing, f"no collected runs of {missing}; counts: {counts.to_dict()}"
    # the input-noise series of the regularization trade-off
    train = runs[runs["experiment.name"] == "train"]
    assert (train["regularizer.name"] == "gaussian_noise").sum() >= 2

    # every run holds the files its experiment type declares (Experiment.artifacts)
    from rarespur.experiments import EXPERIMENTS

    lacking = [
        f"{run_id} ({name}): {artifact}"
        for run_id, name in zip(runs["run_id"], runs["experiment.name"])
        for artifact in EXPERIMENTS[name].artifacts
        if not (results / run_id / artifact).is_file()
    ]
    assert not lacking, lacking

    pngs = {png.name for png in report.glob("*.png")}
    assert pngs, f"no PNG figures in {report}"
    assert "regularization.png" in pngs
    assert (report / "index.md").is_file()


def test_report_demo_stops_at_the_failed_step_and_names_it(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "results"
    not_a_dir.write_text("a file where the results folder should be\n")
    done = run_demo(not_a_dir, tmp_path / "report", timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "step 1 (prepare folders) failed" in output, output
    assert "=== step 2" not in output, output  # stopped there: no later step ran
