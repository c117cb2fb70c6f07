"""`python -m rarespur report`: every figure family on real digits runs or synthetic tables, the theory, the CLI."""
from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from matplotlib.container import BarContainer, ErrorbarContainer  # noqa: E402
from scipy import stats  # noqa: E402

from rarespur.__main__ import main  # noqa: E402
from rarespur.config import CONF_DIR  # noqa: E402
from rarespur.report import FIGURES, deletion, examples, figures, privacy, sensitivity, theory  # noqa: E402
from rarespur.report.data import ReportData, load, mean_sem, normalise  # noqa: E402
from rarespur.runner import run_job  # noqa: E402

FAST = ["device=cpu", "epochs=2", "progress=false", "data.train_limit=400", "data.test_limit=100"]


def job(store, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return run_job(compose("config", overrides=[f"results_dir={store}", *FAST, *overrides]))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A small real sweep on digits: 3 patterns x n {0, 20} x 2 seeds x (mlp sgd, mlp adam, largemlp adam),
    an L2 strength sweep, and sensitivity runs (pixel removal + weight maps) of a clean and a poisoned MLP."""
    root = tmp_path_factory.mktemp("report_store")
    for model, optim in (("mlp", "sgd"), ("mlp", "adam"), ("largemlp", "adam")):
        for pattern in ("s1", "s3", "r3"):
            for n in (0, 20):
                for seed in (0, 1):
                    job(root, f"model={model}", f"optim={optim}", f"pattern={pattern}", f"poison.count={n}",
                        f"poison.seed={seed}")
    for strength in (1e-4, 1e-2):
        for n in (0, 20):
            job(root, "model=mlp", "optim=adam", "pattern=s3", f"poison.count={n}", "regularizer=l2",
                f"regularizer.strength={strength}")
    for n in (0, 20):
        job(root, "experiment=sensitivity", "model=mlp", "optim=adam", "pattern=s3", f"poison.count={n}",
            "sensitivity.images=100", "sensitivity.levels=6")
    return root


@pytest.fixture(scope="module")
def data(store) -> ReportData:
    return load(store)


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


# ---------------------------------------------------------------- score vs n (real runs)

def test_score_vs_n_panels_lines_and_axes(data):
    fig = figures.score_vs_n(data)
    axes = visible_axes(fig)
    # dataset/optimizer/target always split panels; model varies too: (adam, largemlp), (adam, mlp), (sgd, mlp)
    assert len(axes) == 3
    assert {ax.get_title() for ax in axes} == {
        "dataset digits, optimizer adam, target 0, model largemlp",
        "dataset digits, optimizer adam, target 0, model mlp",
        "dataset digits, optimizer sgd, target 0, model mlp",
    }
    for ax in axes:
        assert ax.get_xscale() == "symlog"
        assert ax.get_xlabel() == "poisoned training examples n (symlog; 0 = clean)" and "spurious score" in ax.get_ylabel()
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["r3", "s1", "s3"]
        assert len(errorbars(ax)) == 3
        for curve in errorbars(ax):
            assert list(points_of(curve)[0]) == [0, 20]  # clean baseline at n = 0, then n = 20
    assert "(36 runs)" in fig._suptitle.get_text()


def test_score_vs_n_mean_and_sem_match_a_hand_computation(data):
    fig = figures.score_vs_n(data)
    ax = next(a for a in visible_axes(fig) if a.get_title().endswith("optimizer adam, target 0, model mlp"))
    curve = errorbars(ax)[[t.get_text() for t in ax.get_legend().get_texts()].index("r3")]
    x, mean, half = points_of(curve)
    runs = data.runs
    for n, m, h in zip(x, mean, half):
        scores = runs[(runs["experiment.name"] == "train") & (runs["model.name"] == "mlp")
                      & (runs["optim.name"] == "adam") & (runs["pattern.name"] == "r3")
                      & (runs["regularizer.name"] == "none") & (runs["poison.count"] == n)]["spurious_score"].tolist()
        assert len(scores) == 2  # two data seeds
        hand_mean = sum(scores) / 2
        hand_sem = math.sqrt(sum((s - hand_mean) ** 2 for s in scores) / (2 - 1)) / math.sqrt(2)
        assert m == pytest.approx(hand_mean) and h == pytest.approx(hand_sem, abs=1e-12)


def test_mean_sem_numbers():
    frame = pd.DataFrame({"g": ["a", "a", "a", "b"], "v": [0.1, 0.3, 0.5, 0.7]})
    out = mean_sem(frame, ["g"], "v").set_index("g")
    assert out.loc["a", "mean"] == pytest.approx(0.3)
    assert out.loc["a", "sem"] == pytest.approx(0.2 / math.sqrt(3))
    assert out.loc["a", "runs"] == 3 and np.isnan(out.loc["b", "sem"])


def test_architectures_and_optimizers(data):
    arch = figures.architectures(data)
    arch_axes = visible_axes(arch)
    # lines = models; panels per dataset/pattern/optimizer/target with two models: adam x 3 patterns (sgd: mlp only)
    assert len(arch_axes) == 3 and all("optimizer adam" in ax.get_title() for ax in arch_axes)
    assert all([t.get_text() for t in ax.get_legend().get_texts()] == ["largemlp", "mlp"] for ax in arch_axes)
    assert "(24 runs)" in arch._suptitle.get_text()
    opt_axes = visible_axes(figures.optimizers(data))  # only mlp ran with both optimizers
    assert len(opt_axes) == 3 and all("model mlp" in ax.get_title() for ax in opt_axes)
    assert all([t.get_text() for t in ax.get_legend().get_texts()] == ["adam", "sgd"] for ax in opt_axes)
    only_mlp_sgd = ReportData(data.runs[(data.runs["model.name"] == "mlp") & (data.runs["optim.name"] == "sgd")])
    assert figures.architectures(only_mlp_sgd) is None and figures.optimizers(only_mlp_sgd) is None


def test_optimizer_label_shows_gradient_clipping():
    runs = synthetic_train([("sgd", 0.0), ("sgd", 0.1), ("adam", 0.01)])
    fig = figures.optimizers(ReportData(runs))
    (ax,) = visible_axes(fig)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["adam clip 0.01", "sgd", "sgd clip 0.1"]


def test_regularization_tradeoff(data):
    fig = figures.regularization(data)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2  # one panel: the score axis and its twin for the accuracies
    left, right = axes
    assert left.get_xscale() == "log" and "weight decay" in left.get_xlabel()
    assert "spurious score" in left.get_ylabel() and right.get_ylabel() == "accuracy"
    (score,) = errorbars(left)
    x, mean, _ = points_of(score)
    runs = data.runs[data.runs["regularizer.name"] == "l2"]
    assert list(x) == [1e-4, 1e-2]
    for strength, m in zip(x, mean):  # averaged over n (clean included) and seeds
        assert m == pytest.approx(runs[runs["regularizer.strength"] == strength]["spurious_score"].mean())
    assert len(errorbars(right)) == 2
    dashed = [line for line in left.lines + right.lines if line.get_linestyle() == "--"]
    assert len(dashed) == 3  # the unregularized references of the three metrics
    plain = data.runs[(data.runs["experiment.name"] == "train") & (data.runs["regularizer.name"] == "none")
                      & (data.runs["model.name"] == "mlp")
                      & (data.runs["optim.name"] == "adam") & (data.runs["pattern.name"] == "s3")
                      & (data.runs["poison.seed"] == 0)]  # the seed the regularized runs used
    assert len(plain) == 2 and dashed[0].get_ydata()[0] == pytest.approx(plain["spurious_score"].mean())


def test_pattern_norm_pearson_r_matches_scipy(data):
    table = figures.pattern_norm_table(data)
    assert sorted(table["pattern.name"]) == ["r3", "s1", "s3"]
    poisoned = data.runs[(data.runs["experiment.name"] == "train") & (data.runs["poison.count"] > 0)
                         & (data.runs["regularizer.name"] == "none")]
    means = poisoned.groupby("pattern.name")[["pattern_norm", "spurious_score"]].mean()
    r = stats.pearsonr(means["pattern_norm"], means["spurious_score"]).statistic
    assert figures.pearson(table) == pytest.approx(r)
    (ax,) = visible_axes(figures.pattern_norm(data))
    assert f"Pearson r = {r:.2f} over 3 patterns" in ax.get_title()
    assert "pattern norm" in ax.get_xlabel()
    assert means.loc["r3", "pattern_norm"] > means.loc["s3", "pattern_norm"] > means.loc["s1", "pattern_norm"] == 1.0


# ---------------------------------------------------------------- sensitivity (real runs)

def test_pixel_removal_and_weight_maps(data):
    fig = sensitivity.pixel_removal(data)
    (ax,) = visible_axes(fig)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["mlp (2 runs)"]
    (line,) = ax.lines
    assert list(line.get_xdata()) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    removal = data.table("pixel_removal")
    assert line.get_ydata()[0] == pytest.approx(removal[removal["p"] == 0]["mean_true_prob"].mean())
    maps = sensitivity.weight_maps(data)
    shown = [ax for ax in visible_axes(maps) if ax.images]
    assert len(shown) == 2
    assert "clean (n = 0)" in shown[0].get_title() and "poisoned: s3, n = 20" in shown[1].get_title()
    poisoned = data.runs[(data.runs["experiment.name"] == "sensitivity") & (data.runs["poison.count"] == 20)]
    stored = np.load(data.results_dir / poisoned["run_id"].iloc[0] / "weight_map.npy")
    assert np.array_equal(shown[1].images[0].get_array(), stored) and stored.shape == (28, 28)


# ---------------------------------------------------------------- synthetic tables (kinds that may be missing)

def synthetic_train(optimizers: list[tuple[str, float]]) -> pd.DataFrame:
    rows = []
    for optim, clip in optimizers:
        for n in (0, 3, 10):
            for seed in (0, 1):
                rows.append({"run_id": f"{optim}{clip}{n}{seed}", "experiment.name": "train", "dataset.name": "mnist",
                             "model.name": "largemlp", "optim.name": optim, "train.grad_clip": clip,
                             "pattern.name": "s3", "poison.count": n, "poison.target": 0, "poison.seed": seed,
                             "regularizer.name": "none", "spurious_score": 0.1 * n / 10 + 0.01 * seed,
                             "test_acc": 0.97, "spurious_test_acc": 0.9})
    return normalise(pd.DataFrame(rows))


def synthetic_membership() -> ReportData:
    rows, roc = [], []
    for n in (1, 3, 10):
        for seed in (0, 1):
            run_id = f"mi{n}{seed}"
            row = {"run_id": run_id, "experiment.name": "mem_inference", "dataset.name": "fashion",
                   "model.name": "largemlp", "optim.name": "sgd", "pattern.name": "r3", "poison.count": n,
                   "poison.target": 0, "poison.seed": seed}
            for attack, level in (("shadow", 0.5), ("loss", 0.6)):
                row |= {f"attack.{attack}.acc": 0.52, f"attack.{attack}.auc": 0.55,
                        f"attack.{attack}.members_flagged": level,
                        f"attack.{attack}.poisoned_flagged": 0.8 + 0.01 * seed,
                        f"attack.{attack}.tpr_at_1pct_fpr": 0.02, f"attack.{attack}.tpr_at_0.1pct_fpr": 0.003}
                fpr = np.array([0.0, 1e-3, 1e-2, 0.1, 1.0])
                roc += [{"run_id": run_id, "attack": attack, "fpr": f, "tpr": min(1.0, 2 * f)} for f in fpr]
            rows.append(row)
    return ReportData(normalise(pd.DataFrame(rows)), {"roc": pd.DataFrame(roc)})


def test_membership_bars_and_roc():
    data = synthetic_membership()
    fig = privacy.membership_bars(data)
    axes = visible_axes(fig)
    assert [ax.get_title() for ax in axes] == ["attack shadow", "attack loss"]
    bars = [c for c in axes[0].containers if isinstance(c, BarContainer)]
    assert len(bars) == 2 and all(len(b) == 3 for b in bars)  # members vs poisoned, for n = 1, 3, 10
    assert [p.get_height() for p in bars[0]] == pytest.approx([0.5] * 3)
    assert [p.get_height() for p in bars[1]] == pytest.approx([0.805] * 3)  # mean over seeds 0.80 and 0.81
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["1", "3", "10"]
    roc = privacy.membership_roc(data)
    roc_axes = visible_axes(roc)
    assert len(roc_axes) == 2
    for ax in roc_axes:
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        assert len(ax.lines) == 4  # n = 1, 3, 10 and chance
        assert ax.lines[0].get_ydata()[-1] == pytest.approx(1.0)


def test_deletion_before_after_exact():
    rows = []
    for method in ("incremental_retraining", "group_influence", "retrain_exact"):
        for n in (3, 100):
            for seed in (0, 1):
                row = {"run_id": f"{method}{n}{seed}", "experiment.name": method, "dataset.name": "mnist",
                       "model.name": "largemlp", "optim.name": "adam", "pattern.name": "r3", "poison.count": n,
                       "poison.target": 0, "spurious_score": 0.3, "test_acc": 0.95, "baseline_score": 0.05}
                if method != "retrain_exact":
                    row |= {"before.spurious_score": 0.4 + 0.1 * seed, "exact.spurious_score": 0.06,
                            "before.test_acc": 0.96, "exact.test_acc": 0.96}
                rows.append(row)
    fig = deletion.deletion(ReportData(normalise(pd.DataFrame(rows))))
    axes = visible_axes(fig)
    assert len(axes) == 6  # score and accuracy rows for three methods
    top = next(ax for ax in axes if ax.get_title() == "method incremental_retraining")
    assert [t.get_text() for t in top.get_legend().get_texts()] == [
        "after deletion", "before deletion", "clean baseline", "retrained from scratch"]
    before = errorbars(top)[1]
    x, mean, half = points_of(before)
    assert list(x) == [3, 100] and mean == pytest.approx([0.45, 0.45]) and half == pytest.approx([0.05, 0.05])
    exact_top = next(ax for ax in axes if ax.get_title() == "method retrain_exact")
    assert [t.get_text() for t in exact_top.get_legend().get_texts()] == ["clean baseline", "retrained from scratch"]


def test_every_figure_is_none_without_its_runs():
    empty = ReportData(pd.DataFrame({"run_id": ["x"], "experiment.name": ["other"]}))
    for spec in FIGURES:
        if spec.slug not in ("example_images", "theory"):
            assert spec.draw(empty) is None, spec.slug


# ---------------------------------------------------------------- example images

def test_example_images_apply_each_runs_pattern(data):
    fig = examples.example_images(data)
    shown = [ax for ax in fig.axes if ax.get_visible() and ax.images]
    assert len(shown) == 6  # clean + patched for r3, s1, s3
    titles = [ax.get_title() for ax in shown]  # top row: clean images, bottom row: patched
    assert titles == ["clean\ndigits"] * 3 + ["with r3", "with s1", "with s3"]
    clean, s3 = shown[2].images[0].get_array(), shown[5].images[0].get_array()
    assert np.all(s3[:5, :5] == 1.0) and np.array_equal(s3[5:, :], clean[5:, :])


def test_example_images_fall_back_to_digits(tmp_path):
    run = tmp_path / "abc"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({
        "pattern": {"name": "s2", "kind": "box", "top": 0, "left": 0, "height": 3, "width": 3, "value": 1.0},
        "dataset": {"name": "mnist", "path": None}, "data": {"root": str(tmp_path / "no_data")},
        "poison": {"seed": 0}}))
    runs = pd.DataFrame({"run_id": ["abc"], "experiment.name": ["train"], "pattern.name": ["s2"]})
    fig = examples.example_images(ReportData(runs, {}, tmp_path))
    top = next(ax for ax in fig.axes if ax.images)
    assert top.get_title() == "clean\ndigits (mnist not found)"


# ---------------------------------------------------------------- theory

@pytest.mark.parametrize("gamma, lam", [(0.01, 0.0), (0.05, 0.1), (0.003, 0.01)])
def test_theory_matches_monte_carlo(gamma, lam):
    setting = theory.LinearSetting(sigma_spur=0.3, a=2.0)
    sim = theory.simulate(setting, gamma, lam, n_train=1_000_000, n_test=300_000, seed=1)
    w_core, w_spur = theory.ridge_weights(setting, gamma, lam)
    assert sim["w_core"] == pytest.approx(w_core, abs=3e-3) and sim["w_spur"] == pytest.approx(w_spur, abs=3e-3)
    for name, closed in (("clean_accuracy", theory.clean_accuracy), ("spurious_accuracy", theory.spurious_accuracy),
                         ("spurious_score", theory.spurious_score)):
        assert sim[name] == pytest.approx(float(closed(setting, gamma, lam)), abs=0.01), name


def test_theory_shape_and_noise_equivalence():
    setting = theory.LinearSetting()
    gammas = np.array([1e-3, 1e-2, 0.1])
    _, w_spur = theory.ridge_weights(setting, gammas, 0.0)
    assert np.all(np.diff(w_spur) > 0)  # more poisoned examples, larger spurious weight
    assert theory.spurious_score(setting, 0.01, 0.1) < theory.spurious_score(setting, 0.01, 0.0)
    assert theory.spurious_score(setting, 0.0, 0.0) == 0.0
    assert theory.spurious_score(setting, 0.02, 0.01, noise_sigma=0.1) == pytest.approx(
        theory.spurious_score(setting, 0.02, 0.02))
    with pytest.raises(ValueError, match=r"\[0, 0.5\]"):
        theory.ridge_weights(setting, 0.7, 0.0)
    axes = visible_axes(theory.theory_figure())
    assert [ax.get_ylabel() for ax in axes] == ["clean test accuracy", "spurious accuracy (patched non-target)",
                                                "spurious score"]
    assert all(len(ax.lines) == len(theory.LAMBDAS) and ax.get_xscale() == "log" for ax in axes)


# ---------------------------------------------------------------- the command

def test_report_command_writes_index_figures_and_tables(store, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(store), "--out", str(out)]) == 0
    index = (out / "index.md").read_text()
    drawn = ["score_vs_n", "architectures", "optimizers", "regularization", "pixel_removal", "weight_maps",
             "pattern_norm", "example_images", "theory"]
    for slug in drawn:
        assert (out / f"{slug}.png").stat().st_size > 10_000 and f"]({slug}.png)" in index
    assert "Runs: 36." in index  # score vs n: 36 unregularized train runs
    assert "pattern, optimizer and target where two or more architectures ran. Runs: 24." in index
    assert "not drawn: no mem_inference runs" in index
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
