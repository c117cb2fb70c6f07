"""Is a poisoned run's pattern learned? Its per-image indicators against its clean twin's.

The comparison lives with the store because it reads the clean run's stored indicators: a poisoned
run compares itself when it finishes, and ``collect`` compares again for runs that finished before
their baseline, so the order of a sweep's jobs does not matter.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np

from rarespur.store.atomic import atomic_path
from rarespur.store.run_dir import INDICATORS, RunDir

log = logging.getLogger(__name__)


def welch_p_value(poisoned: np.ndarray, baseline: np.ndarray) -> float:
    """One-sided Welch t-test p-value for mean(poisoned) > mean(baseline).

    Indicator vectors are often constant (all zeros); then the test is
    undefined and we answer by the means: 0 if poisoned is higher, 1 otherwise.
    """
    if poisoned.var() == 0 and baseline.var() == 0:
        return 0.0 if poisoned.mean() > baseline.mean() else 1.0
    # scipy.stats.ttest_ind(equal_var=False, alternative="greater"), written out: importing scipy.stats costs
    # a job most of a second, scipy.special a third of that (tests/test_evaluate.py checks the two agree).
    from scipy.special import stdtr

    var_p, var_b = poisoned.var(ddof=1) / len(poisoned), baseline.var(ddof=1) / len(baseline)
    t = (poisoned.mean() - baseline.mean()) / np.sqrt(var_p + var_b)
    df = (var_p + var_b) ** 2 / (var_p**2 / (len(poisoned) - 1) + var_b**2 / (len(baseline) - 1))
    return float(stdtr(df, -t))


def save_indicators(run: RunDir, indicators: dict[int, np.ndarray]) -> None:
    with atomic_path(run.file(INDICATORS)) as tmp:
        np.savez_compressed(tmp, **{str(t): ind.astype(np.uint8) for t, ind in indicators.items()})


def load_indicators(run_path: Path) -> dict[int, np.ndarray]:
    """Per-image spurious indicators of a finished run, by target class."""
    with np.load(run_path / INDICATORS) as stored:
        return {int(t): stored[t].astype(np.float64) for t in stored.files}


def baseline_comparison(
    cfg: dict[str, Any], indicators: dict[int, np.ndarray], results_dir: Path, quiet: bool = False
) -> dict[str, Any]:
    """Baseline score and Welch p-value against the finished clean run of this config, if any.

    Called when a poisoned run finishes and again by ``collect`` for runs that
    finished before their baseline, so the order of jobs in a sweep does not matter.
    `quiet` drops the "no baseline yet" hint, which only helps the job that just ran.
    """
    if cfg["poison"]["count"] == 0:
        return {}
    clean_cfg = copy.deepcopy(cfg)
    clean_cfg["poison"]["count"] = 0
    baseline = RunDir(results_dir, clean_cfg)
    if not (baseline.done and baseline.file(INDICATORS).exists() and baseline.damage() is None):
        if not quiet:
            log.info("no finished clean baseline at %s yet; run poison.count=0 for the p-value", baseline.path)
        return {}
    stored = load_indicators(baseline.path)
    out: dict[str, Any] = {"baseline_run_id": baseline.key}
    scores, pvals = [], []
    for target, ind in indicators.items():
        base = stored[target]
        scores.append(float(base.mean()))
        pvals.append(welch_p_value(ind, base))
        if len(indicators) > 1:
            out[f"baseline_score@{target}"], out[f"p_value@{target}"] = scores[-1], pvals[-1]
    out["baseline_score"] = float(np.mean(scores))
    out["p_value"] = float(max(pvals))
    out["learned"] = bool(out["p_value"] < 0.05)
    return out
