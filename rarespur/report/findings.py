"""The paper's claims checked on the runs of a store: the report's "Findings" table.

One row per claim of *Understanding Rare Spurious Correlations* (docs/science.md#spurious-score and the
sections after it): the verdict the runs support ("holds", "does not hold", or "not enough runs" with
what is missing), the numbers behind it, the runs it used and the report figure it comes from. Each
verdict follows a fixed rule (the ``rule`` column; docs/report.md#findings), so a change that breaks the
science shows as a flipped verdict on the same store. The thresholds are the constants below.

Comparisons between two kinds of runs (Adam against SGD, a regularizer against none, deletion against
retraining) are paired: each run meets the run with the same settings and seeds but the one compared
(:func:`paired`), so the test sees the effect, not the spread between settings.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import pandas as pd
from scipy import stats

from rarespur.report.data import SENSITIVITY, ReportData, config_columns, key, plural, settings
from rarespur.report.figures import (
    CLIP,
    method,
    pattern_norm_runs,
    pattern_norm_table,
    regularized_train,
    unregularized_train,
)
from rarespur.report.sections import Section, Shown
from rarespur.report.tables import group_keys

# Significance level of every test below (the store's "learned" uses the same).
ALPHA = 0.05
# "A handful": the paper learns the large-norm patterns from n = 3..10 poisoned images out of 60,000.
FEW_EXAMPLES = 10
# The patterns the paper calls large-norm (docs/science.md#spurious-score): the ones "a handful" is claimed for.
LARGE_NORM_PATTERNS = ("s3", "r3", "core")
# An n counts as learned in a cell when more than this share of its seeds' runs have p < ALPHA; the
# claim holds when more than this share of the large-norm cells learn at some n <= FEW_EXAMPLES.
MAJORITY = 0.5
# Fewest distinct patterns for the norm correlation (two norms only compare two patterns).
MIN_PATTERNS = 3
# Fewest architectures for the sensitivity rank correlation: with k architectures the exact one-sided
# Kendall test cannot go below 1/k!, which is under ALPHA only from k = 4 (1/24).
MIN_ARCHITECTURES = 4
# Fewest pairs of runs for a paired test.
MIN_PAIRS = 3
# The membership-inference attack of the paper (the others are this project's additions).
PAPER_ATTACK = "shadow"
ADAM, SGD = "adam", "sgd"
INCREMENTAL, INFLUENCE = "incremental_retraining", "group_influence"
L2, NOISE = "l2", "gaussian_noise"

HOLDS, FAILS, MISSING = "holds", "does not hold", "not enough runs"
SCORE = "spurious_score"
SMALLEST_N = "smallest significant n"


@dataclass(frozen=True)
class Verdict:
    verdict: str  # HOLDS, FAILS or MISSING
    evidence: str  # the numbers behind it, or what is missing
    runs: int = 0  # distinct runs the verdict rests on (none for MISSING)


@dataclass(frozen=True)
class Claim:
    claim: str  # the paper's statement, short
    figure: str  # slug of the report figure the numbers come from
    rule: str  # how the verdict is decided, as the table prints it
    check: Callable[[ReportData], Verdict]


def _g(value: float) -> str:
    return f"{value:.3g}"


def _p(value: float) -> str:
    return f"p = {value:.2g}"


def _poisoned(runs: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """Runs with n > 0 and every column of `columns` present and set."""
    if runs.empty or "poison.count" not in runs or any(c not in runs for c in columns):
        return pd.DataFrame()
    return runs[runs["poison.count"] > 0].dropna(subset=list(columns))


def paired_p(a: pd.Series | np.ndarray, b: pd.Series | np.ndarray, alternative: str) -> float:
    """Paired t-test p-value of `a` against `b` (``alternative`` as scipy's: "greater" = a > b).

    Differences that do not vary leave the t statistic undefined; as the store's Welch test does, they are
    answered by their sign: 0 when they lie in the alternative's direction, 1 otherwise.
    """
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if np.all(diff == diff[0]):
        inside = {"greater": diff[0] > 0, "less": diff[0] < 0, "two-sided": diff[0] != 0}[alternative]
        return 0.0 if inside else 1.0
    return float(stats.ttest_rel(a, b, alternative=alternative).pvalue)


def paired(left: pd.DataFrame, right: pd.DataFrame, ignore: Callable[[str], bool]) -> pd.DataFrame:
    """Each run of `left` beside its twin in `right`: the run with every setting equal, seeds included, but those
    `ignore` names. The twin's columns get the suffix " twin"; runs without one are left out (and where several
    qualify, differing only in ignored settings, the first is the twin).
    """
    if left.empty or right.empty:
        return pd.DataFrame()
    columns = [c for c in config_columns(left) if c in right and not ignore(c)]

    def with_cell(frame: pd.DataFrame) -> pd.DataFrame:  # concat, not assign: wide run tables warn on insert
        return pd.concat([frame, frame[columns].map(key).agg("\x1f".join, axis=1).rename("_cell")], axis=1)

    right = with_cell(right).drop_duplicates("_cell")
    return with_cell(left).merge(right, on="_cell", suffixes=("", " twin")).drop(columns="_cell")


# ---------------------------------------------------------------- a handful of examples


def significant_n_table(data: ReportData) -> pd.DataFrame:
    """Per pattern and setting (dataset, architecture, optimizer, ...): the smallest n learned, and the n tried.

    An n is learned when more than MAJORITY of its seeds' runs beat the clean baseline (p < ALPHA, the
    record's one-sided Welch test). Runs without a p-value (their baseline never ran) are left out.
    """
    runs = _poisoned(unregularized_train(data), "p_value")
    if runs.empty:
        return pd.DataFrame()
    keys = group_keys(runs, ("pattern.name",), ("poison.count",))
    rows = []
    for cell, group in runs.groupby(keys, dropna=False, sort=True):
        learned = group.groupby("poison.count")["p_value"].agg(lambda p: (p < ALPHA).mean())
        significant = learned[learned > MAJORITY].index
        rows.append(
            {
                **dict(zip(keys, cell)),
                SMALLEST_N: int(significant.min()) if len(significant) else pd.NA,
                "smallest n tried": int(learned.index.min()),
                "n tried": ", ".join(str(int(n)) for n in learned.index),
                "runs": len(group),
            }
        )
    return pd.DataFrame(rows).astype({SMALLEST_N: "Int64"})


def few_examples(data: ReportData) -> Verdict:
    """The paper's headline: the large-norm patterns are learned from a handful of poisoned images."""
    cells = significant_n_table(data)
    patterns = ", ".join(LARGE_NORM_PATTERNS)
    if cells.empty:
        return Verdict(MISSING, "no poisoned train run with a p-value (each needs its clean twin, n = 0)")
    large = cells[cells["pattern.name"].isin(LARGE_NORM_PATTERNS)]
    decided = large[large["smallest n tried"] <= FEW_EXAMPLES]
    if decided.empty:
        return Verdict(MISSING, f"no train run of {patterns} at n <= {FEW_EXAMPLES} with a p-value")
    smallest = decided[SMALLEST_N]
    learned = int((smallest <= FEW_EXAMPLES).fillna(False).sum())
    counts = Counter("none" if pd.isna(n) else str(n) for n in smallest)
    spread = ", ".join(f"{n} x{c}" for n, c in sorted(counts.items(), key=lambda kv: (kv[0] == "none", kv[0].zfill(9))))
    verdict = HOLDS if learned > MAJORITY * len(decided) else FAILS
    evidence = (
        f"p < {ALPHA:g} at n <= {FEW_EXAMPLES} in {learned} of {plural(len(decided), 'cell')} of {patterns}; "
        f"smallest n per cell: {spread} (every cell in smallest_significant_n.csv)"
    )
    return Verdict(verdict, evidence, int(decided["runs"].sum()))


