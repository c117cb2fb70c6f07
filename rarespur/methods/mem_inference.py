"""Membership inference (docs/science.md#membership-inference): the four-way split and the attacks, as pure NumPy /
sklearn functions.

Every attack turns a model's outputs into one score per candidate example
(higher = "more likely a member") plus a decision threshold chosen without
looking at the target model's membership labels; :func:`attack_metrics` turns
scores and threshold into the reported numbers. Members are always the target
model's training set (target-train) and non-members the target-test part, and
the non-member scores are computed from the target model's predictions ON the
non-members (the original notebook used the member logits for both sets).

Attacks
- ``shadow`` (the paper's): features = logits sorted ascending + 1[prediction
  correct]; standardized with statistics of the shadow features; logistic
  regression, C in {0.01, 0.1, 1, 10} by 3-fold CV, fitted on the shadow
  model (shadow-train member, shadow-test non-member). Score = its decision
  function, threshold 0 (predicted probability 0.5).
- ``loss``: score = -cross-entropy of the true class. The threshold is the one
  that maximizes balanced accuracy on the shadow model's scores of
  shadow-train (members) vs shadow-test (non-members).
- ``lira_online`` / ``lira_offline`` (Carlini et al., "Membership Inference
  Attacks From First Principles"): statistic phi = log(p_y / (1 - p_y)), the
  logit-scaled confidence of the true class, computed from logits as
  z_y - logsumexp(z_{!=y}). LiRA shadow models train on random halves of the
  candidate set (target-train as trained on, poisoned images included, plus
  target-test), with a balanced assignment: every candidate is "in" exactly
  floor(K/2) of the K shadows. Per candidate, the in- and out-means of phi are
  its own; the variances are pooled over candidates (Carlini's "fixed
  variance", which is what works with a handful of shadows). Online score =
  log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out); offline (only "out"
  models) score = (phi - mu_out) / s_out, a monotone transform of the
  one-sided test. Thresholds: online flags a member when the likelihood ratio
  exceeds 1 (score >= 0: the Bayes decision for the equal member / non-member
  prior of the candidate set). Offline has no such natural cut: leave one
  shadow model out, score its candidates with fits from the others (its own
  in/out assignment is known), and take the balanced-accuracy-maximizing
  threshold over all shadows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.preprocessing import StandardScaler

from rarespur.data.patterns import Pattern
from rarespur.data.poisoning import choose_poison_indices, poison_images

ATTACKS = ("shadow", "loss", "lira_offline", "lira_online")
SHADOW_C_GRID = (0.01, 0.1, 1.0, 10.0)
FPR_LEVELS = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0.1pct_fpr": 0.001}
LIRA_MIN_SHADOWS = 4  # >= 2 "in" and "out" models per candidate, and an "out" one left when one shadow is held out


@dataclass(frozen=True)
class MemberSplit:
    """Indices into the pooled (train + test) set of the four equal parts."""

    target_train: np.ndarray
    target_test: np.ndarray
    shadow_train: np.ndarray
    shadow_test: np.ndarray

    def parts(self) -> dict[str, np.ndarray]:
        return {
            "target_train": self.target_train,
            "target_test": self.target_test,
            "shadow_train": self.shadow_train,
            "shadow_test": self.shadow_test,
        }


def split_pool(n: int, seed: int) -> MemberSplit:
    """Four disjoint equal parts of a pool of `n` examples, drawn by the data seed.

    Seeding: ``np.random.RandomState(seed).permutation(n)`` (seed = poison.seed,
    the data seed), cut into four consecutive quarters of ``n // 4`` in the
    order target-train, target-test, shadow-train, shadow-test. The ``n % 4``
    examples at the end of the permutation (none for 70,000 or 60,000) are left
    out so that the parts are exactly equal. Each part is sorted ascending.
    """
    if n < 8:
        raise ValueError(f"membership inference needs a pool of at least 8 images, got {n}; raise data.*_limit")
    order = np.random.RandomState(seed).permutation(n).astype(np.int64)
    q = n // 4
    parts = [np.sort(order[i * q : (i + 1) * q]) for i in range(4)]
    return MemberSplit(*parts)


def poison_target_train(
    pool_x: np.ndarray,
    pool_y: np.ndarray,
    split: MemberSplit,
    count: int,
    targets: Sequence[int],
    pattern: Pattern,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Plant `pattern` into `count` target-train images of each target class (the original's poisoning rule,
    docs/science.md#poisoning, within target-train).

    The images are chosen by :func:`choose_poison_indices` on the labels of
    target-train in its (ascending pool) order, i.e. ``RandomState(seed).choice``
    among that part's images of the class. Returns the pool with those images
    patched and their indices into the pool, in the order they were drawn.
    """
    positions = choose_poison_indices(pool_y[split.target_train], count, targets, seed)
    indices = split.target_train[positions]
    return poison_images(pool_x, indices, pattern, seed), indices


