"""`python -m rarespur report`: every figure family on real digits runs or synthetic tables, the grouping rule,
the layout (titles, legends, nothing clipped), collect's table types and the CLI (the theory: test_theory.py)."""

from __future__ import annotations

import json
import logging
import math
from functools import partial

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.container import BarContainer, ErrorbarContainer  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from scipy import stats  # noqa: E402

from rarespur.__main__ import main  # noqa: E402
from rarespur.report import FIGURES, deletion, detection, examples, figures, mem_inference, sensitivity  # noqa: E402
from rarespur.report.data import ReportData, load, mean_sem, normalize, over_seeds, plural, split  # noqa: E402
from rarespur.report.plot import finish, grid  # noqa: E402
from rarespur.store.collect import write_table  # noqa: E402

from conftest import collect_runs
from conftest import job as shared_job

FAST = ["device=cpu", "epochs=2", "progress=false", "data.train_limit=400", "data.test_limit=100"]


job = partial(shared_job, base=tuple(FAST))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A small real sweep on digits: 3 patterns x n {0, 20} x 2 seeds x (mlp sgd, mlp adam, largemlp adam),
    an L2 strength sweep, and sensitivity runs (pixel removal + weight maps) of a clean and a poisoned MLP."""
    root = tmp_path_factory.mktemp("report_store")
    for model, optim in (("mlp", "sgd"), ("mlp", "adam"), ("largemlp", "adam")):
        for pattern in ("s1", "s3", "r3"):
            for n in (0, 20):
                for seed in (0, 1):
                    job(
                        root,
                        f"model={model}",
                        f"optim={optim}",
                        f"pattern={pattern}",
                        f"poison.count={n}",
                        f"poison.seed={seed}",
                    )
    for strength in (1e-4, 1e-2):
        for n in (0, 20):
            job(
                root,
                "model=mlp",
                "optim=adam",
                "pattern=s3",
                f"poison.count={n}",
                "regularizer=l2",
                f"regularizer.strength={strength}",
            )
    for n in (0, 20):
        job(
            root,
            "experiment=sensitivity",
            "model=mlp",
            "optim=adam",
            "pattern=s3",
            f"poison.count={n}",
            "sensitivity.images=100",
            "sensitivity.levels=6",
        )
    return root


@pytest.fixture(scope="module")
def data(store) -> ReportData:
    return load(store)


@pytest.fixture(scope="module")
def names(data) -> tuple[str, str]:
    """(small, large): the recorded names of model=mlp (the only one trained with SGD) and model=largemlp."""
    runs = data.runs
    small = runs[runs["optim.name"] == "sgd"]["model.name"].iloc[0]
    large = next(m for m in runs["model.name"].unique() if m != small)
    return small, large


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def visible_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def errorbars(ax) -> list[ErrorbarContainer]:
    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def points_of(container: ErrorbarContainer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, mean, half-width of the error bar) of an errorbar curve."""
    xy = container.lines[0].get_xydata()
    if container.lines[2]:
        half = np.array([(seg[1][1] - seg[0][1]) / 2 for seg in container.lines[2][0].get_segments()])
    else:
        half = np.zeros(len(xy))
    return xy[:, 0], xy[:, 1], half


def legend_texts(fig) -> list[str]:
    """The entries of the figure's one legend (figures draw no legend inside an axes)."""
    (legend,) = fig.legends
    return [t.get_text() for t in legend.get_texts()]


def curve(ax, label: str) -> ErrorbarContainer:
    return next(c for c in errorbars(ax) if c.get_label() == label)


def suptitle(fig) -> str:
    return fig._suptitle.get_text().replace("\n", " ")


# ---------------------------------------------------------------- score vs n (real runs)


def test_score_vs_n_panels_lines_and_axes(data, names):
    small, large = names
    fig = figures.score_vs_n(data)
    axes = visible_axes(fig)
    # model and optimizer vary: one panel per combination, titled by just those two settings
    assert {ax.get_title() for ax in axes} == {f"{large}, adam", f"{small}, adam", f"{small}, sgd"}
    assert legend_texts(fig) == ["r3", "s1", "s3"] and all(ax.get_legend() is None for ax in axes)
    for ax in axes:
        assert ax.get_xscale() == "symlog" and [t.get_text() for t in ax.get_xticklabels()] == ["0", "20"]
        assert (
            ax.get_xlabel() == "poisoned training examples n (symlog; 0 = clean)"
            and "spurious score" in ax.get_ylabel()
        )
        assert len(errorbars(ax)) == 3
        for line in errorbars(ax):
            assert list(points_of(line)[0]) == [0, 20]  # clean baseline at n = 0, then n = 20
    title = suptitle(fig)
    assert "all runs: digits" in title and "target 0" in title and "2 epochs" in title
    assert title.endswith("mean ± SEM over 2 seeds; 36 runs")


def test_score_vs_n_mean_and_sem_match_a_hand_computation(data, names):
    small, _ = names
    fig = figures.score_vs_n(data)
    ax = next(a for a in visible_axes(fig) if a.get_title() == f"{small}, adam")
    x, mean, half = points_of(curve(ax, "r3"))
    runs = data.runs
    for n, m, h in zip(x, mean, half):
        scores = runs[
            (runs["experiment.name"] == "train")
            & (runs["model.name"] == small)
            & (runs["optim.name"] == "adam")
            & (runs["pattern.name"] == "r3")
            & (runs["regularizer.name"] == "none")
            & (runs["poison.count"] == n)
        ]["spurious_score"].tolist()
        assert len(scores) == 2  # two data seeds
        hand_mean = sum(scores) / 2
        hand_sem = math.sqrt(sum((s - hand_mean) ** 2 for s in scores) / (2 - 1)) / math.sqrt(2)
        assert m == pytest.approx(hand_mean) and h == pytest.approx(hand_sem, abs=1e-12)


