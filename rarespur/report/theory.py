"""Closed-form curves for a linear model that meets a rare spurious feature (docs/science.md#mitigation, the report's
theory figure).

We could not retrieve the theory section of the paper (arXiv 2202.05189), so
this module derives a closed form for the setting it describes and states
every assumption; ``tests/test_report.py`` checks it against a Monte-Carlo
simulation of the same setting.

Setting
-------
* Labels y in {-1, +1}, equally likely; class +1 is the target class.
* Core feature c = y * mu + sigma_core * z1, z1 ~ N(0, 1).
* Spurious feature s = a * b + sigma_spur * z2, z2 ~ N(0, 1), where b = 1
  ("the pattern is present") for a fraction gamma of ALL training examples,
  all of them from the target class (so gamma <= 1/2), and b = 0 otherwise.
* The learner is ridge regression without intercept on the population
  (infinitely many training examples, lambda per example):
  w = argmin E[(w.x - y)^2] + lambda ||w||^2 = (Sigma + lambda I)^-1 v with
  x = (c, s), Sigma = E[x x^T], v = E[x y].
* Gaussian input noise of standard deviation sigma_noise at training time adds
  sigma_noise^2 I to Sigma, i.e. it acts as ridge with lambda + sigma_noise^2
  (Bishop 1995); ``noise_sigma`` below uses that equivalence.

Moments: E[c^2] = mu^2 + sigma_core^2, E[s^2] = a^2 gamma + sigma_spur^2,
E[c s] = mu a E[y b] = mu a gamma, E[c y] = mu, E[s y] = a gamma. Inverting
the 2 x 2 matrix, with D = det(Sigma + lambda I):

    w_c = mu (a^2 gamma (1 - gamma) + sigma_spur^2 + lambda) / D
    w_s = a gamma (sigma_core^2 + lambda) / D

so the weight of the spurious feature grows with gamma and is large when the
feature hardly varies otherwise (small sigma_spur): a rare pattern on a quiet
background is learned, and lambda (or input noise) suppresses it.

Test-time quantities (balanced test set, no pattern; "patched" adds a to s):
f = w.x given y is N(y w_c mu, tau^2), tau^2 = w_c^2 sigma_core^2 + w_s^2 sigma_spur^2.

* clean accuracy = Phi(w_c mu / tau);
* spurious accuracy (patched images of the non-target class) = Phi((w_c mu - w_s a) / tau);
* spurious score (docs/science.md#spurious-score): the model's target probability is taken to be
  sigmoid(beta f), a logistic link of sharpness beta (``logit_scale``) on the
  linear output: the assumption that turns a regression output into a
  probability (regression targets are +-1, a trained network's logits are an
  order of magnitude larger, hence beta > 1). With g = beta f, patching shifts
  g by delta = beta w_s a for every image, and sigmoid(g + delta) - sigmoid(g)
  > eps holds exactly on an interval of g: with t = e^g and k = e^delta the
  boundary solves eps k t^2 + (eps (1 + k) - (k - 1)) t + eps = 0, so g lies
  in (ln t1, ln t2) and the score is the mixture probability of that interval,
  sum_y 1/2 [Phi((ln t2 - y beta w_c mu) / (beta tau)) - Phi((ln t1 - y beta w_c mu) / (beta tau))]
  (0 when the quadratic has no positive roots). Accuracies do not depend on beta.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import norm

from rarespur.report.plot import TITLE_SIZE, grid, legend_outside, panel_title, wrap
from rarespur.report.sections import FigureSpec, Section


@dataclass(frozen=True)
class LinearSetting:
    """Feature means and spreads of the theory model (see the module docstring)."""

    mu: float = 1.0  # core feature mean (class signal)
    sigma_core: float = 1.0  # core feature standard deviation
    a: float = 1.0  # value the pattern adds to the spurious feature
    sigma_spur: float = 0.1  # spread of the spurious feature without the pattern
    eps: float = 0.1  # spurious-score threshold on the probability rise (docs/science.md#spurious-score)
    logit_scale: float = 5.0  # beta: target probability = sigmoid(beta * w.x)


def ridge_weights(
    setting: LinearSetting, gamma: np.ndarray | float, lam: float, noise_sigma: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Population ridge weights (w_core, w_spur) for poisoned fraction(s) `gamma`."""
    gamma = np.asarray(gamma, dtype=np.float64)
    if np.any(gamma < 0) or np.any(gamma > 0.5):
        raise ValueError(
            "gamma is the poisoned fraction of the whole training set, all from one of two "
            "balanced classes: it must lie in [0, 0.5]"
        )
    if lam < 0 or noise_sigma < 0:
        raise ValueError("lambda and noise_sigma must be non-negative")
    s = setting
    lam_eff = lam + noise_sigma**2
    scc = s.mu**2 + s.sigma_core**2 + lam_eff
    sss = s.a**2 * gamma + s.sigma_spur**2 + lam_eff
    scs = s.mu * s.a * gamma
    det = scc * sss - scs**2
    w_core = s.mu * (s.a**2 * gamma * (1 - gamma) + s.sigma_spur**2 + lam_eff) / det
    w_spur = s.a * gamma * (s.sigma_core**2 + lam_eff) / det
    return w_core, w_spur