# ---------------------------------------------------------------------------
# statistics of a model's logits


def _logsumexp(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(z - top).sum(axis=1, keepdims=True)))[:, 0]


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-example cross-entropy of the true class, log(1 + exp(-phi)) in float64.

    Written through phi so that confident examples keep distinct tiny losses
    instead of all rounding to 0 (logsumexp(z) - z_y does beyond a margin of ~37).
    """
    return np.logaddexp(0.0, -logit_confidence(logits, y))


def logit_confidence(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """phi = log(p_y / (1 - p_y)) = z_y - logsumexp(z without y), exact without forming probabilities."""
    z = logits.astype(np.float64)
    rows = np.arange(len(y))
    true = z[rows, y]
    others = z.copy()
    others[rows, y] = -np.inf
    return true - _logsumexp(others)


def shadow_features(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The paper's attack features: logits sorted ascending, then 1[argmax == label]."""
    correct = (logits.argmax(axis=1) == y).astype(np.float64)[:, None]
    return np.concatenate([np.sort(logits.astype(np.float64), axis=1), correct], axis=1)


# ---------------------------------------------------------------------------
# attacks


@dataclass(frozen=True)
class AttackScores:
    """Scores of the target model's members and non-members; flagged member when score >= threshold."""

    members: np.ndarray
    nonmembers: np.ndarray
    threshold: float


def best_threshold(scores: np.ndarray, is_member: np.ndarray) -> float:
    """The threshold t (flag when score >= t) that maximizes balanced accuracy (TPR + TNR) / 2."""
    if is_member.all() or not is_member.any():
        raise ValueError("choosing a threshold needs both members and non-members")
    fpr, tpr, thresholds = roc_curve(is_member, scores)
    return float(thresholds[int(np.argmax(tpr - fpr))])


def shadow_attack(
    shadow_members: np.ndarray,
    shadow_nonmembers: np.ndarray,
    target_members: np.ndarray,
    target_nonmembers: np.ndarray,
    seed: int = 0,
) -> AttackScores:
    """The paper's attack on feature matrices (:func:`shadow_features`) of the shadow and the target model."""
    x = np.concatenate([shadow_members, shadow_nonmembers])
    labels = np.concatenate([np.ones(len(shadow_members)), np.zeros(len(shadow_nonmembers))])
    scaler = StandardScaler().fit(x)
    search = GridSearchCV(
        LogisticRegression(max_iter=1000),
        {"C": list(SHADOW_C_GRID)},
        cv=StratifiedKFold(n_splits=3, shuffle=True, random_state=seed),
    )
    search.fit(scaler.transform(x), labels)
    clf = search.best_estimator_
    return AttackScores(
        members=clf.decision_function(scaler.transform(target_members)),
        nonmembers=clf.decision_function(scaler.transform(target_nonmembers)),
        threshold=0.0,
    )


def loss_attack(
    shadow_member_loss: np.ndarray,
    shadow_nonmember_loss: np.ndarray,
    target_member_loss: np.ndarray,
    target_nonmember_loss: np.ndarray,
) -> AttackScores:
    """Score -loss; threshold maximizing balanced accuracy on the shadow model's members / non-members."""
    shadow_scores = -np.concatenate([shadow_member_loss, shadow_nonmember_loss])
    is_member = np.concatenate([np.ones(len(shadow_member_loss), bool), np.zeros(len(shadow_nonmember_loss), bool)])
    return AttackScores(-target_member_loss, -target_nonmember_loss, best_threshold(shadow_scores, is_member))


