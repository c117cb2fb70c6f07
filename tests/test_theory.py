"""The closed-form theory of the report (rarespur/report/theory.py): the paper's formula, the exact population
ridge solution of the model behind it, a Monte-Carlo simulation of that model, the paper's qualitative claims
(l2 and input noise lower the spurious score, a phase transition at a small spurious fraction), and the figures."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy.stats import norm  # noqa: E402

from rarespur.report import theory  # noqa: E402
from rarespur.report.theory import PAPER, PHASE, LinearSetting, paper_closed_form, ridge_closed_form  # noqa: E402

MC_TOLERANCE = 0.01  # absolute, on accuracies and on the score (a prediction shift)
N = 200_000  # training and test examples per simulation, unless a point needs more
UNIT = LinearSetting(sigma_inv=0.5, sigma_sp=0.1, x_inv=1.0, x_sp=1.0)  # where the paper's formula is exact


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def simulate(
    setting: LinearSetting,
    gamma: float,
    lam: float,
    seed: int = 0,
    train_noise: float = 0.0,
    test_noise: float = 0.0,
    n: int = N,
) -> dict[str, float]:
    """Sample the model of theory.py, fit ridge with an intercept, and measure the three quantities.

    n balanced training examples, the pattern (x_sp added to the spurious feature) on round(gamma * n/2)
    of the target class (+1); features x_inv y + N(0, sigma_inv) and x_sp b + N(0, sigma_sp); optional
    Gaussian input noise of variance `train_noise` / `test_noise` on both features. Ridge: minimise
    mean (w.x + c - y)^2 + lam ||w||^2 (intercept c unpenalised). Test: n fresh balanced examples
    without the pattern; the spurious accuracy is on the non-target ones with the pattern pasted on,
    and the score is the mean prediction shift the pattern causes.
    """
    rng = np.random.default_rng(seed)

    def sample(poisoned: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat([1.0, -1.0], n // 2)
        b = np.zeros(n)
        b[:poisoned] = 1.0  # the first rows are the target class
        x = np.stack(
            [
                setting.x_inv * y + np.sqrt(setting.sigma_inv + noise) * rng.standard_normal(n),
                setting.x_sp * b + np.sqrt(setting.sigma_sp + noise) * rng.standard_normal(n),
            ],
            axis=1,
        )
        return x, y

    x, y = sample(round(gamma * n / 2), train_noise)
    mean_x, mean_y = x.mean(axis=0), y.mean()
    centred = x - mean_x
    w = np.linalg.solve(centred.T @ centred / n + lam * np.eye(2), centred.T @ (y - mean_y) / n)
    intercept = mean_y - w @ mean_x
    xt, yt = sample(0, test_noise)
    patched = xt + np.array([0.0, setting.x_sp])
    f, f_patched = xt @ w + intercept, patched @ w + intercept
    return {
        "clean_accuracy": float(np.mean(np.sign(f) == yt)),
        "spurious_accuracy": float(np.mean(f_patched[yt < 0] < 0)),
        "spurious_score": float(np.mean(f_patched - f)),
    }


def deviation(sim: dict[str, float], closed: theory.Quantities) -> float:
    return max(abs(sim[name] - float(getattr(closed, name))) for name in theory.Quantities._fields)


# ---------------------------------------------------------------- the model, by simulation

MC_POINTS = [  # (setting, gamma, lambda, n): the l2 panel, the phase-transition plot, unit magnitudes
    (PAPER, 0.05, 0.0, N),
    (PAPER, 0.2, 0.0, N),
    (PAPER, 0.5, 0.0, N),
    (PAPER, 0.2, 1.0, N),
    (PAPER, 0.4, 10.0, N),
    (PAPER, 0.3, 100.0, N),
    (PHASE, 0.01, 0.0, 4_000_000),  # the steep part: with N examples the score's spread is 0.013
    (PHASE, 0.2, 0.0, N),
    (UNIT, 0.3, 0.5, N),
]


@pytest.mark.parametrize("setting, gamma, lam, n", MC_POINTS)
def test_exact_solution_matches_the_simulation_and_a_wrong_lambda_does_not(setting, gamma, lam, n):
    """The population ridge solution is what ridge on sampled examples gives (measured over seeds 0-4:
    at most 0.006 off on any quantity), while the score of lambda' = 2 lambda + 1 is off by 8 % or more of
    the score and by at least 8 times the right lambda's error (measured: 9-69 %, 12-7000 times)."""
    sim = simulate(setting, gamma, lam, seed=1, n=n)
    right = ridge_closed_form(setting, gamma, lam)
    assert deviation(sim, right) < MC_TOLERANCE
    wrong_error = abs(sim["spurious_score"] - float(ridge_closed_form(setting, gamma, 2 * lam + 1).spurious_score))
    assert wrong_error > 0.08 * sim["spurious_score"]
    assert wrong_error > 8 * abs(sim["spurious_score"] - float(right.spurious_score))