def test_end_markers_are_inside_the_axes(data):
    """The x range leaves room beyond the smallest and largest n, so their markers are not cut in half."""
    fig = figures.score_vs_n(data)
    fig.canvas.draw()
    for ax in visible_axes(fig):
        box = ax.get_window_extent()
        for line in errorbars(ax):
            marker = line.lines[0]
            half = marker.get_markersize() / 2 * fig.dpi / 72
            xs = ax.transData.transform(marker.get_xydata())[:, 0]
            assert xs.min() - half > box.x0 and xs.max() + half < box.x1


def test_mean_sem_numbers():
    frame = pd.DataFrame({"g": ["a", "a", "a", "b"], "v": [0.1, 0.3, 0.5, 0.7]})
    out = mean_sem(frame, ["g"], "v").set_index("g")
    assert out.loc["a", "mean"] == pytest.approx(0.3)
    assert out.loc["a", "sem"] == pytest.approx(0.2 / math.sqrt(3))
    assert out.loc["a", "runs"] == 3 and np.isnan(out.loc["b", "sem"])


def test_architectures_and_optimizers(data, names):
    small, large = names
    arch = figures.architectures(data)
    # lines = models; only adam ran with both models, so adam moves to the figure title and panels are patterns
    assert [ax.get_title() for ax in visible_axes(arch)] == ["pattern r3", "pattern s1", "pattern s3"]
    assert legend_texts(arch) == sorted([small, large]) and ", adam," in suptitle(arch)
    assert suptitle(arch).endswith("24 runs")
    opt = figures.optimizers(data)  # only the small mlp ran with both optimizers
    assert [ax.get_title() for ax in visible_axes(opt)] == ["pattern r3", "pattern s1", "pattern s3"]
    assert legend_texts(opt) == ["adam", "sgd"] and f"all runs: digits, {small}," in suptitle(opt)
    only_mlp_sgd = ReportData(data.runs[(data.runs["model.name"] == small) & (data.runs["optim.name"] == "sgd")])
    assert figures.architectures(only_mlp_sgd) is None and figures.optimizers(only_mlp_sgd) is None


def test_optimizer_label_shows_gradient_clipping():
    runs = synthetic_train([("sgd", 0.0), ("sgd", 0.1), ("adam", 0.01)])
    fig = figures.optimizers(ReportData(runs))
    assert len(visible_axes(fig)) == 1
    assert legend_texts(fig) == ["adam, grad clip 0.01", "sgd, grad clip 0.1", "sgd, no grad clip"]


def test_regularization_tradeoff(data, names):
    small, _ = names
    fig = figures.regularization(data)
    top, bottom = visible_axes(fig)  # one panel: the score above the accuracies
    assert top.get_title() == "regularizer l2" and top.get_xscale() == "log" and "weight decay" in top.get_xlabel()
    assert "spurious score" in top.get_ylabel() and bottom.get_ylabel() == "test accuracy"
    assert [t.get_text() for t in top.get_xticklabels()] == ["none", "0.0001", "0.01"]
    runs = data.runs
    regularized = runs[runs["regularizer.name"] == "l2"]
    plain = runs[
        (runs["experiment.name"] == "train")
        & (runs["regularizer.name"] == "none")
        & (runs["model.name"] == small)
        & (runs["optim.name"] == "adam")
        & (runs["pattern.name"] == "s3")
        & (runs["poison.seed"] == 0)
    ]  # the seed the regularized runs used
    assert legend_texts(fig)[:2] == ["clean (n = 0)", "n = 20"]
    for n, label in ((0, "clean (n = 0)"), (20, "n = 20")):  # one series per n: never averaged over n
        x, mean, _ = points_of(curve(top, label))
        assert list(x) == pytest.approx([1e-5, 1e-4, 1e-2])  # the unregularized point sits a decade left
        assert mean[0] == pytest.approx(plain[plain["poison.count"] == n]["spurious_score"].item())
        for strength, m in zip(x[1:], mean[1:]):
            assert m == pytest.approx(
                regularized[(regularized["regularizer.strength"] == strength) & (regularized["poison.count"] == n)][
                    "spurious_score"
                ].item()
            )
    assert len(errorbars(bottom)) == 4  # clean and spurious accuracy per n
    assert suptitle(fig).endswith("one run per point, not averaged; 6 runs")  # 4 regularized + 2 references


# ---------------------------------------------------------------- trade-off: clipping beside l2 and noise (synthetic)

# Known numbers per kind of run: a wrong reference or a wrongly pooled run moves the means checked below.
TRADEOFF_SCORE = {"none": 0.2, "l2": 0.1, "gaussian_noise": 0.05, "clip": 0.3}


def tradeoff_record(kind: str, strength: float, n: int, seed: int, weight_decay: float = 0.0, pattern: str = "s3"):
    """A train run of `kind` none, l2, gaussian_noise or clip at `strength` (clip: train.grad_clip)."""
    regularizer = kind if kind in ("l2", "gaussian_noise") else "none"
    return {
        "run_id": f"{kind}{strength}-{n}-{seed}-{weight_decay}-{pattern}",
        "experiment.name": "train",
        "dataset.name": "mnist",
        "model.name": "largemlp",
        "optim.name": "adam",
        "train.grad_clip": strength if kind == "clip" else 0.0,
        "train.weight_decay": strength if kind == "l2" else weight_decay,
        "pattern.name": pattern,
        "poison.count": n,
        "poison.target": 0,
        "poison.seed": seed,
        "regularizer.name": regularizer,
        "regularizer.strength": strength if regularizer != "none" else np.nan,
        "spurious_score": TRADEOFF_SCORE[kind] + 0.01 * n + 0.001 * seed + 1000 * weight_decay + strength / 100,
        "test_acc": 0.9 - 0.05 * seed - strength / 10,
        "spurious_test_acc": 0.8 - 0.01 * n - weight_decay,
    }


