"""Intervals of a cell mean (t or bootstrap) and the per-cell summary table."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from ifval.stats.groups import iter_groups, present_keys

INTERVAL_METHODS = ("t", "bootstrap")
"""Interval kinds a cell summary offers: Student-t (default) or bootstrap BCa."""


def t_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean; NaN bounds for fewer than two values."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return float("nan"), float("nan")
    mean = values.mean()
    half = scipy_stats.t.ppf(0.5 + confidence / 2, values.size - 1) * values.std(ddof=1)
    half /= np.sqrt(values.size)
    return float(mean - half), float(mean + half)


def bootstrap_interval(values: np.ndarray, confidence: float = 0.95, resamples: int = 9999,
                       rng: np.random.Generator | None = None) -> tuple[float, float, str]:
    """Bootstrap interval of the mean with scipy, and the method that produced it.

    The method is BCa. When BCa is undefined (scipy returns NaN, for
    example when nearly every resample has the same mean), the percentile
    interval is returned instead and the returned method names it. Fewer
    than two values give NaN bounds, and constant values give the value as
    both bounds.
    """
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return float("nan"), float("nan"), "bootstrap"
    if np.ptp(values) == 0:
        return float(values[0]), float(values[0]), "bootstrap (constant values)"
    rng = rng if rng is not None else np.random.default_rng(0)
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy_stats.DegenerateDataWarning)
            result = scipy_stats.bootstrap((values,), np.mean, confidence_level=confidence,
                                           n_resamples=resamples, method=method,
                                           **_rng_argument(rng))
        low, high = result.confidence_interval
        if np.isfinite(low) and np.isfinite(high):
            return float(low), float(high), f"bootstrap {method}"
    return float("nan"), float("nan"), "bootstrap"


def _rng_argument(rng: np.random.Generator) -> dict[str, Any]:
    """Return the generator keyword of this scipy: ``rng`` from 1.15, ``random_state`` before."""
    if "rng" in inspect.signature(scipy_stats.bootstrap).parameters:
        return {"rng": rng}
    return {"random_state": rng}


def cell_summary(scores: pd.DataFrame, factors: list[str], confidence: float = 0.95, *,
                 keys: list[str] | None = None, value: str = "value", interval: str = "t",
                 resamples: int = 9999, seed: int = 0) -> pd.DataFrame:
    """Mean, interval, standard deviation, n and NaN count of each cell.

    A cell is one combination of factor levels and ``keys`` (by default the
    estimator, ground truth and scorer columns the frame has). NaN values are
    left out of the statistics and counted in ``n_nan``. ``interval`` is
    ``"t"`` or ``"bootstrap"``; the bootstrap draws from one generator seeded
    with ``seed``, cell after cell, so a summary is reproducible.
    """
    if interval not in INTERVAL_METHODS:
        raise ValueError(f"interval must be one of {INTERVAL_METHODS}, got {interval!r}")
    columns = factors + present_keys(scores, keys, factors)
    rng = np.random.default_rng(seed)
    rows = []
    for levels, group in iter_groups(scores, columns):
        values = group[value].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        if interval == "t":
            low, high = t_interval(finite, confidence)
            method = "t"
        else:
            low, high, method = bootstrap_interval(finite, confidence, resamples, rng)
        rows.append({
            **levels,
            "mean": float(finite.mean()) if finite.size else float("nan"),
            "ci_low": low,
            "ci_high": high,
            "sd": float(finite.std(ddof=1)) if finite.size > 1 else float("nan"),
            "n": int(finite.size),
            "n_nan": int(values.size - finite.size),
            "interval": method,
        })
    return pd.DataFrame(rows)