def test_input_noise_on_train_and_test_raises_both_variances_and_on_train_only_acts_as_ridge():
    """The paper's noise panel (sigma + s everywhere) is the simulation with noise on training and test
    inputs; noise on the training inputs only gives ridge with lambda = s and the clean test variances."""
    s, gamma = 0.2, 0.3
    both = simulate(PAPER, gamma, 0.0, seed=2, train_noise=s, test_noise=s)
    assert deviation(both, ridge_closed_form(PAPER.noisy(s), gamma, 0.0)) < MC_TOLERANCE
    train_only = simulate(PAPER, gamma, 0.0, seed=3, train_noise=s)
    assert deviation(train_only, ridge_closed_form(PAPER, gamma, s)) < MC_TOLERANCE
    assert abs(train_only["clean_accuracy"] - float(ridge_closed_form(PAPER.noisy(s), gamma, 0.0).clean_accuracy)) > (
        MC_TOLERANCE
    )


# ---------------------------------------------------------------- the paper's formula against the model


def test_paper_formula_is_the_exact_solution_at_unit_magnitudes():
    """With x_inv = x_sp = 1 the printed formula and the population ridge solution are the same function."""
    gammas = np.linspace(0.0, 1.0, 41)
    for sigma_inv, sigma_sp in ((0.5, 0.1), (1.0, 0.05), (0.2, 2.0)):
        setting = LinearSetting(sigma_inv=sigma_inv, sigma_sp=sigma_sp, x_inv=1.0, x_sp=1.0)
        for lam in (0.0, 0.3, 10.0):
            paper, ridge = paper_closed_form(setting, gammas, lam), ridge_closed_form(setting, gammas, lam)
            for name in theory.Quantities._fields:
                np.testing.assert_allclose(getattr(paper, name), getattr(ridge, name), rtol=1e-12, atol=1e-15)
    sim = simulate(UNIT, 0.3, 0.5, seed=4)
    assert deviation(sim, paper_closed_form(UNIT, 0.3, 0.5)) < MC_TOLERANCE


def test_paper_formula_at_its_own_settings_is_close_on_accuracy_and_off_on_the_score():
    """At x_sp = sqrt 5 the printed D (x_sp^4 sigma_sp) and score denominator (x_sp^2 where the model has
    x_inv^2) part from the model: accuracies stay within 0.025 of the simulation, the score is 3.6x too small."""
    sim = simulate(PAPER, 0.2, 0.0, seed=5)
    paper = paper_closed_form(PAPER, 0.2, 0.0)
    assert abs(sim["clean_accuracy"] - float(paper.clean_accuracy)) < 0.025
    assert abs(sim["spurious_accuracy"] - float(paper.spurious_accuracy)) < 0.025
    assert sim["spurious_score"] / float(paper.spurious_score) == pytest.approx(3.6, abs=0.1)
    # the same ratio in closed form; and it vanishes with lambda, where (sigma + lambda) terms dominate
    gammas = theory.GAMMAS[1:]
    ratio = ridge_closed_form(PAPER, gammas, 0.0).spurious_score / paper_closed_form(PAPER, gammas, 0.0).spurious_score
    assert 3.3 < ratio.min() and ratio.max() < 3.7
    big = (
        ridge_closed_form(PAPER, gammas, 100.0).spurious_score / paper_closed_form(PAPER, gammas, 100.0).spurious_score
    )
    assert np.all(np.abs(big - 1) < 0.05)