@pytest.fixture(scope="module")
def tradeoff_records() -> list[dict]:
    """n 0 and 3, seeds 0 and 1: unregularized runs at weight decay 0 and 1e-4 (the CIFAR-10 recipe's), l2, noise
    at both weight decays, clipping at 0.01 and 0.1 with pattern s3, and clipping with r3, where nothing else ran."""
    records = []
    for n in (0, 3):
        for seed in (0, 1):
            records += [tradeoff_record("none", 0.0, n, seed, wd) for wd in (0.0, 1e-4)]
            records += [tradeoff_record("l2", s, n, seed) for s in (1e-3, 1e-2)]
            records += [tradeoff_record("gaussian_noise", 0.5, n, seed, wd) for wd in (0.0, 1e-4)]
            records += [tradeoff_record("clip", s, n, seed) for s in (0.01, 0.1)]
            records.append(tradeoff_record("clip", 0.1, n, seed, pattern="r3"))
    return records


def mean_of(records: list[dict], column: str, **match: object) -> float:
    """The mean of `column` over the records with the settings of `match` (keys with '.' spelt '__')."""
    chosen = [r[column] for r in records if all(r[k.replace("__", ".")] == v for k, v in match.items())]
    return sum(chosen) / len(chosen)


def test_tradeoff_table_has_clipping_as_a_method(tradeoff_records):
    table = figures.regularization_table(ReportData(normalize(pd.DataFrame(tradeoff_records))))
    assert set(table["method"]) == {"l2", "gaussian_noise", "clip"}
    clip = table[table["method"] == "clip"]
    assert list(clip["strength"]) == [0.01, 0.1] and list(clip["runs"]) == [4, 4]  # 2 n x 2 seeds, s3 only
    assert "pattern.name" not in table  # the r3 clipping runs have no regularizer beside them: left out
    for row in clip.itertuples():
        match = dict(train__grad_clip=row.strength, pattern__name="s3")
        assert row.spurious_score == pytest.approx(mean_of(tradeoff_records, "spurious_score", **match))
        assert row.test_acc == pytest.approx(mean_of(tradeoff_records, "test_acc", **match))
        assert row.spurious_test_acc == pytest.approx(mean_of(tradeoff_records, "spurious_test_acc", **match))
    # input noise at weight decay 0 and 1e-4: two rows, as weight decay is a setting of noise runs, not its strength
    noise = table[table["method"] == "gaussian_noise"]
    assert list(noise["train.weight_decay"]) == [0.0, 1e-4] and list(noise["runs"]) == [4, 4]
    assert list(noise["spurious_score"]) == pytest.approx(
        [
            mean_of(tradeoff_records, "spurious_score", regularizer__name="gaussian_noise", train__weight_decay=wd)
            for wd in (0.0, 1e-4)
        ]
    )


def test_tradeoff_figure_puts_clipping_beside_the_regularizers(tradeoff_records):
    """A column per method, a row per setting; each method's 'none' point is its own reference: weight decay 0
    for l2 and clipping (never the recipe's 1e-4), the noise runs' own weight decay for noise."""
    fig = figures.regularization(ReportData(normalize(pd.DataFrame(tradeoff_records))))
    tops = {ax.get_title().replace("\n", " "): ax for ax in visible_axes(fig) if ax.get_title()}
    assert len(tops) == 4 and len(visible_axes(fig)) == 8  # the score above the accuracies in each panel
    l2, noise, clip, noise_recipe = (
        tops["regularizer l2"],
        tops["regularizer gaussian_noise, weight decay 0"],
        tops["gradient clipping (no regularizer), weight decay 0"],
        tops["regularizer gaussian_noise, weight decay 0.0001"],
    )
    row = [ax.get_position() for ax in (l2, noise, clip)]  # side by side: l2 | noise | clip, the recipe's noise below
    assert row[0].y0 == row[1].y0 == row[2].y0 and row[0].x0 < row[1].x0 < row[2].x0
    assert noise_recipe.get_position().x0 == row[1].x0 and noise_recipe.get_position().y0 < row[1].y0
    assert [t.get_text() for t in clip.get_xticklabels()] == ["none", "0.01", "0.1"] and "clip" in clip.get_xlabel()
    panels = (
        (l2, [1e-3, 1e-2], 0.0, lambda s: dict(regularizer__name="l2", train__weight_decay=s)),
        (noise, [0.5], 0.0, lambda s: dict(regularizer__name="gaussian_noise", train__weight_decay=0.0)),
        (clip, [0.01, 0.1], 0.0, lambda s: dict(train__grad_clip=s, pattern__name="s3")),
        (noise_recipe, [0.5], 1e-4, lambda s: dict(regularizer__name="gaussian_noise", train__weight_decay=1e-4)),
    )
    for ax, strengths, reference_wd, runs_at in panels:
        for n, label in ((0, "clean (n = 0)"), (3, "n = 3")):  # one series per n, never averaged over n
            x, mean, half = points_of(curve(ax, label))
            assert list(x) == pytest.approx([strengths[0] / 10, *strengths])  # 'none' a decade left
            unclipped = dict(regularizer__name="none", train__grad_clip=0.0, train__weight_decay=reference_wd)
            assert mean[0] == pytest.approx(mean_of(tradeoff_records, "spurious_score", **unclipped, poison__count=n))
            for strength, m in zip(strengths, mean[1:]):
                assert m == pytest.approx(
                    mean_of(tradeoff_records, "spurious_score", **runs_at(strength), poison__count=n)
                )
            assert half[1] == pytest.approx(0.0005)  # SEM of seeds 0 and 1 (0.001 apart)
    assert suptitle(fig).endswith("mean ± SEM over 2 seeds; 32 runs")  # 24 mitigated + 8 references, r3 left out
    assert layout_problems(fig) == []


