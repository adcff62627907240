"""Correlation scorers: ``spearman``, ``pearson``, ``kendall`` and ``magnitude_weighted``.

Each scorer is a pure function of the estimate e and the truth t (the
``*_score`` functions below) wrapped in a plugin class that declares its
direction, range and whether it is invariant to positive scaling of e. All
four follow the NaN-with-reason policy of :mod:`ifval.scorers.policy`.

Spearman, Pearson and Kendall weight every checked point equally. An
estimate that ranks the many small effects well but gets the few large ones
wrong can therefore score as high as one that gets the large effects right.
Figure 4 of Epifano et al. shows two such cases with one Spearman value of
about 0.85. ``magnitude_weighted`` weights each point by the size of its
true effect, which separates those two cases.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel
from scipy.stats import kendalltau, rankdata

import ifval
from ifval.kinds import NoParams, Score, Scorer
from ifval.scorers.policy import MIN_POINTS, as_vectors, check_pair

__all__ = [
    "MIN_POINTS",
    "check_pair",
    "kendall_score",
    "magnitude_weighted_score",
    "pearson_correlation",
    "pearson_score",
    "spearman_score",
    "weighted_pearson_correlation",
]


def pearson_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r of two non-constant finite vectors, computed from centred values."""
    return weighted_pearson_correlation(a, b, np.full(a.shape, 1.0 / a.size))


def weighted_pearson_correlation(a: np.ndarray, b: np.ndarray, weights: np.ndarray) -> float:
    """Pearson's r with point weights that sum to 1.

    r = Σ w (a − ā)(b − b̄) / √(Σ w (a − ā)² · Σ w (b − b̄)²) with the
    weighted means ā = Σ w a and b̄ = Σ w b. Both vectors must vary where
    the weights are positive.
    """
    a = a - weights @ a
    b = b - weights @ b
    # r ignores the scale of a and b, so dividing by the largest magnitude
    # changes nothing but keeps the products clear of overflow and underflow.
    a = a / np.abs(a).max()
    b = b / np.abs(b).max()
    r = float((weights * a) @ b / np.sqrt(((weights * a) @ a) * ((weights * b) @ b)))
    # Rounding can leave r a few ulps outside [-1, 1].
    return min(1.0, max(-1.0, r))


def spearman_score(estimate: np.ndarray, truth: np.ndarray) -> Score:
    """Compute Spearman's ρ, Pearson's r of the average ranks."""
    estimate, truth = as_vectors(estimate, truth)
    reason = check_pair(estimate, truth)
    if reason:
        return Score(float("nan"), reason)
    return Score(pearson_correlation(rankdata(estimate), rankdata(truth)))


def pearson_score(estimate: np.ndarray, truth: np.ndarray) -> Score:
    """Compute Pearson's r of the values."""
    estimate, truth = as_vectors(estimate, truth)
    reason = check_pair(estimate, truth)
    if reason:
        return Score(float("nan"), reason)
    return Score(pearson_correlation(estimate, truth))


def kendall_score(estimate: np.ndarray, truth: np.ndarray) -> Score:
    """Compute Kendall's τ-b, which corrects the pair count for ties in either vector.

    τ-b = (C − D) / √((C + D + T_e)(C + D + T_t)), where C and D count the
    concordant and discordant pairs and T_e, T_t the pairs tied in only one
    of the two vectors (scipy's ``kendalltau``, variant ``b``).
    """
    estimate, truth = as_vectors(estimate, truth)
    reason = check_pair(estimate, truth)
    if reason:
        return Score(float("nan"), reason)
    tau = float(kendalltau(estimate, truth, variant="b").statistic)
    return Score(min(1.0, max(-1.0, tau)))


def magnitude_weighted_score(estimate: np.ndarray, truth: np.ndarray) -> Score:
    """Compute Pearson's r weighted by the size of the true effect, w_i = |t_i| / Σ|t|.

    Points whose true effect is large dominate, so an estimate that is right
    only on tiny effects scores low. Points with t_i = 0 have weight 0 and
    do not count. Besides the shared policy, the score is NaN when the
    estimate, or the truth, takes a single value on the points with t_i ≠ 0,
    because the weighted variance is then zero. Multiplying the estimate by a
    positive number leaves the score unchanged.
    """
    estimate, truth = as_vectors(estimate, truth)
    reason = check_pair(estimate, truth)
    if reason:
        return Score(float("nan"), reason)

    magnitude = np.abs(truth)
    weights = magnitude / magnitude.sum()
    weighted = weights > 0
    if np.ptp(estimate[weighted]) == 0:
        return Score(float("nan"), "estimate is constant on the points with nonzero truth")
    if np.ptp(truth[weighted]) == 0:
        return Score(float("nan"), "truth takes a single nonzero value")
    return Score(weighted_pearson_correlation(estimate, truth, weights))


class Spearman(Scorer):
    name = "spearman"
    description = "Spearman's rank correlation (average ranks for ties)."
    Params = NoParams
    higher_is_better = True
    value_range = (-1.0, 1.0)
    scale_invariant = True

    def score(self, params: BaseModel, estimate: np.ndarray, truth: np.ndarray) -> Score:
        return spearman_score(estimate, truth)


class Pearson(Scorer):
    name = "pearson"
    description = "Pearson's linear correlation."
    Params = NoParams
    higher_is_better = True
    value_range = (-1.0, 1.0)
    scale_invariant = True

    def score(self, params: BaseModel, estimate: np.ndarray, truth: np.ndarray) -> Score:
        return pearson_score(estimate, truth)


class Kendall(Scorer):
    name = "kendall"
    description = "Kendall's rank correlation τ-b (corrected for ties)."
    Params = NoParams
    higher_is_better = True
    value_range = (-1.0, 1.0)
    scale_invariant = True

    def score(self, params: BaseModel, estimate: np.ndarray, truth: np.ndarray) -> Score:
        return kendall_score(estimate, truth)


class MagnitudeWeighted(Scorer):
    name = "magnitude_weighted"
    description = "Pearson's correlation weighted by |truth|: large true effects dominate."
    Params = NoParams
    higher_is_better = True
    value_range = (-1.0, 1.0)
    scale_invariant = True

    def score(self, params: BaseModel, estimate: np.ndarray, truth: np.ndarray) -> Score:
        return magnitude_weighted_score(estimate, truth)


@ifval.hookimpl
def ifval_scorers() -> list[Scorer]:
    return [Spearman(), Pearson(), Kendall(), MagnitudeWeighted()]