# ---------------------------------------------------------------- pattern norm


def norm_cells(data: ReportData) -> pd.DataFrame:
    """Per cell of the pattern-norm figure (a setting and an n): Pearson r of norm against score over its patterns
    and its one-sided p (r > 0), for cells with MIN_PATTERNS patterns whose scores vary.

    The cell is the unit because its points are independent runs; pooling every cell's points would count each
    pattern's norm many times over and overstate the evidence.
    """
    points = pattern_norm_table(data)
    if points.empty:
        return pd.DataFrame()
    keys = [
        c for c in points.columns if c not in ("pattern.name", "pattern_norm", SCORE) and c in config_columns(points)
    ]
    rows = []
    for cell, group in points.groupby(keys, dropna=False, sort=True) if keys else [((), points)]:
        if group["pattern.name"].nunique() < MIN_PATTERNS or group[SCORE].nunique() < 2:
            continue
        fit = stats.pearsonr(group["pattern_norm"], group[SCORE], alternative="greater")
        cell = cell if isinstance(cell, tuple) else (cell,)
        rows.append({**dict(zip(keys, cell)), "r": float(fit.statistic), "p": float(fit.pvalue)})
    return pd.DataFrame(rows)


def larger_norm(data: ReportData) -> Verdict:
    """Pearson r of norm against score within each cell (setting and n), the cells' one-sided p-values combined."""
    points = pattern_norm_table(data)
    patterns = points["pattern.name"].nunique() if not points.empty else 0
    if patterns < MIN_PATTERNS:
        return Verdict(
            MISSING, f"poisoned train runs of {plural(patterns, 'pattern')} in the same settings; needs {MIN_PATTERNS}"
        )
    runs = len(pattern_norm_runs(data))
    cells = norm_cells(data)
    if cells.empty:
        return Verdict(FAILS, "the mean score does not vary over the patterns of any setting and n", runs)
    # a cell of exactly linear points has p = 0, whose log Fisher's method cannot take
    combined = float(stats.combine_pvalues(cells["p"].clip(lower=np.finfo(float).tiny), method="fisher").pvalue)
    median = float(cells["r"].median())
    norms = points.groupby("pattern.name")["pattern_norm"].mean().sort_values()
    evidence = (
        f"median Pearson r = {median:.3f} over {plural(len(cells), 'cell')} (setting and n; r > 0 in "
        f"{int((cells['r'] > 0).sum())}), Fisher-combined one-sided {_p(combined)} (mean norm "
        + ", ".join(f"{name} {_g(v)}" for name, v in norms.items())
        + ")"
    )
    return Verdict(HOLDS if median > 0 and combined < ALPHA else FAILS, evidence, runs)


