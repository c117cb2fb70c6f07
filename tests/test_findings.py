"""The report's Findings table: each claim's verdict flips between holds / does not hold / not enough runs on
runs built with known numbers, the numbers behind it are the ones a hand computation gives, and index.md
shows the table first.

The runs are copies of real records (the d453624 fixture store, one run of every experiment type, as
``python -m rarespur report`` reads it) with their settings and metrics changed, so every column the
checks read is a column the store really writes; a fresh train record is checked for them too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from rarespur.report import FIGURES, findings, write_report
from rarespur.report.data import ReportData, load, normalize
from rarespur.report.findings import FAILS, HOLDS, MISSING
from rarespur.report.sections import Section, Shown
from rarespur.report.tables import to_markdown

from conftest import job

FIXTURE = Path(__file__).parent / "fixtures" / "store_d453624" / "runs"


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict[str, dict]:
    """One real record per experiment type (train: the unregularized poisoned run), as the report reads it."""
    runs = load(shutil.copytree(FIXTURE, tmp_path_factory.mktemp("fixture") / "runs")).runs
    runs = runs[(runs["regularizer.name"] == "none") & (runs["poison.count"] > 0)]
    return {kind: rows.iloc[0].to_dict() for kind, rows in runs.groupby("experiment.name")}


class Runs:
    """Runs made from the real records: ``add(kind, settings and metrics)`` per run, then ``data``."""

    def __init__(self, templates: dict[str, dict]):
        self.templates, self.rows = templates, []

    def add(self, kind: str, **columns) -> None:
        row = {**self.templates[kind], "run_id": f"run{len(self.rows)}"}
        row.update({name.replace("__", "."): value for name, value in columns.items()})
        self.rows.append(row)

    @property
    def data(self) -> ReportData:
        return ReportData(normalize(pd.DataFrame(self.rows)))


def check(name: str, data: ReportData) -> findings.Verdict:
    """The verdict of the claim whose check function is `name`."""
    (claim,) = [c for c in findings.CLAIMS if getattr(c.check, "__name__", "") == name]
    return claim.check(data)


def train_run(runs: Runs, **columns) -> None:
    base = dict(model__name="mlp3x256", optim__name="adam", regularizer__name="none", train__grad_clip=0.0)
    runs.add("train", **(base | columns))


def test_every_column_the_checks_read_is_in_a_real_record(templates, tmp_path):
    fast = ("dataset=digits", "epochs=1", "progress=false", "data.train_limit=200", "pattern=s3")
    job(tmp_path, *fast, "poison.count=0")  # the clean twin first: the poisoned run's p-value needs it
    record = job(tmp_path, *fast, "poison.count=10")
    read = ["p_value", "spurious_score", "pattern_norm", "test_acc", "poison.count", "pattern.name", "train.grad_clip"]
    assert set(read) <= set(record) and np.isfinite(record["p_value"])
    assert {"regularizer.name", "optim.name", "model.name", "dataset.name", "train.weight_decay"} <= set(record)
    assert "pixel_removal_auc" in templates["sensitivity"]
    for method in ("incremental_retraining", "group_influence"):
        assert {"before.spurious_score", "exact.spurious_score", "before.p_value"} <= set(templates[method])
    assert {f"attack.shadow.{m}" for m in ("poisoned_flagged", "members_flagged", "acc")} <= set(
        templates["mem_inference"]
    )


# ---------------------------------------------------------------- a handful of examples

# p-values per (pattern, n): one per seed
P_VALUES = {
    ("s3", 3): [0.01, 0.2, 0.3],  # one seed of three: not learned
    ("s3", 10): [0.01, 0.01, 0.5],  # two of three: learned
    ("s3", 100): [0.0, 0.0, 0.0],
    ("r3", 3): [0.0, 0.01, 0.04],
    ("r3", 10): [0.0, 0.0, 0.0],
    ("r3", 100): [0.0, 0.0, 0.0],
    ("s1", 3): [0.5, 0.6, 0.7],  # small norm: never learned, and not voted on
    ("s1", 10): [0.5, 0.6, 0.7],
    ("s1", 100): [0.5, 0.2, 0.06],
}


def handful(templates, p_values: dict) -> ReportData:
    runs = Runs(templates)
    for (pattern, n), ps in p_values.items():
        for seed, p in enumerate(ps):
            train_run(runs, pattern__name=pattern, poison__count=n, poison__seed=seed, p_value=p)
    return runs.data


def test_smallest_significant_n_per_cell(templates):
    table = findings.significant_n_table(handful(templates, P_VALUES)).set_index("pattern.name")
    assert table.loc["s3", "smallest significant n"] == 10 and table.loc["r3", "smallest significant n"] == 3
    assert pd.isna(table.loc["s1", "smallest significant n"])
    assert set(table["n tried"]) == {"3, 10, 100"} and set(table["runs"]) == {9}
    verdict = check("few_examples", handful(templates, P_VALUES))
    assert verdict.verdict == HOLDS and verdict.runs == 18  # s3 and r3, s1 not voted on
    assert "in 2 of 2 cells of s3, r3, core" in verdict.evidence and "3 x1, 10 x1" in verdict.evidence


def test_few_examples_flips(templates):
    late = P_VALUES | {("r3", 3): [0.5, 0.5, 0.01], ("r3", 10): [0.5, 0.5, 0.5]}  # r3 first learned at n = 100
    verdict = check("few_examples", handful(templates, late))
    assert verdict.verdict == FAILS and "in 1 of 2 cells" in verdict.evidence  # one of two is not a majority
    assert check("few_examples", handful(templates, late | {("s1", 3): [0.0] * 3})).verdict == FAILS
    only_large_n = {key: ps for key, ps in P_VALUES.items() if key[1] == 100}  # nothing tried at n <= 10
    assert check("few_examples", handful(templates, only_large_n)).verdict == MISSING
    no_baseline = {key: [np.nan] * 3 for key in P_VALUES}
    missing = check("few_examples", handful(templates, no_baseline))
    assert missing.verdict == MISSING and "p-value" in missing.evidence


# ---------------------------------------------------------------- pattern norm

NORMS = {"s1": 1.0, "s3": 4.9, "r3": 9.5}


def norm_runs(templates, score_of, patterns=("s1", "s3", "r3")) -> ReportData:
    runs = Runs(templates)
    for optim in ("adam", "sgd"):
        for pattern in patterns:
            for n in (3, 10):
                for seed in (0, 1):
                    train_run(
                        runs,
                        optim__name=optim,
                        pattern__name=pattern,
                        poison__count=n,
                        poison__seed=seed,
                        pattern_norm=NORMS[pattern] + 0.01 * seed,
                        spurious_score=score_of(pattern, n, seed),
                    )
    return runs.data


def pearson_by_hand(data: ReportData) -> tuple[float, float]:
    """The median of scipy's r and the Fisher-combined one-sided p over the cells (optimizer and n), each with a
    point per pattern: mean norm and score over the seeds."""
    points = data.runs.groupby(["optim.name", "poison.count", "pattern.name"])[["pattern_norm", "spurious_score"]]
    points = points.mean().reset_index()
    fits = [
        stats.pearsonr(cell["pattern_norm"], cell["spurious_score"], alternative="greater")
        for _, cell in points.groupby(["optim.name", "poison.count"])
    ]
    assert len(fits) == 4
    combined = stats.combine_pvalues([f.pvalue for f in fits], method="fisher").pvalue
    return float(np.median([f.statistic for f in fits])), float(combined)


def test_pattern_norm_r_and_p_are_scipys_within_each_cell(templates):
    data = norm_runs(templates, lambda pattern, n, seed: 0.02 * NORMS[pattern] * (1 + n / 10) + 0.03 * seed)
    r, p = pearson_by_hand(data)
    verdict = check("larger_norm", data)
    assert verdict.verdict == HOLDS and verdict.runs == 24
    assert (
        f"median Pearson r = {r:.3f} over 4 cells (setting and n; r > 0 in 4), Fisher-combined one-sided p = {p:.2g}"
        in (verdict.evidence)
    )
    cells = findings.norm_cells(data)
    assert len(cells) == 4 and set(cells["poison.count"]) == {3, 10} and (cells["r"] > 0.99).all()


def test_pattern_norm_flips(templates):
    falling = norm_runs(templates, lambda pattern, n, seed: 0.5 - 0.04 * NORMS[pattern] + 0.01 * seed)
    assert check("larger_norm", falling).verdict == FAILS
    weak = norm_runs(templates, lambda pattern, n, seed: 0.1 + 0.3 * (pattern == "s3") + 0.05 * (pattern == "r3"))
    r, p = pearson_by_hand(weak)
    verdict = check("larger_norm", weak)
    assert 0 < r and p > 0.05 and verdict.verdict == FAILS and f"median Pearson r = {r:.3f}" in verdict.evidence
    two = norm_runs(templates, lambda pattern, n, seed: NORMS[pattern], patterns=("s1", "r3"))
    assert check("larger_norm", two).verdict == MISSING


# ---------------------------------------------------------------- input sensitivity

MODELS = {"mlp1x256": (0.9, 0.1), "mlp3x256": (0.8, 0.2), "cnn": (0.6, 0.3), "resnet20": (0.3, 0.5)}  # auc, score


def sensitivity_runs(templates, models: dict[str, tuple[float, float]]) -> ReportData:
    runs = Runs(templates)
    for model, (auc, score) in models.items():
        lr = 0.1 if model == "resnet20" else 0.01  # a setting the architecture brings: does not split cells
        for seed in (0, 1):
            runs.add("sensitivity", model__name=model, poison__seed=seed, pixel_removal_auc=auc + 0.01 * seed)
            for pattern in ("s3", "r3"):
                train_run(
                    runs,
                    model__name=model,
                    train__lr=lr,
                    pattern__name=pattern,
                    poison__count=10,
                    poison__seed=seed,
                    spurious_score=score + 0.01 * seed,
                )
    train_run(runs, model__name="mlp1x256", pattern__name="s1", poison__count=10, spurious_score=0.9)  # only one ran
    return runs.data


def test_sensitive_architectures(templates):
    data = sensitivity_runs(templates, MODELS)
    points = findings.sensitivity_points(data).set_index("model.name")
    assert points.loc["mlp1x256", "score"] == pytest.approx(0.105)  # its s1 run is in no shared cell
    assert points.loc["resnet20", "sensitivity"] == pytest.approx(1 - 0.305)
    verdict = check("sensitive_architectures", data)
    assert verdict.verdict == HOLDS and verdict.runs == 4 * 6
    assert "Kendall tau = 1.000, one-sided p = 0.042 over 4 architectures" in verdict.evidence
    swapped = MODELS | {"mlp1x256": (0.9, 0.25)}  # the least sensitive is no longer the least susceptible
    verdict = check("sensitive_architectures", sensitivity_runs(templates, swapped))
    assert verdict.verdict == FAILS and "Kendall tau = 0.667, one-sided p = 0.17" in verdict.evidence
    three = {m: v for m, v in MODELS.items() if m != "cnn"}
    assert check("sensitive_architectures", sensitivity_runs(templates, three)).verdict == MISSING


# ---------------------------------------------------------------- optimizers


def optimizer_runs(templates, adam_gain: float, noise: float = 0.02) -> ReportData:
    rng = np.random.default_rng(0)
    runs = Runs(templates)
    for pattern in ("s3", "r3"):
        for n in (3, 10):
            for seed in (0, 1, 2):
                score = 0.1 * n / 10 + 0.1 * (pattern == "r3")
                for optim, lr, gain in (("sgd", 0.01, 0.0), ("adam", 0.001, adam_gain)):
                    value = score + gain + noise * rng.standard_normal()
                    train_run(
                        runs,
                        optim__name=optim,
                        train__lr=lr,
                        pattern__name=pattern,
                        poison__count=n,
                        poison__seed=seed,
                        spurious_score=value,
                    )
    return runs.data


def test_optimizers_are_paired_and_compared(templates):
    data = optimizer_runs(templates, adam_gain=-0.1)
    runs = data.runs
    adam = runs[runs["optim.name"] == "adam"].sort_values(["pattern.name", "poison.count", "poison.seed"])
    sgd = runs[runs["optim.name"] == "sgd"].sort_values(["pattern.name", "poison.count", "poison.seed"])
    p = stats.ttest_rel(adam["spurious_score"], sgd["spurious_score"]).pvalue
    verdict = check("optimizers_differ", data)
    assert verdict.verdict == HOLDS and verdict.runs == 24
    assert "12 pairs" in verdict.evidence and "SGD higher" in verdict.evidence and f"p = {p:.2g}" in verdict.evidence
    assert check("optimizers_differ", optimizer_runs(templates, adam_gain=0.0)).verdict == FAILS
    only_adam = ReportData(runs[runs["optim.name"] == "adam"])
    assert check("optimizers_differ", only_adam).verdict == MISSING


# ---------------------------------------------------------------- deletion


def deletion_runs(templates, after_of, before_p: float = 0.001, exact_of=None) -> ReportData:
    """Incremental-retraining runs: before and retrained-from-scratch scores set, after = after_of(before, exact)."""
    runs = Runs(templates)
    for n in (3, 10):
        for seed in (0, 1):
            before = 0.5 + 0.02 * seed + 0.01 * n
            exact = (0.02 if exact_of is None else exact_of(before)) + 0.01 * seed
            runs.add(
                "incremental_retraining",
                poison__count=n,
                poison__seed=seed,
                before__spurious_score=before,
                before__p_value=before_p,
                exact__spurious_score=exact,
                spurious_score=after_of(before, exact, seed),
            )
    return runs.data


def test_deletion_fails_where_retraining_does_not(templates):
    stays = deletion_runs(templates, lambda before, exact, seed: before - 0.01 * seed)
    verdict = findings.deletion_check("incremental_retraining")(stays)
    assert verdict.verdict == HOLDS and verdict.runs == 4
    assert "before 0.575, after 0.57, retrained 0.025" in verdict.evidence and "99% of the excess" in verdict.evidence
    removed = deletion_runs(templates, lambda before, exact, seed: exact + 0.001 * (seed - 0.5))
    assert findings.deletion_check("incremental_retraining")(removed).verdict == FAILS
    exact_keeps = deletion_runs(templates, lambda before, exact, seed: before + 0.1, exact_of=lambda before: before)
    assert findings.deletion_check("incremental_retraining")(exact_keeps).verdict == FAILS
    never_learned = deletion_runs(templates, lambda before, exact, seed: before, before_p=0.3)
    assert findings.deletion_check("incremental_retraining")(never_learned).verdict == MISSING
    influence = findings.deletion_check("group_influence")(stays)  # the store has no influence runs
    assert influence.verdict == MISSING and "0 group_influence runs" in influence.evidence


# ---------------------------------------------------------------- membership inference


def membership_runs(templates, poisoned: float, members: float, counts=(1, 3, 10)) -> ReportData:
    runs = Runs(templates)
    for n in counts:
        for seed in (0, 1):
            runs.add(
                "mem_inference",
                poison__count=n,
                poison__seed=seed,
                **{
                    "attack.shadow.poisoned_flagged": poisoned + 0.05 * seed * (n > 0),
                    "attack.shadow.members_flagged": members + 0.01 * n,
                    "attack.shadow.acc": 0.53,
                },
            )
    return runs.data


def test_membership_flags_poisoned_images(templates):
    verdict = check("poisoned_flagged", membership_runs(templates, 0.9, 0.5))
    assert verdict.verdict == HOLDS and verdict.runs == 6
    assert "poisoned examples flagged 0.925, all training members 0.547 (attack accuracy 0.53)" in verdict.evidence
    assert check("poisoned_flagged", membership_runs(templates, 0.5, 0.5)).verdict == FAILS
    assert check("poisoned_flagged", membership_runs(templates, np.nan, 0.5, counts=(0,))).verdict == MISSING


# ---------------------------------------------------------------- mitigation


def regularized_runs(templates, name: str, score_drop: float, acc_drop: float) -> ReportData:
    runs = Runs(templates)
    for n in (0, 3, 10):
        for seed in (0, 1):
            score, acc = 0.01 * n + 0.01 * seed, 0.97 - 0.002 * seed
            for wd in (1e-4, 0.0):  # two unregularized twins: the l2 runs' reference has no weight decay
                train_run(
                    runs,
                    poison__count=n,
                    poison__seed=seed,
                    train__weight_decay=wd,
                    spurious_score=score + wd * 1000,
                    test_acc=acc,
                )
            for strength in (1e-3, 1e-2):
                train_run(
                    runs,
                    poison__count=n,
                    poison__seed=seed,
                    regularizer__name=name,
                    regularizer__strength=strength,
                    train__weight_decay=strength if name == "l2" else 0.0,
                    spurious_score=score - score_drop * strength * 100 - 0.001 * seed,
                    test_acc=acc - acc_drop * strength * 100 - 0.001 * seed,
                )
    return runs.data


@pytest.mark.parametrize("name", ["l2", "gaussian_noise"])
def test_regularizers_trade_score_for_accuracy(templates, name):
    data = regularized_runs(templates, name, score_drop=0.05, acc_drop=0.1)
    pairs = findings.mitigation_pairs(data, name)
    assert len(pairs) == 12 and set(pairs["train.weight_decay twin"]) == {0.0}  # never the weight-decayed twin
    assert (pairs["poison.seed"] == pairs["poison.seed twin"]).all()
    check_of = findings.regularizer_check(name)
    verdict = check_of(data)
    assert (
        verdict.verdict == HOLDS
        and verdict.runs == 18  # 12 regularized runs and their 6 references, each reference tested once
        and "6 reference runs, each against the mean of its runs over 2 strengths (0.001, 0.01)" in verdict.evidence
    )
    assert check_of(regularized_runs(templates, name, score_drop=0.05, acc_drop=-0.01)).verdict == FAILS  # free
    assert check_of(regularized_runs(templates, name, score_drop=-0.01, acc_drop=0.1)).verdict == FAILS
    other = "gaussian_noise" if name == "l2" else "l2"
    assert check_of(regularized_runs(templates, other, 0.05, 0.1)).verdict == MISSING


def clipping_runs(templates, score_drop: float, beside_l2: bool = True) -> ReportData:
    """Runs clipped at 0.1 and 1 and unclipped, and (as the trade-off figure wants them) l2 runs of the same n."""
    runs = Runs(templates)
    for n in (3, 10):
        for seed in (0, 1, 2):
            for clip in (0.0, 0.1, 1.0):
                train_run(
                    runs,
                    poison__count=n,
                    poison__seed=seed,
                    train__grad_clip=clip,
                    spurious_score=0.3 + 0.01 * seed - score_drop * (clip > 0) + 0.003 * clip * (seed - 1),
                    test_acc=0.97,
                )
        if beside_l2:
            train_run(runs, poison__count=n, regularizer__name="l2", regularizer__strength=0.01, spurious_score=0.1)
    return runs.data


def test_clipping_changes_nothing(templates):
    verdict = check("clipping_changes_nothing", clipping_runs(templates, score_drop=0.0))
    assert (
        verdict.verdict == HOLDS
        and "6 reference runs, each against the mean of its runs over 2 strengths (0.1, 1)" in verdict.evidence
    )
    assert check("clipping_changes_nothing", clipping_runs(templates, score_drop=0.1)).verdict == FAILS
    unclipped = ReportData(clipping_runs(templates, 0.0).runs.query("`train.grad_clip` == 0"))
    assert check("clipping_changes_nothing", unclipped).verdict == MISSING
    alone = check("clipping_changes_nothing", clipping_runs(templates, 0.0, beside_l2=False))
    assert alone.verdict == MISSING and "in the settings of a regularizer's runs" in alone.evidence


def test_paired_p_of_constant_differences():
    assert findings.paired_p(np.array([1.0, 2.0]), np.array([0.0, 1.0]), "greater") == 0.0
    assert findings.paired_p(np.array([1.0, 2.0]), np.array([1.0, 2.0]), "greater") == 1.0
    assert findings.paired_p(np.array([1.0, 2.0]), np.array([2.0, 3.0]), "greater") == 1.0


# ---------------------------------------------------------------- the table in the report


def test_findings_table_heads_index_md(tmp_path):
    store = tmp_path / "runs"
    for record in FIXTURE.glob("*/record.json"):  # the train runs: the report is quick with few figures to draw
        if json.loads(record.read_text())["experiment.name"] == "train":
            shutil.copytree(record.parent, store / record.parent.name)
    index = write_report(store, tmp_path / "report").read_text()
    table = pd.read_csv(tmp_path / "report" / "findings.csv")
    assert list(table.columns) == ["claim", "verdict", "evidence", "runs", "figure", "rule"]
    assert len(table) == len(findings.CLAIMS) and set(table["verdict"]) <= {HOLDS, FAILS, MISSING}
    assert index.index("## Findings") < index.index("## 1. ")
    shown = index[index.index("## Findings") : index.index("## 1. ")]
    assert "| claim | verdict | evidence | runs | figure | rule |" in shown
    for row in table.itertuples():
        assert f"| {row.claim} | {row.verdict} | " in shown
    assert set(table["figure"]) <= {spec.slug for spec in FIGURES}


def test_a_shown_table_is_one_of_the_sections_tables_and_renders_as_markdown():
    with pytest.raises(ValueError, match="not among the section's tables"):
        Section(order=1, tables={"a": lambda data: pd.DataFrame()}, shown=(Shown("b", "B", "what b is"),))
    table = pd.DataFrame({"claim": ["x | y"], "r": [0.12345], "p": [np.nan], "runs": [3]})
    assert to_markdown(table).splitlines() == [
        "| claim | r | p | runs |",
        "| --- | --- | --- | --- |",
        "| x \\| y | 0.123 | -- | 3 |",
    ]
