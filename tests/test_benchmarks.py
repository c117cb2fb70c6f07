"""benchmarks/all.py, the one command for every GPU number, run at its quick sizes on a CPU: so the code that
produces the GPU numbers cannot rot between the rare runs on a GPU machine (slow: about half a minute)."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT, SHARED_DATA, load_benchmark, require_data

# benchmarks that must run, every case with a ratio against its baseline (sih's and job's rows are their own)
REQUIRED = {"epoch", "pack", "influence"}


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table of `text`: its body rows (header and separator left out) as lists of cells."""
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            if current is None:
                current = []
                tables.append(current)
            current.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])])
        else:
            current = None
    return [table[2:] for table in tables]


@pytest.mark.slow
def test_every_benchmark_runs_at_quick_sizes_on_a_cpu(tmp_path):
    require_data(SHARED_DATA / "MNIST")
    out = tmp_path / "quick.md"
    cmd = [sys.executable, "benchmarks/all.py", "--device", "cpu", "--quick", "--data-root", str(SHARED_DATA)]
    start = time.perf_counter()
    done = subprocess.run([*cmd, "--out", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert elapsed < 120, f"all.py --quick took {elapsed:.0f} s; CI's budget for it is 120 s"
    text = out.read_text()
    assert text in done.stdout  # the same report on stdout
    cases, benchmarks = markdown_tables(text)
    ran = {name for name, _, _, status in benchmarks if status == "ok"}
    assert REQUIRED <= ran, benchmarks
    assert {row[0] for row in cases} == ran  # every benchmark that ran has its rows, and only those
    assert all(len(row) == 7 for row in cases), "a cell's text broke the table"
    keys = [(row[0], row[1]) for row in cases]
    assert len(keys) == len(set(keys)), "one row per benchmark case"
    for benchmark, case, _, baseline, ratio, *_ in cases:
        if baseline or benchmark in REQUIRED:  # a row with a baseline has its ratio, and these all have one
            assert float(ratio.removesuffix("x")) > 0, (benchmark, case)
    assert "projected full MNIST + Fashion grid:" in text and " h (" in text


def test_the_report_is_on_disk_after_each_benchmark_so_a_run_cut_short_keeps_it(tmp_path, monkeypatch):
    """A lent GPU machine's time can run out mid-run: whatever benchmarks finished are in --out already."""
    from types import ModuleType

    all_py = load_benchmark("all")
    common = load_benchmark("common")
    out, seen = tmp_path / "gpu.md", []

    def fake(name: str, seconds: float) -> ModuleType:
        def measure(device: str, quick: bool, data_root: str) -> list:
            seen.append(out.read_text() if out.exists() else "")
            if name == "bench_pack":
                raise KeyboardInterrupt  # the machine taken back
            return [common.Row(name.removeprefix("bench_"), "a case", seconds, 2 * seconds)]

        module = ModuleType(name)
        module.measure = measure
        return module

    for name, seconds in (("bench_epoch", 1.5), ("bench_pack", 2.0)):
        monkeypatch.setitem(sys.modules, name, fake(name, seconds))
    argv = ["all.py", "--device", "cpu", "--only", "epoch,pack", "--out", str(out), "--data-root", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(all_py, "projection_line", lambda rows: "")  # it expands the paper's grids: seconds
    with pytest.raises(KeyboardInterrupt):
        all_py.main()
    assert seen[0] == ""  # nothing before the first benchmark
    assert "| epoch | a case |" in seen[1] and "2.00x" in seen[1]  # epoch's report, before pack started
    assert out.read_text() == seen[1] and not list(tmp_path.glob("*.partial"))