def test_pattern_norm_points_and_pearson_r(data, names):
    small, _ = names
    table = figures.pattern_norm_table(data)
    # one row per (model, optimizer) group and pattern: runs of different settings are never pooled
    assert len(table) == 9 and set(table["runs"]) == {2} and {"model.name", "optim.name"} <= set(table.columns)
    runs = data.runs
    poisoned = runs[
        (runs["experiment.name"] == "train")
        & (runs["poison.count"] > 0)
        & (runs["regularizer.name"] == "none")
        & (runs["model.name"] == small)
        & (runs["optim.name"] == "adam")
    ]
    means = poisoned.groupby("pattern.name")[["pattern_norm", "spurious_score"]].mean()
    r = stats.pearsonr(means["pattern_norm"], means["spurious_score"]).statistic
    fig = figures.pattern_norm(data)
    axes = visible_axes(fig)
    assert len(axes) == 3
    ax = next(a for a in axes if a.get_title().startswith(f"{small}, adam\n"))
    assert ax.get_title().endswith(f"Pearson r over 3 patterns: {r:.2f} (n = 20)")
    (line,) = errorbars(ax)
    x, y, _ = points_of(line)
    assert list(x) == pytest.approx(sorted(means["pattern_norm"])) and "pattern norm" in ax.get_xlabel()
    assert list(y) == pytest.approx(list(means.sort_values("pattern_norm")["spurious_score"]))
    assert means.loc["r3", "pattern_norm"] > means.loc["s3", "pattern_norm"] > means.loc["s1", "pattern_norm"] == 1.0


# ---------------------------------------------------------------- sensitivity (real runs)


def test_pixel_removal_and_weight_maps(data, names):
    small, _ = names
    fig = sensitivity.pixel_removal(data)
    axes = visible_axes(fig)
    # the clean and the poisoned model are different runs: one panel each, not one averaged curve
    assert [ax.get_title() for ax in axes] == ["clean (n = 0)", "n = 20"] and legend_texts(fig) == [small]
    removal = data.table("pixel_removal").merge(data.runs[["run_id", "poison.count"]], on="run_id")
    for ax, n in zip(axes, (0, 20)):
        (line,) = ax.lines
        assert list(line.get_xdata()) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        assert line.get_ydata()[0] == pytest.approx(
            removal[(removal["p"] == 0) & (removal["poison.count"] == n)]["mean_true_prob"].item()
        )
    assert "one run per curve, not averaged; 2 runs" in suptitle(fig)
    maps = sensitivity.weight_maps(data)
    shown = [ax for ax in visible_axes(maps) if ax.images]
    assert [ax.get_title() for ax in shown] == ["clean (n = 0)", "n = 20"]
    assert "pattern s3" in suptitle(maps)
    poisoned = data.runs[(data.runs["experiment.name"] == "sensitivity") & (data.runs["poison.count"] == 20)]
    stored = np.load(data.results_dir / poisoned["run_id"].iloc[0] / "weight_map.npy")
    assert np.array_equal(shown[1].images[0].get_array(), stored) and stored.shape == (28, 28)


# ---------------------------------------------------------------- the grouping rule


def synthetic_train(
    optimizers: list[tuple[str, float]], models: tuple[str, ...] = ("largemlp",), patterns: tuple[str, ...] = ("s3",)
) -> pd.DataFrame:
    rows = []
    for model in models:
        for pattern in patterns:
            for optim, clip in optimizers:
                for n in (0, 3, 10):
                    for seed in (0, 1):
                        rows.append(
                            {
                                "run_id": f"{model}{pattern}{optim}{clip}{n}{seed}",
                                "experiment.name": "train",
                                "dataset.name": "mnist",
                                "model.name": model,
                                "optim.name": optim,
                                "train.grad_clip": clip,
                                "pattern.name": pattern,
                                "poison.count": n,
                                "poison.target": 0,
                                "poison.seed": seed,
                                "regularizer.name": "none",
                                "spurious_score": 0.1 * n / 10 + 0.01 * seed + 0.3 * (model == "b"),
                                "pattern_norm": {"s1": 1.0, "s3": 5.0, "r3": 15.0}[pattern],
                                "test_acc": 0.97,
                                "spurious_test_acc": 0.9,
                            }
                        )
    return normalize(pd.DataFrame(rows))


