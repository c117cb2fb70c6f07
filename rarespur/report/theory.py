"""The paper's closed form for a linear model that meets a rare spurious feature, and its three report figures.

The theory section of *Understanding Rare Spurious Correlations* (arXiv 2202.05189) gives the clean
test accuracy, the spurious test accuracy and the spurious score of a linear model as functions of
the fraction gamma of spurious examples, the feature variances and the l2 strength lambda. The paper
states the result; the model below is the one it describes, worked out here so that the formula can
be checked by simulation (``tests/test_theory.py``).

The model
---------
* Labels y in {-1, +1}, equally likely; +1 is the target class.
* Invariant feature x_1 = x_inv * y + N(0, sigma_inv).
* Spurious feature x_2 = x_sp * b + N(0, sigma_sp), where b = 1 (the pattern is present) on a fraction
  gamma of the target class, i.e. on p = gamma / 2 of all training examples, and b = 0 otherwise.
  Test examples never carry the pattern unless it is pasted on ("patched").
* sigma_inv and sigma_sp are variances. The learner is least squares on the +-1 labels with an
  unpenalised intercept and the penalty lambda ||w||^2 on the mean loss, over the whole population
  (infinitely many training examples).

The population solution, with centred moments S11 = x_inv^2 + sigma_inv, S22 = p (1 - p) x_sp^2 +
sigma_sp, S12 = p x_inv x_sp, E[x_1 y] = x_inv, E[x_2 y] = p x_sp, is

    w_inv = x_inv (p (1 - 2p) x_sp^2 + sigma_sp + lambda) / det,    w_sp = p x_sp (sigma_inv + lambda) / det,
    det = (S11 + lambda)(S22 + lambda) - S12^2,    intercept = -w_sp p x_sp.

Rescaled by det / (sigma_inv + lambda), the invariant part of a test prediction has mean T y with the
paper's T (p (1 - 2p) = gamma (1 - gamma) / 2), the intercept shifts every prediction by -p^2 x_sp^2
(hence the two halves of the clean accuracy), and pasting the pattern adds w_sp x_sp, the paper's
"spurious score", a difference of predictions (not a thresholded fraction as in the experiments).

Where the paper's formula and this model differ
-----------------------------------------------
T, the means of every test margin and the numerator of the spurious score agree for every setting.
Two terms do not, and both agree again when x_inv = x_sp = 1:

* the spread: the model has D^2 = T^2 sigma_inv / x_inv^2 + p^2 x_sp^2 sigma_sp, the paper
  T^2 sigma_inv + p^2 x_sp^4 sigma_sp;
* the spurious score's denominator: the model's det = (sigma_inv + lambda)(sigma_sp + lambda)
  + (sigma_sp + lambda + p (1 - 2p) x_sp^2) x_inv^2 + p (1 - p)(sigma_inv + lambda) x_sp^2; the
  paper multiplies its first bracket by x_sp^2 instead of x_inv^2.

No variant we tried (pattern on gamma of all examples, no intercept, noise scaled by the feature
magnitude) reproduces all the paper's terms at once, so the figures draw both: the paper's formula
as printed (:func:`paper_closed_form`) and the exact population solution of the model
(:func:`ridge_closed_form`), which the simulation confirms. At the paper's settings (x_inv = 1,
x_sp = sqrt 5) the accuracies differ by at most 0.021 (0.034 in the noise panel); the printed score
is smaller, by a factor of up to 3.7 at lambda = 0 (13 in the phase-transition setting), nearly
the same at lambda = 100, and not monotone in lambda: for gamma > 0.33 its lambda = 1 curve lies
above its lambda = 0 curve (the exact score falls with lambda and with input noise at every gamma).

Input noise
-----------
The paper's noise panel raises both variances by s = sigma_noise^2 everywhere: Gaussian noise on the
training AND the test inputs. Noise on the training inputs only (as in our mitigation runs) adds s to
the diagonal of the moment matrix, exactly as ridge with lambda = s: same weights and spurious score,
and the test accuracies of lambda = s with the original variances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import norm

from rarespur.report.plot import TITLE_SIZE, grid, legend_outside, panel_title, wrap
from rarespur.report.sections import FigureSpec, Section


@dataclass(frozen=True)
class LinearSetting:
    """Feature magnitudes and noise variances of the model in the module docstring (the paper's defaults)."""

    sigma_inv: float = 0.5  # variance of the invariant feature's noise
    sigma_sp: float = 0.1  # variance of the spurious feature's noise
    x_inv: float = 1.0  # invariant feature: mean x_inv * y
    x_sp: float = math.sqrt(5)  # value the pattern adds to the spurious feature

    def __post_init__(self) -> None:
        if min(self.sigma_inv, self.sigma_sp, self.x_inv, self.x_sp) <= 0:
            raise ValueError(f"variances and magnitudes must be positive: {self}")

    def noisy(self, s: float) -> LinearSetting:
        """Both variances raised by `s`: Gaussian input noise of variance s on training and test inputs."""
        return replace(self, sigma_inv=self.sigma_inv + s, sigma_sp=self.sigma_sp + s)

    def describe(self) -> str:
        """The settings as the figure titles print them."""
        return (
            f"σ_inv = {self.sigma_inv:g}, σ_sp = {self.sigma_sp:g}, "
            f"x_inv = {_magnitude(self.x_inv)}, x_sp = {_magnitude(self.x_sp)}"
        )


def _magnitude(x: float) -> str:
    """`x` as the paper writes it: √5 rather than 2.23607 where x^2 is a whole number and x is not."""
    square = round(x * x)
    return f"√{square}" if math.isclose(x * x, square) and not math.isclose(x, round(x)) else f"{x:g}"


PAPER = LinearSetting()  # the l2 and input-noise panels
PHASE = LinearSetting(sigma_inv=1.0, sigma_sp=0.05, x_inv=1.0, x_sp=5.0)  # the phase-transition plot
LAMBDAS = (0.0, 1.0, 10.0, 100.0)
NOISE_VARIANCES = (0.0, 0.1, 0.2, 0.3)  # s = sigma_noise^2
GAMMAS = np.linspace(0.0, 0.5, 251)
PHASE_GAMMAS = np.linspace(0.0, 0.3, 601)  # fine: the transition happens below gamma = 0.02


class Quantities(NamedTuple):
    clean_accuracy: np.ndarray
    spurious_accuracy: np.ndarray  # accuracy on patched test examples of the non-target class
    spurious_score: np.ndarray  # shift of the prediction when the pattern is pasted on


def _checked(gamma: np.ndarray | float, lam: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    gamma, lam = np.asarray(gamma, dtype=np.float64), np.asarray(lam, dtype=np.float64)
    if np.any((gamma < 0) | (gamma > 1)):
        raise ValueError("gamma is the fraction of the target class that carries the pattern: it must lie in [0, 1]")
    if np.any(lam < 0):
        raise ValueError("lambda must be non-negative")
    return gamma, lam


def paper_closed_form(setting: LinearSetting, gamma: np.ndarray | float, lam: np.ndarray | float) -> Quantities:
    """The paper's three formulas as printed, vectorised over `gamma` and `lam` (see the module docstring)."""
    gamma, lam = _checked(gamma, lam)
    s = setting
    half = gamma / 2
    t = (gamma * (1 - gamma) / 2 * s.x_sp**2 + s.sigma_sp + lam) / (s.sigma_inv + lam) * s.x_inv**2
    d = np.sqrt(t**2 * s.sigma_inv + half**2 * s.x_sp**4 * s.sigma_sp)
    clean = norm.cdf((t + half**2 * s.x_sp**2) / d) / 2 + norm.cdf((t - half**2 * s.x_sp**2) / d) / 2
    spurious = norm.cdf((t + half * (half - 1) * s.x_sp**2) / d)
    score = (
        half
        * (s.sigma_inv + lam)
        * s.x_sp**2
        / (
            (s.sigma_inv + lam) * (s.sigma_sp + lam)
            + (s.sigma_sp + lam + half * (1 - half) * (s.sigma_inv + lam) + half * (1 - gamma) * s.x_sp**2) * s.x_sp**2
        )
    )
    return Quantities(clean, spurious, score)


def population_ridge(
    setting: LinearSetting, gamma: np.ndarray | float, lam: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(w_inv, w_sp, intercept) of ridge regression on the model's population: the 2 x 2 system solved."""
    gamma, lam = _checked(gamma, lam)
    s = setting
    p = gamma / 2
    s11 = s.x_inv**2 + s.sigma_inv + lam
    s22 = p * (1 - p) * s.x_sp**2 + s.sigma_sp + lam
    s12 = p * s.x_inv * s.x_sp
    v1, v2 = s.x_inv, p * s.x_sp  # E[x_1 y], E[x_2 y] (y has mean 0)
    det = s11 * s22 - s12**2
    w_inv = (s22 * v1 - s12 * v2) / det
    w_sp = (s11 * v2 - s12 * v1) / det
    return w_inv, w_sp, -w_sp * p * s.x_sp  # intercept: mean(y) - w . mean(x)


def ridge_closed_form(setting: LinearSetting, gamma: np.ndarray | float, lam: np.ndarray | float) -> Quantities:
    """The three quantities of the population ridge solution, read off its weights (what a simulation gives)."""
    w_inv, w_sp, intercept = population_ridge(setting, gamma, lam)
    s = setting
    spread = np.sqrt(w_inv**2 * s.sigma_inv + w_sp**2 * s.sigma_sp)  # of a prediction, given y
    core = w_inv * s.x_inv  # mean distance of a clean prediction from the intercept, towards y
    clean = norm.cdf((core + intercept) / spread) / 2 + norm.cdf((core - intercept) / spread) / 2
    spurious = norm.cdf((core - intercept - w_sp * s.x_sp) / spread)  # y = -1 patched: correct when f < 0
    return Quantities(clean, spurious, w_sp * s.x_sp)


FORMS = (  # (label, function, line style): the paper's formula solid, the exact solution dashed
    ("the paper's formula, as printed", paper_closed_form, "-"),
    ("exact population ridge solution (checked by simulation)", ridge_closed_form, "--"),
)
PANELS = (
    ("clean_accuracy", "clean test accuracy", "accuracy"),
    ("spurious_accuracy", "spurious test accuracy (patched non-target examples)", "accuracy"),
    ("spurious_score", "spurious score (prediction shift from the pattern)", "prediction shift"),
)
GAMMA_LABEL = "γ: fraction of the target class\nwith the pattern (γ/2 of all examples)"


def _three_panels(
    curves: list[tuple[str, LinearSetting, float]], gammas: np.ndarray, title: str, shared: str
) -> Figure:
    """The paper's row of three panels (clean accuracy, spurious accuracy, spurious score vs gamma).

    One color per entry of `curves` (label, setting, lambda); each is drawn twice, the paper's
    formula solid and the exact ridge solution dashed, so the figure shows where the two part.
    """
    fig, slots = grid(3, ncols=3, size=(4.2, 3.6))
    for (column, label, ylabel), (ax,) in zip(PANELS, slots):
        for i, (name, setting, lam) in enumerate(curves):
            for _, form, style in FORMS:
                values = getattr(form(setting, gammas, lam), column)
                ax.plot(gammas, values, color=f"C{i}", linestyle=style, label=name if style == "-" else "_nolegend_")
        ax.set_xlim(gammas[0], gammas[-1])
        ax.set_xlabel(GAMMA_LABEL)
        ax.set_ylabel(ylabel)
        if column != "spurious_score":  # both accuracy panels on one scale: 0.4 (lower if a curve is) to 1
            ax.set_ylim(min(0.4, math.floor(min(line.get_ydata().min() for line in ax.lines) * 10) / 10), 1.0)
        ax.grid(alpha=0.3)
        panel_title(ax, label)
    for form_label, _, style in FORMS:  # the line styles' meaning, once, in the figure's legend
        slots[0][0].plot([], [], color="0.3", linestyle=style, label=form_label)
    legend_outside(fig)
    fig.suptitle(wrap(f"{title}\n{shared}", fig.get_figwidth() * 0.95, TITLE_SIZE), fontsize=TITLE_SIZE)
    return fig


def l2_figure(data: object = None) -> Figure:
    """The paper's ℓ2 panel: the three quantities vs gamma, one curve per lambda.

    Needs no runs (`data` is accepted so every figure function has the same signature).
    """
    return _three_panels(
        [(f"λ = {lam:g}", PAPER, lam) for lam in LAMBDAS],
        GAMMAS,
        "Closed-form theory: ℓ2 regularization (ridge penalty λ) against a rare spurious feature",
        f"linear model, {PAPER.describe()}",
    )


def noise_figure(data: object = None) -> Figure:
    """The paper's input-noise panel: both variances raised by s = σ²_noise, λ = 0, one curve per s."""
    return _three_panels(
        [(f"s = {s:g}", PAPER.noisy(s), 0.0) for s in NOISE_VARIANCES],
        GAMMAS,
        "Closed-form theory: Gaussian input noise of variance s = σ²_noise on both features (σ_inv + s, σ_sp + s)",
        f"linear model without noise: {PAPER.describe()}; λ = 0",
    )


def phase_figure(data: object = None) -> Figure:
    """The paper's phase-transition plot: a quiet spurious feature (small σ_sp, large x_sp), λ = 0."""
    return _three_panels(
        [("λ = 0", PHASE, 0.0)],
        PHASE_GAMMAS,
        "Closed-form theory: phase transition, a small spurious fraction γ does most of the damage",
        f"linear model, {PHASE.describe()}, λ = 0",
    )


def _no_runs(data: object) -> pd.DataFrame:
    return pd.DataFrame()


def _closed_form_count(data: object) -> str:
    return "Closed form: no runs."


SECTION = Section(
    order=60,
    figures=(
        FigureSpec(
            "theory_l2",
            "Closed-form theory: ℓ2 regularization",
            "The paper's linear model (an invariant feature and a spurious feature on a fraction gamma of the "
            "target class; derivation in rarespur/report/theory.py): clean accuracy, spurious accuracy and "
            "spurious score vs gamma for lambda in {0, 1, 10, 100}; solid the paper's formula, dashed the "
            "exact population ridge solution.",
            "theory",
            l2_figure,
            _no_runs,
            _closed_form_count,
        ),
        FigureSpec(
            "theory_noise",
            "Closed-form theory: Gaussian input noise",
            "The same model with Gaussian input noise of variance s added to both features (the paper's "
            "noise panel), lambda = 0; solid the paper's formula, dashed the exact solution.",
            "theory",
            noise_figure,
            _no_runs,
            _closed_form_count,
        ),
        FigureSpec(
            "theory_phase",
            "Closed-form theory: phase transition",
            "A spurious feature with little noise and a large magnitude: a spurious fraction gamma of about "
            "0.01 already moves the spurious accuracy from 0.84 most of the way to chance; solid the paper's "
            "formula, dashed the exact solution.",
            "theory",
            phase_figure,
            _no_runs,
            _closed_form_count,
        ),
    ),
)
