"""Statistics over stored scores: intervals per cell and one-way ANOVAs (pingouin, scipy)."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

logger = logging.getLogger(__name__)

RESULT_KEYS = ["estimator", "ground_truth", "scorer"]
"""Columns that identify which comparison a score belongs to."""


def t_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean; NaN bounds for fewer than two values."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return float("nan"), float("nan")
    mean = values.mean()
    half = scipy_stats.t.ppf(0.5 + confidence / 2, values.size - 1) * values.std(ddof=1)
    half /= np.sqrt(values.size)
    return float(mean - half), float(mean + half)


def cell_summary(scores: pd.DataFrame, factors: list[str],
                 confidence: float = 0.95) -> pd.DataFrame:
    """Mean, t-interval, standard deviation, n and NaN count of each cell.

    A cell is one combination of factor levels, estimator, ground truth and
    scorer. NaN scores are left out of the statistics and counted in ``n_nan``.
    """
    keys = factors + RESULT_KEYS
    rows = []
    for levels, group in scores.groupby(keys, sort=False, dropna=False):
        values = group["value"].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        low, high = t_interval(finite, confidence)
        row = dict(zip(keys, levels if isinstance(levels, tuple) else (levels,), strict=True))
        row.update({
            "mean": float(finite.mean()) if finite.size else float("nan"),
            "ci_low": low,
            "ci_high": high,
            "sd": float(finite.std(ddof=1)) if finite.size > 1 else float("nan"),
            "n": int(finite.size),
            "n_nan": int(values.size - finite.size),
        })
        rows.append(row)
    return pd.DataFrame(rows)


def oneway_anovas(scores: pd.DataFrame, factors: list[str], alpha: float = 0.05) -> pd.DataFrame:
    """One-way ANOVA of the score across each factor, the other factors held fixed.

    For every factor with at least two levels, every level combination of the
    other factors and every (estimator, ground truth, scorer), the scores of
    the factor's levels are compared with ``pingouin.anova``. NaN scores are
    dropped and counted. ``eta_squared`` is η² = SS_between / SS_total.
    """
    import pingouin

    rows = []
    for factor in factors:
        others = [f for f in factors if f != factor]
        for levels, group in scores.groupby(others + RESULT_KEYS, sort=False, dropna=False):
            levels = levels if isinstance(levels, tuple) else (levels,)
            fixed = dict(zip(others, levels[: len(others)], strict=True))
            key = dict(zip(RESULT_KEYS, levels[len(others):], strict=True))
            finite = group[np.isfinite(group["value"].astype(float))]
            row: dict[str, Any] = {"factor": factor, "fixed": _describe(fixed), **key,
                                   "n": len(finite), "n_nan": len(group) - len(finite)}
            row.update(_anova_row(pingouin, finite, factor, alpha))
            rows.append(row)
    return pd.DataFrame(rows)


def _anova_row(pingouin: Any, data: pd.DataFrame, factor: str, alpha: float) -> dict[str, Any]:
    counts = data.groupby(factor)["value"].count()
    if (counts >= 2).sum() < 2:
        return {"F": float("nan"), "p": float("nan"), "df_between": float("nan"),
                "df_within": float("nan"), "eta_squared": float("nan"),
                "verdict": "not tested: needs two levels with at least two scores each"}
    data = data[data[factor].map(counts) >= 2]
    within = data.groupby(factor)["value"].var(ddof=1).sum()
    if within == 0:
        return {"F": float("nan"), "p": float("nan"), "df_between": float("nan"),
                "df_within": float("nan"), "eta_squared": float("nan"),
                "verdict": "not tested: scores are constant within every level"}
    table = pingouin.anova(data=data.assign(**{factor: data[factor].astype(str)}),
                           dv="value", between=factor, detailed=True)
    between = table.iloc[0]
    total_ss = float(table["SS"].sum())
    p = float(between["p_unc"] if "p_unc" in table else between["p-unc"])
    return {
        "F": float(between["F"]),
        "p": p,
        "df_between": float(between["DF"]),
        "df_within": float(table.iloc[1]["DF"]),
        "eta_squared": float(between["SS"]) / total_ss if total_ss > 0 else float("nan"),
        "verdict": (f"differs (p < {alpha:g})" if p < alpha
                    else f"no evidence of a difference (p ≥ {alpha:g})"),
    }


def _describe(fixed: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in fixed.items()) if fixed else "all"


def factor_levels(frame: pd.DataFrame, factors: list[str]) -> list[tuple[Any, ...]]:
    """Level combinations in the order they first appear."""
    return list(dict.fromkeys(itertools.product(*(frame[f].drop_duplicates() for f in factors))))