def test_split_never_averages_runs_that_differ_in_a_setting():
    rows = []
    for model in ("a", "b"):
        for epochs in (2, 4):
            for limit in (5000, None):
                for seed in (0, 1):
                    rows.append(
                        {
                            "model.name": model,
                            "epochs": epochs,
                            "data.train_limit": limit,
                            "poison.seed": seed,
                            "train.model_seed": seed,
                            "pattern.name": "s3",
                            "pattern.top": 0,
                            "test_acc": 0.5 + 0.1 * seed,
                        }
                    )
    frame = pd.DataFrame(rows).astype({"data.train_limit": "Int64"})
    groups = split(frame)
    assert len(groups) == 8  # 2 models x 2 epochs x 2 data limits, whatever the metrics do
    for group in groups:  # every group holds exactly the two seeds of one setting
        assert sorted(group.rows["poison.seed"]) == [0, 1]
        assert group.rows[["model.name", "epochs", "data.train_limit"]].astype(str).nunique().max() == 1
    assert {g.title for g in groups} >= {"a, 2 epochs, first 5,000 training images", "b, 4 epochs, all training images"}
    frame.loc[frame["epochs"] == 4, ["pattern.name", "pattern.top"]] = ["r3", 3]
    # pattern.top only follows pattern.name: it splits nothing new and stays out of the names; epochs follows
    # the pattern too, but it is a setting a reader looks for, so it stays
    titles = [g.title for g in split(frame)]
    assert len(titles) == 8 and "a, pattern r3, 4 epochs, all training images" in titles
    assert not any("pattern.top" in title for title in titles)


def test_pattern_norm_with_two_models_gives_two_panels():
    runs = synthetic_train([("adam", 0.0)], models=("a", "b"), patterns=("s1", "s3", "r3"))
    fig = figures.pattern_norm(ReportData(runs))
    axes = visible_axes(fig)
    assert [ax.get_title().split("\n")[0] for ax in axes] == ["a", "b"]
    assert [c.get_label() for c in errorbars(axes[0])] == ["n = 3", "n = 10"]  # one series per n
    a_line, b_line = curve(axes[0], "n = 10"), curve(axes[1], "n = 10")
    assert list(points_of(b_line)[1] - points_of(a_line)[1]) == pytest.approx([0.3] * 3)  # b's own scores
    table = figures.pattern_norm_table(ReportData(runs))
    assert len(table) == 2 * 2 * 3 and set(table["runs"]) == {2}  # model x n (3, 10) x pattern, 2 seeds each


def test_panels_are_named_by_what_differs_and_the_rest_goes_to_the_figure_title():
    runs = synthetic_train([("adam", 0.0), ("sgd", 0.0)]).assign(**{"deletion.mode": np.nan})
    fig = figures.score_vs_n(ReportData(runs))
    assert [ax.get_title() for ax in visible_axes(fig)] == ["adam", "sgd"]
    assert "deletion" not in suptitle(fig)  # a setting these runs do not have is not named
    assert suptitle(fig).startswith(
        "Spurious score vs number of poisoned examples, per pattern "
        "all runs: mnist, largemlp, no grad clip, no regularizer, pattern s3, target 0"
    )


def test_plural_wording():
    assert plural(1, "run") == "1 run" and plural(3, "run") == "3 runs" and plural(1, "epoch") == "1 epoch"
    fig, _ = grid(1)
    assert (
        suptitle(finish(fig, "A figure", "", over_seeds([1]), 1)) == "A figure one run per point, not averaged; 1 run"
    )
    assert over_seeds([2, 2]) == "mean ± SEM over 2 seeds" and over_seeds([1, 3]).endswith("1-3 seeds per point")
    one = pd.DataFrame({"pattern_norm": [1.0], "spurious_score": [0.2]})
    assert figures.pearson_text({"n = 3": one}) == "Pearson r not given: 1 pattern, needs 3 or more"


# ---------------------------------------------------------------- layout of every figure


def drawn_texts(fig) -> list[Text]:
    """The texts the renderer really draws: visible, non-empty, not a tick label outside the axis' view."""
    fig.canvas.draw()
    hidden = {t for ax in fig.axes if not ax.get_visible() for t in ax.findobj(Text)}  # unused grid slots
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            every = {
                label
                for tick in axis.get_major_ticks() + axis.get_minor_ticks()
                for label in (tick.label1, tick.label2)
            }
            hidden |= every - {label for tick in axis._update_ticks() for label in (tick.label1, tick.label2)}
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and t not in hidden]


def layout_problems(fig) -> list[str]:
    """Texts beyond the figure's edge, legends on the data, the figure title on a panel or a panel title."""
    renderer = fig.canvas.get_renderer()
    problems = []
    for text in drawn_texts(fig):
        box = text.get_window_extent(renderer)
        if box.x0 < -1 or box.y0 < -1 or box.x1 > fig.bbox.x1 + 1 or box.y1 > fig.bbox.y1 + 1:
            problems.append(f"clipped: {text.get_text()[:50]!r}")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    problems += [f"legend inside {ax.get_title()!r}" for ax in axes if ax.get_legend() is not None]
    for legend in fig.legends:
        problems += [
            f"legend over {ax.get_title()!r}"
            for ax in axes
            if legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
        ]
    if fig._suptitle is not None:
        title = fig._suptitle.get_window_extent(renderer)
        for ax in axes:
            parts = [
                ax.get_window_extent(renderer),
                ax.title.get_window_extent(renderer),
                ax.yaxis.label.get_window_extent(renderer),
            ]
            problems += [f"figure title over {ax.get_title()!r}" for part in parts if title.overlaps(part)]
    return problems


