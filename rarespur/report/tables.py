"""Summary tables of the report: the numbers behind the figures, as CSV and LaTeX (pandas Styler)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from rarespur.report.data import SENSITIVITY, ReportData, sem, settings
from rarespur.report.deletion import deletion_runs
from rarespur.report.figures import REGULARIZER_DRAWN, pattern_norm_table, regularized_train, unregularized_train
from rarespur.report.privacy import attacks, mi_runs

# Columns every table keeps even when they are the same for all its runs, so a table read alone says what it is.
ALWAYS = ("dataset.name", "model.name", "optim.name")


def _keys(runs: pd.DataFrame, last: tuple[str, ...], drawn: tuple[str, ...] = ()) -> list[str]:
    """Group columns: ALWAYS, every other setting that varies (see data.settings), then `last`.

    Only the seeds and `drawn` (what a table deliberately averages over) are averaged over.
    """
    lead = [c for c in ALWAYS if c in runs and c not in last]
    varying = [c for c in settings(runs, (*last, *drawn)) if c not in lead]
    return [*lead, *varying, *[c for c in last if c in runs]]


def _summarise(runs: pd.DataFrame, by: list[str], columns: list[str]) -> pd.DataFrame:
    """Mean of each column per group; the first column also gets its SEM; plus the number of runs."""
    columns = [c for c in columns if c in runs and runs[c].notna().any()]
    if runs.empty or not columns:
        return pd.DataFrame()
    grouped = runs.groupby(by, dropna=False, sort=True)
    out = grouped[columns].mean()
    out.insert(1, f"{columns[0]} sem", grouped[columns[0]].agg(sem))
    out["runs"] = grouped.size()
    return out.reset_index()


def score_vs_n(data: ReportData) -> pd.DataFrame:
    """Spurious score (mean, SEM) and accuracies per setting, pattern and n (unregularized train runs).

    ``learned`` is the fraction of runs whose Welch test beat the clean baseline; settings that are the
    same for every run are left out of the columns.
    """
    runs = unregularized_train(data)
    if runs.empty:
        return pd.DataFrame()
    if "learned" in runs:
        runs = runs.assign(learned=runs["learned"].astype(float))
    return _summarise(
        runs,
        _keys(runs, ("pattern.name", "poison.count")),
        ["spurious_score", "baseline_score", "test_acc", "spurious_test_acc", "learned", "p_value"],
    )


def regularization(data: ReportData) -> pd.DataFrame:
    """Score and accuracies per regularizer and strength, averaged over n and seeds as the paper reports them
    (SPEC 1.8); every other setting that varies stays a column."""
    runs = regularized_train(data)
    if runs.empty:
        return pd.DataFrame()
    return _summarise(
        runs,
        _keys(runs, ("regularizer.name", "strength"), REGULARIZER_DRAWN),
        ["spurious_score", "test_acc", "spurious_test_acc"],
    )


def membership(data: ReportData) -> pd.DataFrame:
    """Per attack and n: accuracy, AUC, TPR at low FPR, members and poisoned examples flagged."""
    runs = mi_runs(data)
    if runs.empty:
        return pd.DataFrame()
    parts = []
    for attack in attacks(runs):
        prefix = f"attack.{attack}."
        renamed = runs.rename(columns=lambda c, prefix=prefix: c[len(prefix) :] if c.startswith(prefix) else c)
        renamed = renamed.loc[:, ~renamed.columns.duplicated()]
        part = _summarise(
            renamed,
            _keys(renamed, ("poison.count",)),
            ["poisoned_flagged", "members_flagged", "acc", "auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr"],
        )
        if not part.empty:
            part.insert(0, "attack", attack)
            parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def deletion(data: ReportData) -> pd.DataFrame:
    """Score and accuracy before / after deletion / retrained from scratch per method and n."""
    runs = deletion_runs(data)
    if runs.empty:
        return pd.DataFrame()
    columns = [prefix + m for m in ("spurious_score", "test_acc") for prefix in ("", "before.", "exact.")]
    return _summarise(
        runs,
        _keys(runs, ("experiment.name", "poison.count")),
        [*columns, "baseline_score", "param_dist.before_after", "param_dist.after_exact"],
    )


def sensitivity(data: ReportData) -> pd.DataFrame:
    """Per architecture: area under the pixel-removal curve and true-class probability at half the pixels."""
    runs = data.experiment(SENSITIVITY)
    if runs.empty:
        return pd.DataFrame()
    return _summarise(runs, _keys(runs, ("poison.count",)), ["pixel_removal_auc", "half_removed_true_prob"])


def pattern_norm(data: ReportData) -> pd.DataFrame:
    return pattern_norm_table(data)


TABLES: dict[str, Callable[[ReportData], pd.DataFrame]] = {
    "score_vs_n": score_vs_n,
    "regularization": regularization,
    "membership_inference": membership,
    "deletion": deletion,
    "sensitivity": sensitivity,
    "pattern_norm": pattern_norm,
}


def write_tables(data: ReportData, out: Path) -> dict[str, tuple[Path, Path] | None]:
    """Write every non-empty table as <name>.csv and <name>.tex; None for the empty ones."""
    written: dict[str, tuple[Path, Path] | None] = {}
    for name, make in TABLES.items():
        table = make(data)
        if table.empty:
            written[name] = None
            continue
        csv, tex = out / f"{name}.csv", out / f"{name}.tex"
        table.to_csv(csv, index=False)
        tex.write_text(to_latex(table, name))
        written[name] = (csv, tex)
    return written


def to_latex(table: pd.DataFrame, name: str) -> str:
    """A booktabs table, numbers to 3 decimals, names escaped for LaTeX."""
    styler = table.style.hide(axis="index").format(precision=3, escape="latex", na_rep="--")
    styler = styler.format_index(escape="latex", axis=1)
    caption = f"rarespur report: {name.replace('_', ' ')}"
    return styler.to_latex(hrules=True, caption=caption, label=f"tab:{name}")