def _spread(setting: LinearSetting, w_core: np.ndarray, w_spur: np.ndarray) -> np.ndarray:
    return np.sqrt((w_core * setting.sigma_core) ** 2 + (w_spur * setting.sigma_spur) ** 2)


def clean_accuracy(
    setting: LinearSetting, gamma: np.ndarray | float, lam: float, noise_sigma: float = 0.0
) -> np.ndarray:
    """Accuracy on clean test data: Phi(w_c mu / tau)."""
    w_c, w_s = ridge_weights(setting, gamma, lam, noise_sigma)
    return norm.cdf(w_c * setting.mu / _spread(setting, w_c, w_s))


def spurious_accuracy(
    setting: LinearSetting, gamma: np.ndarray | float, lam: float, noise_sigma: float = 0.0
) -> np.ndarray:
    """Accuracy on patched test images of the non-target class: Phi((w_c mu - w_s a) / tau)."""
    w_c, w_s = ridge_weights(setting, gamma, lam, noise_sigma)
    return norm.cdf((w_c * setting.mu - w_s * setting.a) / _spread(setting, w_c, w_s))


def spurious_score(
    setting: LinearSetting, gamma: np.ndarray | float, lam: float, noise_sigma: float = 0.0
) -> np.ndarray:
    """Fraction of test images whose sigmoid(f) rises by more than eps when the pattern is added."""
    w_c, w_s = ridge_weights(setting, gamma, lam, noise_sigma)
    w_c, w_s = np.broadcast_arrays(np.atleast_1d(w_c), np.atleast_1d(w_s))
    beta = setting.logit_scale
    tau = beta * _spread(setting, w_c, w_s)
    k = np.exp(beta * w_s * setting.a)
    eps = setting.eps
    b = eps * (1 + k) - (k - 1)
    disc = b**2 - 4 * eps * k * eps
    has_interval = (disc > 0) & (b < 0)  # two positive roots: their product 1/k > 0, their sum -b/(eps k) > 0
    root = np.sqrt(np.where(has_interval, disc, 0.0))
    lo = np.log(np.where(has_interval, (-b - root) / (2 * eps * k), 1.0))
    hi = np.log(np.where(has_interval, (-b + root) / (2 * eps * k), 1.0))
    m = beta * w_c * setting.mu
    score = 0.5 * (norm.cdf((hi - m) / tau) - norm.cdf((lo - m) / tau)) + 0.5 * (
        norm.cdf((hi + m) / tau) - norm.cdf((lo + m) / tau)
    )
    score = np.where(has_interval, score, 0.0)
    return score if np.ndim(gamma) else score.reshape(())