def synthetic_membership() -> ReportData:
    rows, roc = [], []
    for n in (1, 3, 10):
        for seed in (0, 1):
            run_id = f"mi{n}{seed}"
            row = {
                "run_id": run_id,
                "experiment.name": "mem_inference",
                "dataset.name": "fashion",
                "model.name": "largemlp",
                "optim.name": "sgd",
                "pattern.name": "r3",
                "poison.count": n,
                "poison.target": 0,
                "poison.seed": seed,
            }
            for attack, level in (("shadow", 0.5), ("loss", 0.6)):
                row |= {
                    f"attack.{attack}.acc": 0.52,
                    f"attack.{attack}.auc": 0.55,
                    f"attack.{attack}.members_flagged": level,
                    f"attack.{attack}.poisoned_flagged": 0.8 + 0.01 * seed,
                    f"attack.{attack}.tpr_at_1pct_fpr": 0.02,
                    f"attack.{attack}.tpr_at_0.1pct_fpr": 0.003,
                }
                fpr = np.array([0.0, 1e-3, 1e-2, 0.1, 1.0])
                roc += [{"run_id": run_id, "attack": attack, "fpr": f, "tpr": min(1.0, 2 * f)} for f in fpr]
            rows.append(row)
    return ReportData(normalize(pd.DataFrame(rows)), {"roc": pd.DataFrame(roc)})


def synthetic_deletion() -> ReportData:
    rows = []
    for method in ("incremental_retraining", "group_influence", "retrain_exact"):
        for n in (3, 100):
            for seed in (0, 1):
                row = {
                    "run_id": f"{method}{n}{seed}",
                    "experiment.name": method,
                    "dataset.name": "mnist",
                    "model.name": "largemlp",
                    "optim.name": "adam",
                    "pattern.name": "r3",
                    "poison.count": n,
                    "poison.target": 0,
                    "poison.seed": seed,
                    "spurious_score": 0.3,
                    "test_acc": 0.95,
                    "baseline_score": 0.05,
                    "influence.wall_s": 1.0 + seed,
                }  # a metric under a config name
                if method != "retrain_exact":
                    row |= {
                        "before.spurious_score": 0.4 + 0.1 * seed,
                        "exact.spurious_score": 0.06,
                        "before.test_acc": 0.96,
                        "exact.test_acc": 0.96,
                    }
                rows.append(row)
    return ReportData(normalize(pd.DataFrame(rows)))


def synthetic_detection() -> ReportData:
    """detect runs (S3, n in {0, 100}, 2 seeds) and xbl runs (both masks) as their records look."""
    rows = []
    base = {"dataset.name": "mnist", "model.name": "largemlp", "optim.name": "adam", "pattern.name": "s3"}
    for n in (0, 100):
        for seed in (0, 1):
            rows.append(
                {
                    **base,
                    "run_id": f"d{n}{seed}",
                    "experiment.name": "detect",
                    "poison.count": n,
                    "poison.seed": seed,
                    "detect.num_flagged": 0 if n == 0 else 1 + seed,
                    "detect.false_flagged": 0 if n == 0 else seed,
                    "detect.hit_at_1": np.nan if n == 0 else 1.0 - seed,
                    "detect.precision_at_n": np.nan if n == 0 else 0.9 + 0.1 * seed,
                    "detect.first_hit_rank": np.nan if n == 0 else 1 + seed,
                    "parent.spurious_score": 0.1,
                }
            )
            for mask in ("detected", "truth"):
                if n:
                    rows.append(
                        {
                            **base,
                            "run_id": f"x{mask}{n}{seed}",
                            "experiment.name": "xbl",
                            "xbl.mask": mask,
                            "poison.count": n,
                            "poison.seed": seed,
                            "spurious_score": 0.01,
                            "test_acc": 0.97,
                            "baseline_score": 0.002,
                            "before.spurious_score": 0.1,
                            "before.test_acc": 0.98,
                            "exact.spurious_score": 0.003,
                            "exact.test_acc": 0.98,
                        }
                    )
    return ReportData(normalize(pd.DataFrame(rows)))


def test_detection_table_and_xbl_figure():
    data = synthetic_detection()
    table = detection.detection_table(data).set_index("poison.count")
    assert table.loc[100, "detect.hit_at_1"] == 0.5 and table.loc[100, "detect.precision_at_n"] == pytest.approx(0.95)
    assert table.loc[0, "detect.false_flagged"] == 0 and table.loc[0, "runs"] == 2
    fig = detection.xbl(data)
    axes = visible_axes(fig)
    assert len(axes) == 4 and {ax.get_title() for ax in axes if ax.get_title()} == {"detected mask", "truth mask"}
    assert legend_texts(fig) == ["before XBL", "after XBL", "retrained from scratch", "clean baseline"]


@pytest.fixture(scope="module")
def synthetic_debias(tmp_path_factory) -> ReportData:
    """Debias runs: vanilla / LfF / SiH on Colored MNIST at four ratios and SiH on Corrupted CIFAR-10 at two,
    vanilla / SiH on poisoned MNIST, and one SiH run's stored bias visualization."""
    from rarespur.experiments.debias import BIAS_VISUALIZATION
    from rarespur.methods.debias.visualize import BiasSwap, save_grid

    store = tmp_path_factory.mktemp("debias_store")
    rows = []
    for method, base in (("vanilla", 0.6), ("lff", 0.7), ("sih", 0.8)):
        for ratio in (0.005, 0.01, 0.02, 0.05):
            for seed in (0, 1, 2):
                rows.append(
                    {
                        "run_id": f"c{method}{ratio}{seed}",
                        "dataset.conflict_ratio": ratio,
                        "train.model_seed": seed,
                        "dataset.name": "cmnist",
                        "debias.name": method,
                        "test_acc": base + 0.01 * seed + ratio,
                        "test_acc_conflicting": base - 0.02,
                        "bias_test_acc": None if method == "vanilla" else 0.3,
                    }
                )
    for ratio in (0.01, 0.05):
        for seed in (0, 1):
            rows.append(
                {
                    "run_id": f"x{ratio}{seed}",
                    "dataset.conflict_ratio": ratio,
                    "train.model_seed": seed,
                    "dataset.name": "ccifar10",
                    "debias.name": "sih",
                    "test_acc": 0.3 + ratio,
                    "test_acc_conflicting": 0.2,
                    "bias_test_acc": 0.4,
                }
            )
    for method, score in (("vanilla", 0.9), ("sih", 0.5)):
        for n in (0, 3, 10):
            for seed in (0, 1):
                rows.append(
                    {
                        "run_id": f"m{method}{n}{seed}",
                        "dataset.name": "mnist",
                        "debias.name": method,
                        "pattern.name": "r3",
                        "poison.count": n,
                        "poison.seed": seed,
                        "test_acc": 0.97,
                        "spurious_score": score * (n > 0) + 0.01 * seed,
                    }
                )
    runs = pd.DataFrame(rows).assign(**{"experiment.name": "debias", "model.name": "vae_mlp", "optim.name": "adam"})
    images = np.random.default_rng(0).random((3, 3, 28, 28)).astype(np.float32)
    swap = BiasSwap(images, images, images[::-1], np.array([0, 1, 2]), np.array([1, 2, 0]), np.array([True] * 3))
    (store / "csih0.010").mkdir()
    save_grid(swap, store / "csih0.010" / BIAS_VISUALIZATION, tuple("0123456789"))
    return ReportData(normalize(runs), results_dir=store)