def lira_assignment(num_models: int, num_examples: int, seed: int) -> np.ndarray:
    """K x M booleans, True where candidate m is in shadow k's training set; each m is in floor(K/2) shadows.

    Drawn with ``np.random.default_rng([seed, 1])`` (a stream apart from the
    split's RandomState(seed)): per candidate, a random order of the shadows,
    the first half of which train on it.
    """
    if num_models < 2:
        raise ValueError(f"LiRA needs at least 2 shadow models, got mem.num_shadow={num_models}")
    keys = np.random.default_rng([seed, 1]).random((num_models, num_examples))
    return keys.argsort(axis=0).argsort(axis=0) < num_models // 2


def _pooled_fit(phi: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-candidate mean of phi over the models in `mask` (K x M) and the pooled within-candidate std."""
    counts = mask.sum(axis=0)
    if (counts == 0).any():
        raise ValueError("a LiRA candidate has no shadow model on the needed side; raise mem.num_shadow")
    means = np.where(mask, phi, 0.0).sum(axis=0) / counts
    dof = int(counts.sum() - len(counts))
    if dof < 1:
        raise ValueError("LiRA needs a second observation for some candidate to fit a variance; raise mem.num_shadow")
    var = float((np.where(mask, phi - means, 0.0) ** 2).sum() / dof)
    return means, max(np.sqrt(var), 1e-8)


def _log_normal(x: np.ndarray, mean: np.ndarray, std: float) -> np.ndarray:
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std)


def lira_scores(shadow_phi: np.ndarray, keep: np.ndarray, target_phi: np.ndarray, online: bool) -> np.ndarray:
    """LiRA score per candidate from the shadows' phi (K x M, `keep` = in) and the target model's phi (M)."""
    mean_out, std_out = _pooled_fit(shadow_phi, ~keep)
    if not online:
        return (target_phi - mean_out) / std_out
    mean_in, std_in = _pooled_fit(shadow_phi, keep)
    return _log_normal(target_phi, mean_in, std_in) - _log_normal(target_phi, mean_out, std_out)


def lira_attack(
    shadow_phi: np.ndarray, keep: np.ndarray, target_phi: np.ndarray, is_member: np.ndarray, online: bool
) -> AttackScores:
    """LiRA on candidates whose true membership in the target model is `is_member` (used only to split scores).

    Online thresholds at likelihood ratio 1; offline's threshold comes from the shadows alone
    (leave one shadow out, see the module docstring).
    """
    num_models = len(shadow_phi)
    if num_models < LIRA_MIN_SHADOWS:
        raise ValueError(f"LiRA needs mem.num_shadow >= {LIRA_MIN_SHADOWS}, got {num_models}")
    threshold = 0.0
    if not online:
        held_scores, held_member = [], []
        for k in range(num_models):
            rest = np.arange(num_models) != k
            held_scores.append(lira_scores(shadow_phi[rest], keep[rest], shadow_phi[k], online=False))
            held_member.append(keep[k])
        threshold = best_threshold(np.concatenate(held_scores), np.concatenate(held_member))
    scores = lira_scores(shadow_phi, keep, target_phi, online)
    return AttackScores(scores[is_member], scores[~is_member], threshold)


@dataclass(frozen=True)
class Outputs:
    """One model's logits on a member set and a non-member set, with their labels."""

    member_logits: np.ndarray
    member_y: np.ndarray
    nonmember_logits: np.ndarray
    nonmember_y: np.ndarray


@dataclass(frozen=True)
class LiraShadows:
    """phi of each LiRA shadow model (K x M) on the candidates (target members, then non-members), and `keep`."""

    phi: np.ndarray
    keep: np.ndarray


def run_attacks(
    attacks: Sequence[str], target: Outputs, shadow: Outputs | None, lira: LiraShadows | None, seed: int = 0
) -> dict[str, AttackScores]:
    """Every attack of `attacks` on the target model; `shadow` is needed by shadow / loss, `lira` by lira_*."""
    out: dict[str, AttackScores] = {}
    if {"shadow", "loss"} & set(attacks) and shadow is None:
        raise ValueError("the shadow and loss attacks need the shadow model's outputs")
    if "shadow" in attacks:
        out["shadow"] = shadow_attack(
            shadow_features(shadow.member_logits, shadow.member_y),
            shadow_features(shadow.nonmember_logits, shadow.nonmember_y),
            shadow_features(target.member_logits, target.member_y),
            shadow_features(target.nonmember_logits, target.nonmember_y),
            seed,
        )
    if "loss" in attacks:
        out["loss"] = loss_attack(
            cross_entropy(shadow.member_logits, shadow.member_y),
            cross_entropy(shadow.nonmember_logits, shadow.nonmember_y),
            cross_entropy(target.member_logits, target.member_y),
            cross_entropy(target.nonmember_logits, target.nonmember_y),
        )
    lira_names = [a for a in attacks if a.startswith("lira")]
    if lira_names:
        if lira is None:
            raise ValueError("the LiRA attacks need the LiRA shadow models' phi")
        target_phi = np.concatenate(
            [
                logit_confidence(target.member_logits, target.member_y),
                logit_confidence(target.nonmember_logits, target.nonmember_y),
            ]
        )
        is_member = np.arange(len(target_phi)) < len(target.member_y)
        for name in lira_names:
            out[name] = lira_attack(lira.phi, lira.keep, target_phi, is_member, online=name == "lira_online")
    return out


# ---------------------------------------------------------------------------
# metrics


def _roc(result: AttackScores) -> tuple[np.ndarray, np.ndarray]:
    labels = np.concatenate([np.ones(len(result.members)), np.zeros(len(result.nonmembers))])
    fpr, tpr, _ = roc_curve(labels, np.concatenate([result.members, result.nonmembers]))
    return fpr, tpr


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, level: float | np.ndarray) -> np.ndarray:
    """Highest TPR over ROC points with FPR <= level (the curve of sklearn's roc_curve, FPR non-decreasing)."""
    return tpr[np.searchsorted(fpr, level, side="right") - 1]