# ---------------------------------------------------------------- numbers and shapes of the closed form


@pytest.mark.parametrize("form", [paper_closed_form, ridge_closed_form])
def test_no_spurious_examples_no_score_and_the_invariant_feature_alone(form):
    for lam in theory.LAMBDAS:
        q = form(PAPER, 0.0, lam)
        assert float(q.spurious_score) == 0.0
        assert float(q.clean_accuracy) == pytest.approx(norm.cdf(1 / np.sqrt(0.5)))  # x_inv / sqrt(sigma_inv)
        assert float(q.spurious_accuracy) == pytest.approx(float(q.clean_accuracy))
    # with x_inv != 1 only the exact solution keeps Phi(x_inv / sqrt(sigma_inv)): the paper's D assumes x_inv = 1
    strong = LinearSetting(x_inv=2.0)
    assert float(ridge_closed_form(strong, 0.0, 0.0).clean_accuracy) == pytest.approx(norm.cdf(2 / np.sqrt(0.5)))
    assert float(paper_closed_form(strong, 0.0, 0.0).clean_accuracy) == pytest.approx(norm.cdf(1 / np.sqrt(0.5)))


@pytest.mark.parametrize("form", [paper_closed_form, ridge_closed_form])
def test_l2_lowers_the_score_and_more_spurious_examples_raise_it(form):
    """A larger lambda, a smaller score: at every gamma > 0 for the exact solution; the printed formula
    only up to gamma = 0.32 (beyond, its lambda = 1 curve rises above its lambda = 0 curve)."""
    gammas = theory.GAMMAS[1:]
    scores = np.array([form(PAPER, gammas, lam).spurious_score for lam in theory.LAMBDAS])
    lower = np.diff(scores, axis=0) < 0
    if form is ridge_closed_form:
        assert np.all(lower)
    else:
        assert np.all(lower[:, gammas <= 0.32]) and np.all(lower[1:]) and not np.any(lower[0, gammas >= 0.33])
    assert np.all(np.diff(scores, axis=1) > 0)  # every lambda: a larger gamma, a larger score
    spurious = np.array([form(PAPER, gammas, lam).spurious_accuracy for lam in theory.LAMBDAS])
    assert np.all(np.diff(spurious, axis=1) < 0)  # the correlation costs accuracy on patched examples
    assert float(form(PAPER, 0.5, 100.0).spurious_score) < 0.015 < float(form(PAPER, 0.5, 0.0).spurious_score) / 10


def test_input_noise_lowers_the_score_where_the_formulas_say_so():
    """Noise of variance s lowers the exact score at every gamma; the printed formula only up to gamma ~ 0.2
    (beyond, its curves cross: at gamma = 0.5, s = 0.3 scores 0.161 against 0.151 without noise)."""
    gammas = theory.GAMMAS[1:]
    exact = np.array([ridge_closed_form(PAPER.noisy(s), gammas, 0.0).spurious_score for s in theory.NOISE_VARIANCES])
    assert np.all(np.diff(exact, axis=0) < 0)
    paper = np.array([paper_closed_form(PAPER.noisy(s), gammas, 0.0).spurious_score for s in theory.NOISE_VARIANCES])
    assert np.all(np.diff(paper[:, gammas <= 0.2], axis=0) < 0)
    assert paper[-1, -1] == pytest.approx(0.161, abs=1e-3) and paper[0, -1] == pytest.approx(0.151, abs=1e-3)
    for form in (paper_closed_form, ridge_closed_form):  # noise on the test inputs costs clean accuracy
        clean = np.array([form(PAPER.noisy(s), gammas, 0.0).clean_accuracy for s in theory.NOISE_VARIANCES])
        assert np.all(np.diff(clean, axis=0) < 0)


