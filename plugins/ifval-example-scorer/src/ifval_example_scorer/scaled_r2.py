"""Scorer ``scaled_r2``: the share of the true change explained by the rescaled estimate.

With estimate e, truth t and the least-squares scale α = eᵀt / eᵀe, the score
is 1 − ‖t − αe‖² / ‖t‖². It equals cos²(e, t), so it lies in [0, 1] and does
not see the sign of α: an estimate of −t scores 1. Fewer than 3 points, a
non-finite value or an all-zero vector gives NaN with the reason stored. A
constant vector that is not zero is scored, because nothing is centred.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

import ifval
from ifval.kinds import NoParams, Score, Scorer

MIN_POINTS = 3


def unscorable_reason(estimate: np.ndarray, truth: np.ndarray) -> str | None:
    """Return why the pair cannot be scored, or None when it can."""
    if estimate.ndim != 1 or estimate.shape != truth.shape:
        shapes = f"{estimate.shape} and {truth.shape}"
        return f"estimate and truth must be vectors of one length, got {shapes}"
    if estimate.size < MIN_POINTS:
        return f"fewer than {MIN_POINTS} points ({estimate.size})"
    for label, values in (("estimate", estimate), ("truth", truth)):
        if not np.isfinite(values).all():
            return f"{label} has {int((~np.isfinite(values)).sum())} non-finite values"
        if not values.any():
            return f"{label} is all zeros"
    return None


def scaled_r2_score(estimate: np.ndarray, truth: np.ndarray) -> Score:
    """Compute scaled R² of ``estimate`` against ``truth``, or NaN with the reason."""
    e, t = np.asarray(estimate, dtype=float), np.asarray(truth, dtype=float)
    reason = unscorable_reason(e, t)
    if reason:
        return Score(float("nan"), reason)

    # The score ignores the scale of e and t, so dividing by the largest
    # magnitude changes nothing but keeps e @ e clear of underflow and overflow.
    e, t = e / np.abs(e).max(), t / np.abs(t).max()
    alpha = (e @ t) / (e @ e)
    residual = t - alpha * e
    value = 1.0 - (residual @ residual) / (t @ t)
    # Rounding can leave the value a few ulps outside [0, 1].
    return Score(min(1.0, max(0.0, float(value))))


class ScaledR2(Scorer):
    name = "scaled_r2"
    description = "1 − ‖t − αe‖²/‖t‖² with least-squares scale α; blind to the sign of α."
    Params = NoParams
    higher_is_better = True
    value_range = (0.0, 1.0)
    scale_invariant = True

    def score(self, params: BaseModel, estimate: np.ndarray, truth: np.ndarray) -> Score:
        return scaled_r2_score(estimate, truth)


@ifval.hookimpl
def ifval_scorers() -> list[Scorer]:
    return [ScaledR2()]
