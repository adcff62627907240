"""Scorers ``spearman`` and ``pearson``.

Policy shared by every built-in scorer: ties get average ranks (scipy's
convention); a non-finite value in either vector, fewer than three points, or
a constant vector gives NaN with the reason stored beside it, never a silent
0 and never a silent drop.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

import ifval
from ifval.kinds import NoParams, Score, Scorer

MIN_POINTS = 3


def check_pair(estimate: np.ndarray, truth: np.ndarray) -> str | None:
    """Return why a pair cannot be scored, or None when it can."""
    if estimate.shape != truth.shape or estimate.ndim != 1:
        return (f"estimate and truth must be vectors of one length, got {estimate.shape} "
                f"and {truth.shape}")
    if estimate.size < MIN_POINTS:
        return f"fewer than {MIN_POINTS} points ({estimate.size})"
    if not np.isfinite(estimate).all():
        return f"estimate has {int((~np.isfinite(estimate)).sum())} non-finite values"
    if not np.isfinite(truth).all():
        return f"truth has {int((~np.isfinite(truth)).sum())} non-finite values"
    if np.ptp(estimate) == 0:
        return "estimate is constant"
    if np.ptp(truth) == 0:
        return "truth is constant"
    return None


def pearson_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r of two non-constant finite vectors, computed from centred values."""
    a = a - a.mean()
    b = b - b.mean()
    r = float(a @ b / np.sqrt((a @ a) * (b @ b)))
    return min(1.0, max(-1.0, r))


def spearman_score(estimate: np.ndarray, truth: np.ndarray) -> Score:
    """Spearman's ρ: Pearson's r of the average ranks."""
    estimate, truth = np.asarray(estimate, float), np.asarray(truth, float)
    reason = check_pair(estimate, truth)
    if reason:
        return Score(float("nan"), reason)
    return Score(pearson_correlation(rankdata(estimate), rankdata(truth)))


def pearson_score(estimate: np.ndarray, truth: np.ndarray) -> Score:
    """Pearson's r of the values."""
    estimate, truth = np.asarray(estimate, float), np.asarray(truth, float)
    reason = check_pair(estimate, truth)
    if reason:
        return Score(float("nan"), reason)
    return Score(pearson_correlation(estimate, truth))


class Spearman(Scorer):
    name = "spearman"
    description = "Spearman's rank correlation (average ranks for ties)."
    Params = NoParams
    higher_is_better = True
    value_range = (-1.0, 1.0)
    scale_invariant = True

    def score(self, params, estimate, truth) -> Score:  # type: ignore[no-untyped-def,override]
        return spearman_score(estimate, truth)


class Pearson(Scorer):
    name = "pearson"
    description = "Pearson's linear correlation."
    Params = NoParams
    higher_is_better = True
    value_range = (-1.0, 1.0)
    scale_invariant = True

    def score(self, params, estimate, truth) -> Score:  # type: ignore[no-untyped-def,override]
        return pearson_score(estimate, truth)


@ifval.hookimpl
def ifval_scorers() -> list[Scorer]:
    return [Spearman(), Pearson()]