def test_debias_figures_and_table(synthetic_debias):
    from rarespur.report import debias

    fig = debias.benchmark_accuracy(synthetic_debias)
    assert set(legend_texts(fig)) == {f"{m} ({w})" for m in ("vanilla", "lff", "sih") for w in ("ours", "published")}
    assert "mean ± std over 2-3 seeds per point" in suptitle(fig)  # 3 on Colored MNIST, 2 on Corrupted CIFAR-10
    assert len(visible_axes(fig)) == 2  # a panel per benchmark, each with its own published numbers
    table = debias.benchmark_table(synthetic_debias).set_index(
        ["dataset.name", "debias.name", "dataset.conflict_ratio"]
    )
    row = table.loc[("cmnist", "sih", 0.01)]
    assert row["published %"] == 80.0 and row["unbiased acc % mean"] == pytest.approx(82.0)
    assert row["gap (points)"] == pytest.approx(2.0) and row["runs"] == 3
    row = table.loc[("ccifar10", "sih", 0.01)]
    assert row["published %"] == 35.2 and row["unbiased acc % mean"] == pytest.approx(31.0) and row["runs"] == 2
    rare = debias.rare_pattern(synthetic_debias)
    assert legend_texts(rare) == ["vanilla", "sih"]
    shown = debias.visualized_run(synthetic_debias)
    assert list(shown["run_id"]) == ["csih0.010"] and debias.bias_visualization(synthetic_debias) is not None


# Drawn from a run's real data, which the synthetic stores have not got: checked on real Corrupted CIFAR-10 by
# tests/test_ccifar.py::test_debias_run_splits_accuracy.
FROM_REAL_DATA = {"ccifar10_corruptions"}


@pytest.mark.parametrize(
    "spec",
    [spec for spec in FIGURES if spec.slug not in FROM_REAL_DATA],
    ids=[spec.slug for spec in FIGURES if spec.slug not in FROM_REAL_DATA],
)
def test_no_text_is_clipped_and_no_legend_covers_data(spec, data, synthetic_debias):
    fig = (
        spec.draw(data)
        or spec.draw(synthetic_membership())
        or spec.draw(synthetic_deletion())
        or spec.draw(synthetic_debias)
        or spec.draw(synthetic_detection())
    )
    assert fig is not None
    assert layout_problems(fig) == []


def test_a_long_figure_title_is_wrapped_inside_the_figure():
    runs = synthetic_train([("adam", 0.0), ("sgd", 0.0)]).assign(**{"data.train_limit": 12345, "epochs": 70})
    fig = figures.score_vs_n(ReportData(runs))  # two narrow panels, a long list of shared settings
    assert fig._suptitle.get_text().count("\n") >= 3 and layout_problems(fig) == []


# ---------------------------------------------------------------- synthetic tables (kinds that may be missing)


def test_membership_bars_and_roc():
    data = synthetic_membership()
    fig = mem_inference.membership_bars(data)
    axes = visible_axes(fig)
    assert [ax.get_title() for ax in axes] == ["shadow attack", "loss attack"]
    assert set(legend_texts(fig)) == {
        "all training members flagged",
        "poisoned examples flagged",
        "attack accuracy",
        "chance level 0.5",
    }
    bars = [c for c in axes[0].containers if isinstance(c, BarContainer)]
    assert len(bars) == 2 and all(len(b) == 3 for b in bars)  # members vs poisoned, for n = 1, 3, 10
    assert [p.get_height() for p in bars[0]] == pytest.approx([0.5] * 3)
    assert [p.get_height() for p in bars[1]] == pytest.approx([0.805] * 3)  # mean over seeds 0.80 and 0.81
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["1", "3", "10"]
    assert "fashion" in suptitle(fig) and "mean ± SEM over 2 seeds; 6 runs" in suptitle(fig)
    roc = mem_inference.membership_roc(data)
    roc_axes = visible_axes(roc)
    assert [ax.get_title() for ax in roc_axes] == ["shadow attack", "loss attack"]
    assert legend_texts(roc) == ["n = 1", "n = 3", "n = 10", "chance"]
    for ax in roc_axes:
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        assert len(ax.lines) == 4  # n = 1, 3, 10 and chance
        assert ax.lines[0].get_ydata()[-1] == pytest.approx(1.0)
    assert "mean TPR over 2 seeds" in suptitle(roc)


