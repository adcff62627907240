"""The input policy every built-in scorer follows.

A pair of vectors (estimate e, truth t) over the checked points gets NaN,
with the reason stored beside it, when any of these holds:

- e and t are not 1-D vectors of one length;
- there are fewer than :data:`MIN_POINTS` points;
- either vector has a non-finite value (NaN or ±inf);
- either vector is constant, which includes all zeros.

A NaN score is never replaced by 0 and never dropped: the store keeps it
with its reason, and the statistics leave it out and report how many NaN
scores each cell had. A scorer may add checks of its own, such as a top-k
scorer's need for magnitudes that are not all equal, and states them in its
docstring. Ties are never an error. Rank-based scorers give tied values their
average rank (scipy's convention), and top-k scorers count tied points at the
boundary fractionally (see :mod:`ifval.scorers.topk`).
"""

from __future__ import annotations

import numpy as np

MIN_POINTS = 3
"""Minimum number of points in a scorable pair. With two, every correlation is ±1."""


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


def as_vectors(estimate: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return both inputs as float64 arrays, leaving their shapes for :func:`check_pair`."""
    return np.asarray(estimate, dtype=float), np.asarray(truth, dtype=float)