@pytest.mark.parametrize("form", [paper_closed_form, ridge_closed_form])
def test_phase_transition_a_small_gamma_does_most_of_the_damage(form):
    """A quiet spurious feature (sigma_sp = 0.05, x_sp = 5): gamma from 0 to 0.02 takes the spurious accuracy
    from 0.84 to 0.56 and the score to more than half its value at gamma = 0.3; gamma 0.05 .. 0.3 adds little."""
    at = {g: form(PHASE, g, 0.0) for g in (0.0, 0.02, 0.05, 0.3)}
    assert float(at[0.0].spurious_accuracy) == pytest.approx(0.841, abs=1e-3)
    assert float(at[0.02].spurious_accuracy) == pytest.approx(0.563, abs=2e-3)
    assert float(at[0.05].spurious_accuracy - at[0.3].spurious_accuracy) < 0.1
    assert float(at[0.02].spurious_score) > 0.5 * float(at[0.3].spurious_score)
    # the steepest fall of the spurious accuracy is at gamma -> 0: its slope there is 20x its slope after 0.05
    gammas = theory.PHASE_GAMMAS
    slope = -np.gradient(form(PHASE, gammas, 0.0).spurious_accuracy, gammas)
    assert slope[0] > 20 * slope[gammas >= 0.05].max()
    assert np.all(form(PHASE, gammas, 0.0).clean_accuracy > 0.82)  # clean accuracy barely notices


def test_inputs_are_checked():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        paper_closed_form(PAPER, 1.2, 0.0)
    with pytest.raises(ValueError, match="non-negative"):
        ridge_closed_form(PAPER, 0.1, -1.0)
    with pytest.raises(ValueError, match="positive"):
        LinearSetting(sigma_sp=0.0)


# ---------------------------------------------------------------- the figures


def legend_texts(fig) -> list[str]:
    (legend,) = fig.legends
    return [t.get_text() for t in legend.get_texts()]


@pytest.mark.parametrize(
    "draw, labels, gamma_max",
    [
        (theory.l2_figure, ["λ = 0", "λ = 1", "λ = 10", "λ = 100"], 0.5),
        (theory.noise_figure, ["s = 0", "s = 0.1", "s = 0.2", "s = 0.3"], 0.5),
        (theory.phase_figure, ["λ = 0"], 0.3),
    ],
)
def test_figures_draw_both_forms_per_curve_on_the_papers_axes(draw, labels, gamma_max):
    fig = draw()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title().replace("\n", " ") for ax in axes] == [
        "clean test accuracy",
        "spurious test accuracy (patched non-target examples)",
        "spurious score (prediction shift from the pattern)",
    ]
    assert [ax.get_ylabel() for ax in axes] == ["accuracy", "accuracy", "prediction shift"]
    assert all(ax.get_xlim() == (0.0, gamma_max) and ax.get_xlabel().startswith("γ:") for ax in axes)
    drawn = [[line for line in ax.lines if len(line.get_xdata())] for ax in axes]
    assert all(len(lines) == 2 * len(labels) for lines in drawn)  # the paper's formula and the exact solution
    assert [line.get_linestyle() for line in drawn[2][:2]] == ["-", "--"]
    assert legend_texts(fig) == labels + [label for label, _, _ in theory.FORMS]
    first = drawn[2][0]  # the score of the first curve, as printed in the paper
    setting = PHASE if gamma_max == 0.3 else PAPER
    np.testing.assert_allclose(first.get_ydata(), paper_closed_form(setting, first.get_xdata(), 0.0).spurious_score)


def test_the_report_section_needs_no_runs():
    specs = theory.SECTION.figures
    assert [spec.slug for spec in specs] == ["theory_l2", "theory_noise", "theory_phase"]
    assert all(spec.draw(None) is not None and spec.count_text(None) == "Closed form: no runs." for spec in specs)