def attack_metrics(result: AttackScores, poisoned: np.ndarray) -> dict[str, float]:
    """acc, auc, TPR at 1% / 0.1% FPR, members_flagged, poisoned_flagged and poisoned_rank (NaN without poisoned).

    `poisoned` = positions of the poisoned examples among ``result.members``.
    acc is balanced accuracy (TPR + TNR) / 2 at the attack's threshold, which
    equals plain accuracy on the equal-sized target-train / target-test parts.
    """
    fpr, tpr = _roc(result)
    labels = np.concatenate([np.ones(len(result.members)), np.zeros(len(result.nonmembers))])
    flagged = result.members >= result.threshold
    metrics = {
        "acc": float((flagged.mean() + (result.nonmembers < result.threshold).mean()) / 2),
        "auc": float(roc_auc_score(labels, np.concatenate([result.members, result.nonmembers]))),
        **{name: float(tpr_at_fpr(fpr, tpr, level)) for name, level in FPR_LEVELS.items()},
        "members_flagged": float(flagged.mean()),
        "poisoned_flagged": float(flagged[poisoned].mean()) if len(poisoned) else float("nan"),
        "poisoned_rank": poisoned_rank(result.members, poisoned),
    }
    return metrics


def poisoned_rank(member_scores: np.ndarray, poisoned: np.ndarray) -> float:
    """Mean percentile of the poisoned examples' scores among all members' (ties count half); NaN without any.

    0.5 = as member-like as an average member, 1 = the most member-like of all. Unlike the
    flagged fractions it does not depend on the threshold, so it separates "poisoned
    examples stand out" from "the attack flags almost everything".
    """
    if not len(poisoned):
        return float("nan")
    below = (member_scores[None, :] < member_scores[poisoned, None]).sum(axis=1)
    ties = (member_scores[None, :] == member_scores[poisoned, None]).sum(axis=1) - 1
    return float(((below + 0.5 * ties) / (len(member_scores) - 1)).mean())


def roc_rows(name: str, result: AttackScores, max_points: int = 200) -> list[dict[str, float | str]]:
    """ROC of one attack at <= `max_points` FPR values (0 and a log grid 1e-4..1), as tidy rows."""
    fpr, tpr = _roc(result)
    grid = np.concatenate([[0.0], np.logspace(-4, 0, max_points - 1)])
    return [{"attack": name, "fpr": float(f), "tpr": float(t)} for f, t in zip(grid, tpr_at_fpr(fpr, tpr, grid))]