def simulate(
    setting: LinearSetting, gamma: float, lam: float, n_train: int, n_test: int, seed: int = 0
) -> dict[str, float]:
    """Monte-Carlo version of the same setting: sample, fit ridge, measure; checks the closed form."""
    rng = np.random.default_rng(seed)
    s = setting

    def sample(n: int, poisoned_fraction: float) -> tuple[np.ndarray, np.ndarray]:
        y = rng.choice([-1.0, 1.0], size=n)
        b = np.zeros(n)
        positives = np.flatnonzero(y > 0)
        b[positives[: int(round(poisoned_fraction * n))]] = 1.0
        x = np.stack(
            [y * s.mu + s.sigma_core * rng.standard_normal(n), s.a * b + s.sigma_spur * rng.standard_normal(n)], axis=1
        )
        return x, y

    x, y = sample(n_train, gamma)
    w = np.linalg.solve(x.T @ x / n_train + lam * np.eye(2), x.T @ y / n_train)
    xt, yt = sample(n_test, 0.0)
    f = xt @ w
    patched = f + w[1] * s.a
    beta = s.logit_scale
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    negatives = yt < 0
    return {
        "w_core": float(w[0]),
        "w_spur": float(w[1]),
        "clean_accuracy": float(np.mean(np.sign(f) == yt)),
        "spurious_accuracy": float(np.mean(patched[negatives] < 0)),
        "spurious_score": float(np.mean(sig(beta * patched) - sig(beta * f) > s.eps)),
    }


GAMMAS = np.logspace(-4, np.log10(0.5), 200)
LAMBDAS = (0.0, 1e-3, 1e-2, 1e-1, 1.0)


def theory_curves(
    setting: LinearSetting = LinearSetting(), lambdas: tuple[float, ...] = LAMBDAS, gammas: np.ndarray = GAMMAS
) -> pd.DataFrame:
    """Tidy table of the three closed-form curves: one row per (lambda, gamma)."""
    rows = []
    for lam in lambdas:
        rows.append(
            pd.DataFrame(
                {
                    "lambda": lam,
                    "gamma": gammas,
                    "clean_accuracy": clean_accuracy(setting, gammas, lam),
                    "spurious_accuracy": spurious_accuracy(setting, gammas, lam),
                    "spurious_score": spurious_score(setting, gammas, lam),
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def theory_figure(data: object = None, setting: LinearSetting = LinearSetting()) -> Figure:
    """Fig. 11: clean accuracy, spurious accuracy and spurious score vs poisoned fraction gamma, one curve per lambda.

    Needs no runs (`data` is accepted so every figure function has the same signature).
    """
    curves = theory_curves(setting)
    fig, slots = grid(3, ncols=3, size=(4.0, 3.8))
    panels = (
        ("clean_accuracy", "clean test accuracy", "accuracy"),
        ("spurious_accuracy", "spurious accuracy (patched non-target)", "accuracy"),
        ("spurious_score", "spurious score", "spurious score"),
    )
    for (column, label, ylabel), (ax,) in zip(panels, slots):
        for i, (lam, curve) in enumerate(curves.groupby("lambda")):
            ax.plot(curve["gamma"], curve[column], color=f"C{i}", label=f"λ = {lam:g}")
        ax.set_xscale("log")
        ax.set_xlabel("poisoned fraction γ of the training set (log)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        panel_title(ax, label)
    legend_outside(fig, "ridge penalty")
    s = setting
    shared = (
        f"core feature N(±{s.mu:g}, {s.sigma_core:g}²); spurious feature +{s.a:g} on a γ fraction of one class, spread {s.sigma_spur:g}; "
        f"target probability sigmoid({s.logit_scale:g}·w·x); ε = {s.eps:g}"
    )
    fig.suptitle(
        wrap(f"Closed-form theory: population ridge regression\n{shared}", fig.get_figwidth() * 0.95, TITLE_SIZE),
        fontsize=TITLE_SIZE,
    )
    return fig


SECTION = Section(
    order=60,
    figures=(
        FigureSpec(
            "theory",
            "Closed-form theory curves",
            "Population ridge regression with a core feature and a rare spurious feature (derivation in "
            "rarespur/report/theory.py): clean accuracy, spurious accuracy and spurious score vs the poisoned "
            "fraction gamma for several lambda.",
            "theory",
            theory_figure,
            lambda data: pd.DataFrame(),
            lambda data: "Closed form: no runs.",
        ),
    ),
)