# ---------------------------------------------------------------- input sensitivity


def _follows_model(runs: pd.DataFrame, column: str) -> bool:
    """Whether `column` is set by the architecture (its learning rate, weight decay): one value per model."""
    return bool(runs.groupby("model.name")[column].nunique(dropna=False).max() == 1)


def shared_cells(runs: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    """The runs of `models` in the cells (settings but the architecture and seeds) that every one of them ran.

    Settings an architecture brings with it (one value per architecture) do not split cells, except the
    dataset: architectures are never compared across datasets.
    """
    runs = runs[runs["model.name"].isin(models)]
    keys = [c for c in settings(runs, ("model.name",)) if c == "dataset.name" or not _follows_model(runs, c)]
    if not keys:
        return runs
    cells = runs[keys].map(key).agg("\x1f".join, axis=1)
    shared = set.intersection(*(set(cells[runs["model.name"] == m]) for m in models))
    return runs[cells.isin(shared)]


def sensitivity_points(data: ReportData) -> pd.DataFrame:
    """Per architecture: input sensitivity (1 - area under its pixel-removal curve, mean over runs) and the mean
    score of its poisoned train runs, each over the settings every architecture ran."""
    removal = data.experiment(SENSITIVITY)
    removal = removal.dropna(subset=["pixel_removal_auc"]) if "pixel_removal_auc" in removal else pd.DataFrame()
    train = _poisoned(unregularized_train(data), SCORE)
    if removal.empty or train.empty:
        return pd.DataFrame()
    models = sorted(set(removal["model.name"]) & set(train["model.name"]))
    if not models:
        return pd.DataFrame()
    removal, train = shared_cells(removal, models), shared_cells(train, models)
    points = pd.DataFrame(
        {
            "sensitivity": 1 - removal.groupby("model.name")["pixel_removal_auc"].mean(),
            "score": train.groupby("model.name")[SCORE].mean(),
            "runs": removal.groupby("model.name").size() + train.groupby("model.name").size(),
        }
    )
    return points.dropna().rename_axis("model.name").reset_index()


def sensitive_architectures(data: ReportData) -> Verdict:
    """A rank correlation, not r: sensitivity and score are on unrelated scales, only their order is compared."""
    points = sensitivity_points(data)
    if len(points) < MIN_ARCHITECTURES:
        return Verdict(
            MISSING,
            f"{plural(len(points), 'architecture')} with both sensitivity and poisoned train runs in shared settings; "
            f"needs {MIN_ARCHITECTURES}",
        )
    tau, p = stats.kendalltau(points["sensitivity"], points["score"], alternative="greater")
    ordered = points.sort_values("sensitivity")
    evidence = (
        f"Kendall tau = {tau:.3f}, one-sided {_p(p)} over {len(points)} architectures (sensitivity / mean score: "
        + ", ".join(
            f"{m} {_g(s)} / {_g(v)}"
            for m, s, v in ordered[["model.name", "sensitivity", "score"]].itertuples(index=False)
        )
        + ")"
    )
    return Verdict(HOLDS if tau > 0 and p < ALPHA else FAILS, evidence, int(points["runs"].sum()))


# ---------------------------------------------------------------- optimizers


def _optimizer_setting(column: str) -> bool:
    return column.startswith(("optim.", "dataset.recipe.")) or column == "train.lr"


def optimizers_differ(data: ReportData) -> Verdict:
    """Two-sided: the claim is that the optimizers differ; which one learns the pattern more is reported."""
    runs = _poisoned(unregularized_train(data), SCORE)
    if runs.empty or "optim.name" not in runs:
        return Verdict(MISSING, "no poisoned train runs")
    pairs = paired(runs[runs["optim.name"] == ADAM], runs[runs["optim.name"] == SGD], _optimizer_setting)
    if len(pairs) < MIN_PAIRS:
        return Verdict(
            MISSING, f"{plural(len(pairs), 'Adam run')} with an SGD twin (same settings and seeds); needs {MIN_PAIRS}"
        )
    adam, sgd = pairs[SCORE], pairs[f"{SCORE} twin"]
    p = paired_p(adam, sgd, "two-sided")
    diff = float((adam - sgd).mean())
    higher = "Adam" if diff > 0 else "SGD" if diff < 0 else "neither"
    evidence = (
        f"{len(pairs)} pairs: mean score Adam {_g(adam.mean())}, SGD {_g(sgd.mean())}; {higher} higher "
        f"(by {_g(abs(diff))}); paired t-test {_p(p)}"
    )
    return Verdict(HOLDS if p < ALPHA else FAILS, evidence, 2 * len(pairs))


# ---------------------------------------------------------------- deletion


def deletion_check(experiment: str) -> Callable[[ReportData], Verdict]:
    """The check of one deletion method: it leaves the score above retraining from scratch, which removes it."""

    def check(data: ReportData) -> Verdict:
        columns = (SCORE, f"before.{SCORE}", f"exact.{SCORE}", "before.p_value")
        runs = _poisoned(data.experiment(experiment), *columns)
        runs = runs[runs["before.p_value"] < ALPHA] if not runs.empty else runs
        if len(runs) < MIN_PAIRS:
            return Verdict(
                MISSING,
                f"{plural(len(runs), experiment + ' run')} whose parent learned the pattern, with the score retrained from "
                f"scratch (compare_exact); needs {MIN_PAIRS}",
            )
        before, after, exact = runs[f"before.{SCORE}"], runs[SCORE], runs[f"exact.{SCORE}"]
        p_stays = paired_p(after, exact, "greater")
        p_exact = paired_p(exact, before, "less")
        excess = float(before.mean() - exact.mean())
        remains = f"; {100 * (after.mean() - exact.mean()) / excess:.0f}% of the excess remains" if excess > 0 else ""
        evidence = (
            f"{len(runs)} runs: mean score before {_g(before.mean())}, after {_g(after.mean())}, retrained "
            f"{_g(exact.mean())}{remains}; after > retrained {_p(p_stays)}, retrained < before {_p(p_exact)}"
        )
        return Verdict(HOLDS if p_stays < ALPHA and p_exact < ALPHA else FAILS, evidence, len(runs))

    return check


# ---------------------------------------------------------------- membership inference


def poisoned_flagged(data: ReportData) -> Verdict:
    """Paired within a run: the poisoned examples against all members flagged by the same attack on the same model."""
    prefix = f"attack.{PAPER_ATTACK}."
    runs = _poisoned(data.experiment("mem_inference"), prefix + "poisoned_flagged", prefix + "members_flagged")
    if len(runs) < MIN_PAIRS:
        return Verdict(
            MISSING,
            f"{plural(len(runs), 'mem_inference run')} with n > 0 and the {PAPER_ATTACK} attack; needs {MIN_PAIRS}",
        )
    poisoned, members = runs[prefix + "poisoned_flagged"], runs[prefix + "members_flagged"]
    p = paired_p(poisoned, members, "greater")
    accuracy = f" (attack accuracy {_g(runs[prefix + 'acc'].mean())})" if prefix + "acc" in runs else ""
    evidence = (
        f"{PAPER_ATTACK} attack, {len(runs)} runs: poisoned examples flagged {_g(poisoned.mean())}, all training "
        f"members {_g(members.mean())}{accuracy}; one-sided paired t-test {_p(p)}"
    )
    return Verdict(HOLDS if p < ALPHA else FAILS, evidence, len(runs))


# ---------------------------------------------------------------- mitigation


def mitigation_pairs(data: ReportData, name: str) -> pd.DataFrame:
    """The trade-off figure's runs of mitigation `name` (a regularizer, or CLIP), each beside its reference: the
    unregularized run with every setting and seed equal but what the method sets, which is off (0), as the
    figure's "none" tick (l2 against weight decay 0, clipping against unclipped runs)."""
    runs = regularized_train(data)
    plain = unregularized_train(data)
    if runs.empty or plain.empty:
        return pd.DataFrame()
    sets = method(name).sets
    for column in sets:
        plain = plain[plain[column].astype(float) == 0.0] if column in plain else plain
    mitigated = runs[runs["method"] == name].dropna(subset=["test_acc"])
    return paired(mitigated, plain.dropna(subset=["test_acc"]), lambda c: c.startswith("regularizer.") or c in sets)


@dataclass(frozen=True)
class MitigationTest:
    """One mitigation against its references: one point per reference run, the mean over the mitigated runs that
    share it (each strength pairs with the same reference, so pairing run by run would count it many times)."""

    points: pd.DataFrame  # per reference: SCORE, test_acc (mitigated means) and their " twin" (the reference's)
    strengths: list[float]
    runs: int  # distinct runs: mitigated and references
    p_score: float  # one-sided paired: the score is lower with the mitigation
    p_acc: float  # one-sided paired: the clean accuracy is lower with the mitigation

    def evidence(self) -> str:
        p = self.points
        return (
            f"{plural(len(p), 'reference run')}, each against the mean of its runs over "
            f"{plural(len(self.strengths), 'strength')} ({', '.join(_g(s) for s in self.strengths)}): "
            f"mean score {_g(p[f'{SCORE} twin'].mean())} -> {_g(p[SCORE].mean())} ({_p(self.p_score)}), "
            f"clean accuracy {_g(p['test_acc twin'].mean())} -> {_g(p['test_acc'].mean())} ({_p(self.p_acc)})"
        )


def mitigation_test(data: ReportData, name: str) -> MitigationTest | None:
    """The paired tests of mitigation `name`; None with fewer than MIN_PAIRS reference runs."""
    pairs = mitigation_pairs(data, name)
    if pairs.empty:
        return None
    values = [SCORE, "test_acc", f"{SCORE} twin", "test_acc twin"]
    points = pairs.groupby("run_id twin")[values].mean()
    if len(points) < MIN_PAIRS:
        return None
    return MitigationTest(
        points=points,
        strengths=sorted(pairs["strength"].unique()),
        runs=pairs["run_id"].nunique() + len(points),
        p_score=paired_p(points[SCORE], points[f"{SCORE} twin"], "less"),
        p_acc=paired_p(points["test_acc"], points["test_acc twin"], "less"),
    )


def regularizer_check(name: str) -> Callable[[ReportData], Verdict]:
    """The check of one regularizer: against no regularizer, the score and the clean accuracy both fall."""

    def check(data: ReportData) -> Verdict:
        test = mitigation_test(data, name)
        if test is None:
            return Verdict(
                MISSING,
                f"{name} runs with an unregularized twin (same settings and seeds) for fewer than "
                f"{plural(MIN_PAIRS, 'reference run')}",
            )
        verdict = HOLDS if test.p_score < ALPHA and test.p_acc < ALPHA else FAILS
        return Verdict(verdict, test.evidence(), test.runs)

    return check


def clipping_changes_nothing(data: ReportData) -> Verdict:
    """The paper's null result: holds while clipping shows no significant reduction (weak evidence with few runs)."""
    test = mitigation_test(data, CLIP)
    if test is None:
        return Verdict(
            MISSING,
            "runs with train.grad_clip > 0 in the settings of a regularizer's runs and an unclipped twin (same "
            f"settings and seeds) for fewer than {plural(MIN_PAIRS, 'reference run')}",
        )
    return Verdict(FAILS if test.p_score < ALPHA else HOLDS, test.evidence(), test.runs)


# ---------------------------------------------------------------- the table

_WELCH = "the record's one-sided Welch test against the clean baseline"
CLAIMS = (
    Claim(
        f"A handful of poisoned examples (n = 3..{FEW_EXAMPLES} of 60,000) is enough to learn a large-norm pattern",
        "score_vs_n",
        "Per pattern and setting (dataset, architecture, optimizer, ...): the smallest n where more than half the "
        f"seeds' runs have p < {ALPHA:g} ({_WELCH}). Holds if that n is <= {FEW_EXAMPLES} in more than half of "
        f"the cells of {', '.join(LARGE_NORM_PATTERNS)} that tried an n <= {FEW_EXAMPLES}.",
        few_examples,
    ),
    Claim(
        "Patterns with a larger norm are learned more easily",
        "pattern_norm",
        "Within each setting and n (a cell of the pattern-norm figure, with mean norm and score over seeds per "
        f"pattern; needs {MIN_PATTERNS} patterns): Pearson r and its one-sided p; the cells' p-values combined by "
        f"Fisher's method. Holds if the median r > 0 and the combined p < {ALPHA:g}.",
        larger_norm,
    ),
    Claim(
        "More input-sensitive architectures are more susceptible",
        "pixel_removal",
        "Kendall tau (exact one-sided p) of input sensitivity (1 - area under the pixel-removal curve) against "
        "the mean score of poisoned train runs, one point per architecture, over the settings every one ran; "
        f"needs {MIN_ARCHITECTURES} architectures. Holds if tau > 0 and p < {ALPHA:g}.",
        sensitive_architectures,
    ),
    Claim(
        "Adam and SGD differ in how much they learn the pattern",
        "optimizers",
        "Each poisoned Adam train run paired with the SGD run of the same settings and seeds (learning rates "
        f"differ); two-sided paired t-test of the scores. Holds if p < {ALPHA:g}; the evidence says which is higher.",
        optimizers_differ,
    ),
    *(
        Claim(
            f"{label} does not remove the pattern; retraining from scratch does",
            "deletion",
            f"{experiment} runs whose parent learned the pattern (p < {ALPHA:g}, {_WELCH}), with the score before, "
            "after and retrained from scratch; one-sided paired t-tests. Holds if after > retrained and "
            f"retrained < before, p < {ALPHA:g} each.",
            deletion_check(experiment),
        )
        for experiment, label in ((INCREMENTAL, "Incremental retraining"), (INFLUENCE, "Group influence"))
    ),
    Claim(
        "Poisoned images are flagged by membership inference more often than other training images",
        "membership_bars",
        f"mem_inference runs with n > 0, the paper's {PAPER_ATTACK} attack; one-sided paired t-test of the share "
        f"of poisoned examples flagged against the share of all training members flagged. Holds if p < {ALPHA:g}.",
        poisoned_flagged,
    ),
    *(
        Claim(
            f"{label} reduces the score at an accuracy cost",
            "regularization",
            f"Each reference run (unregularized, weight decay 0 for l2, n = 0 included) against the mean of the {name} "
            "runs of the trade-off figure with its settings and seeds (every strength); one-sided paired t-tests over "
            f"the reference runs. Holds if the score and the clean test accuracy are both lower, p < {ALPHA:g} each.",
            regularizer_check(name),
        )
        for name, label in ((L2, "L2 weight decay"), (NOISE, "Gaussian input noise"))
    ),
    Claim(
        "Gradient clipping does not reduce the score",
        "regularization",
        "Each unclipped reference run against the mean of the runs with train.grad_clip > 0 of the trade-off figure "
        "(in the settings of a regularizer's runs) with its settings and seeds; one-sided paired t-test over the "
        f"reference runs. Holds unless the score is lower with p < {ALPHA:g}.",
        clipping_changes_nothing,
    ),
)


def findings_table(data: ReportData) -> pd.DataFrame:
    """One row per claim: claim, verdict, evidence, runs, figure, rule."""
    rows = []
    for claim in CLAIMS:
        verdict = claim.check(data)
        rows.append({"claim": claim.claim, **asdict(verdict), "figure": claim.figure, "rule": claim.rule})
    return pd.DataFrame(rows)


SECTION = Section(
    order=0,
    tables={"findings": findings_table, "smallest_significant_n": significant_n_table},
    shown=(
        Shown(
            "findings",
            "Findings",
            "The paper's claims checked on these runs: the verdict each rule gives (holds, does not hold, or not "
            "enough runs and what is missing), the numbers behind it, the runs used and the figure below they "
            "come from.",
        ),
    ),
)