def test_deletion_before_after_exact():
    fig = deletion.deletion(synthetic_deletion())
    axes = visible_axes(fig)
    assert len(axes) == 6  # score and accuracy rows for three methods; influence.wall_s is no setting
    assert legend_texts(fig) == ["before deletion", "after deletion", "retrained from scratch", "clean baseline"]
    top = next(ax for ax in axes if ax.get_title() == "incremental_retraining")
    x, mean, half = points_of(curve(top, "before deletion"))
    assert list(x) == [3, 100] and mean == pytest.approx([0.45, 0.45]) and half == pytest.approx([0.05, 0.05])
    assert curve(top, "after deletion").lines[0].get_linestyle() == "--"  # visible where it lies on "before"
    exact_top = next(ax for ax in axes if ax.get_title() == "retrain_exact")
    assert exact_top.get_legend_handles_labels()[1] == ["retrained from scratch", "clean baseline"]


def test_every_figure_is_none_without_its_runs():
    empty = ReportData(pd.DataFrame({"run_id": ["x"], "experiment.name": ["other"]}))
    for spec in FIGURES:
        if spec.slug != "example_images" and not spec.slug.startswith("theory_"):
            assert spec.draw(empty) is None, spec.slug


# ---------------------------------------------------------------- example images


def test_example_images_apply_each_runs_pattern(data):
    fig = examples.example_images(data)
    shown = [ax for ax in fig.axes if ax.get_visible() and ax.images]
    assert len(shown) == 6  # clean + patched for r3, s1, s3
    titles = [ax.get_title() for ax in shown]  # top row: clean images, bottom row: patched
    assert titles == ["clean"] * 3 + ["with r3", "with s1", "with s3"]
    assert "first test image of digits" in suptitle(fig)
    clean, s3 = shown[2].images[0].get_array(), shown[5].images[0].get_array()
    assert np.all(s3[:5, :5] == 1.0) and np.array_equal(s3[5:, :], clean[5:, :])


def test_example_images_fall_back_to_digits(tmp_path):
    run = tmp_path / "abc"
    run.mkdir()
    (run / "config.json").write_text(
        json.dumps(
            {
                "pattern": {"name": "s2", "kind": "box", "top": 0, "left": 0, "height": 3, "width": 3, "value": 1.0},
                "dataset": {"name": "mnist", "path": None},
                "data": {"root": str(tmp_path / "no_data")},
                "poison": {"seed": 0},
            }
        )
    )
    runs = pd.DataFrame({"run_id": ["abc"], "experiment.name": ["train"], "pattern.name": ["s2"]})
    fig = examples.example_images(ReportData(runs, {}, tmp_path))
    assert "first test image of digits (mnist not found)" in suptitle(fig)


# ---------------------------------------------------------------- collect's table and the command


def fake_run(store, run_id: str, record: dict) -> None:
    run = store / run_id
    run.mkdir(parents=True)
    (run / "record.json").write_text(json.dumps({"run_id": run_id, **record}))
    (run / "config.json").write_text("{}")
    (run / "done").write_text("")


def test_collect_keeps_integer_settings_with_gaps_integer(tmp_path):
    """data.train_limit 5000 next to null stays 5000 (nullable Int64), not 5000.0, and the report groups it."""
    fake_run(tmp_path, "a", {"experiment.name": "other", "data.train_limit": 5000, "test_acc": 0.5})
    fake_run(tmp_path, "b", {"experiment.name": "other", "data.train_limit": None, "test_acc": 1.0})
    table = collect_runs(tmp_path)
    assert str(table["data.train_limit"].dtype) == "Int64" and table["test_acc"].dtype == float
    _, csv = write_table(table, tmp_path / "out")
    assert csv.read_text().splitlines()[1:] == ["a,other,5000,0.5", "b,other,,1.0"]
    groups = split(normalize(table))
    assert [g.title for g in groups] == ["first 5,000 training images", "all training images"]


def test_collect_does_not_log_missing_baselines(tmp_path, caplog):
    job(tmp_path, "pattern=s3", "poison.count=20")  # a poisoned run whose clean baseline never ran
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert len(collect_runs(tmp_path)) == 1
    assert "no finished clean baseline" not in caplog.text


def test_report_command_writes_index_figures_and_tables(store, tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "membership_bars.png").write_bytes(b"from an earlier report")
    assert main(["report", str(store), "--out", str(out)]) == 0
    index = (out / "index.md").read_text()
    drawn = [
        "score_vs_n",
        "architectures",
        "optimizers",
        "regularization",
        "pixel_removal",
        "weight_maps",
        "pattern_norm",
        "example_images",
        "theory_l2",
        "theory_noise",
        "theory_phase",
    ]
    for slug in drawn:
        assert (out / f"{slug}.png").stat().st_size > 10_000 and f"]({slug}.png)" in index
    assert "Runs: 36." in index  # score vs n: 36 unregularized train runs
    assert "where two or more architectures ran. Runs: 24." in index
    assert "not drawn: no mem_inference runs" in index and not (out / "membership_bars.png").exists()
    assert "not drawn: no incremental_retraining, group_influence or retrain_exact runs" in index
    for name in ("score_vs_n", "regularization", "sensitivity", "pattern_norm"):
        assert (out / f"{name}.csv").exists() and "\\begin{table}" in (out / f"{name}.tex").read_text()
    table = pd.read_csv(out / "score_vs_n.csv")
    assert len(table) == 3 * 3 * 2 and set(table["runs"]) == {2}
    assert "membership_inference: not written" in index


def test_report_command_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 1
    assert "no finished runs" in capsys.readouterr().err
