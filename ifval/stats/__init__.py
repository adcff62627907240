"""Statistics over per-repetition results: intervals per cell, ANOVAs and post-hoc tests.

The input is a long table with one row per repetition: factor columns, key
columns and a value column (stored scores, or results read by
:mod:`ifval.reanalysis`). :func:`analyse` computes every table a report
shows. pingouin does the tests, scipy the intervals.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ifval.stats.anova import (
    P_ADJUST_METHODS,
    POST_HOC_METHODS,
    oneway_anovas,
    posthoc_tests,
    twoway_anovas,
)
from ifval.stats.groups import RESULT_KEYS, present_keys
from ifval.stats.intervals import (
    INTERVAL_METHODS,
    bootstrap_interval,
    cell_summary,
    t_interval,
)

__all__ = [
    "INTERVAL_METHODS",
    "P_ADJUST_METHODS",
    "POST_HOC_METHODS",
    "RESULT_KEYS",
    "Analysis",
    "AnalysisOptions",
    "analyse",
    "bootstrap_interval",
    "cell_summary",
    "factor_levels",
    "oneway_anovas",
    "posthoc_tests",
    "t_interval",
    "twoway_anovas",
]


@dataclass(frozen=True)
class AnalysisOptions:
    """Settings of :func:`analyse`.

    ``two_way`` lists the factor pairs of two-way ANOVAs; None means every
    pair of the analysed factors. ``seed`` seeds the bootstrap.
    """

    confidence: float = 0.95
    interval: str = "t"
    resamples: int = 9999
    seed: int = 0
    alpha: float = 0.05
    two_way: list[tuple[str, str]] | None = None
    post_hoc: str = "auto"
    p_adjust: str = "holm"


@dataclass
class Analysis:
    """Every statistics table of one set of results, and how it was computed."""

    factors: list[str]
    keys: list[str]
    value: str
    options: AnalysisOptions
    cells: pd.DataFrame
    oneway: pd.DataFrame
    twoway: pd.DataFrame
    posthoc: pd.DataFrame
    nan_reasons: dict[str, int] = field(default_factory=dict)

    @classmethod
    def empty(cls, factors: list[str], keys: list[str], value: str = "value",
              options: AnalysisOptions | None = None) -> Analysis:
        """Return the analysis of no results: every table empty."""
        empty = pd.DataFrame()
        return cls(list(factors), list(keys), value, options or AnalysisOptions(), empty, empty,
                   empty, empty)

    @property
    def n_nan(self) -> int:
        return sum(self.nan_reasons.values())

    def to_dict(self) -> dict[str, Any]:
        """Return the tables as lists of records and the settings, ready for JSON."""
        return {
            "factors": self.factors,
            "keys": self.keys,
            "value": self.value,
            "options": {**self.options.__dict__,
                        "two_way": [list(pair) for pair in self.two_way_pairs]},
            "nan_values": {"total": self.n_nan, "by_reason": self.nan_reasons},
            "cells": records(self.cells),
            "oneway_anova": records(self.oneway),
            "twoway_anova": records(self.twoway),
            "posthoc": records(self.posthoc),
        }

    @property
    def two_way_pairs(self) -> list[tuple[str, str]]:
        return two_way_pairs(self.factors, self.options.two_way)


def two_way_pairs(factors: list[str], requested: list[tuple[str, str]] | None,
                  ) -> list[tuple[str, str]]:
    """Return the requested factor pairs, or every pair of ``factors`` when None."""
    if requested is None:
        return list(itertools.combinations(factors, 2))
    return [tuple(pair) for pair in requested]  # type: ignore[misc]


def analyse(frame: pd.DataFrame, factors: list[str], keys: list[str] | None = None,
            value: str = "value", options: AnalysisOptions | None = None,
            reason: str | None = None) -> Analysis:
    """Compute the cell summary, one-way and two-way ANOVAs and post-hoc tests of ``frame``.

    ``keys`` are columns whose level combinations are analysed separately
    (default: estimator, ground truth and scorer, where present). ``reason``
    names a column that explains each NaN value; without it every NaN counts
    as ``missing value``.
    """
    options = options or AnalysisOptions()
    keys = present_keys(frame, keys, factors)
    pairs = two_way_pairs(factors, options.two_way)
    common = {"keys": keys, "value": value}
    cells = cell_summary(frame, factors, options.confidence, interval=options.interval,
                         resamples=options.resamples, seed=options.seed, **common)
    oneway = oneway_anovas(frame, factors, options.alpha, **common) if factors else pd.DataFrame()
    twoway = (twoway_anovas(frame, pairs, factors, options.alpha, **common) if pairs
              else pd.DataFrame())
    posthoc = (posthoc_tests(frame, factors, options.alpha, method=options.post_hoc,
                             p_adjust=options.p_adjust, **common) if factors
               else pd.DataFrame())
    return Analysis(list(factors), keys, value, options, cells, oneway, twoway, posthoc,
                    nan_reasons(frame, value, reason))


def nan_reasons(frame: pd.DataFrame, value: str, reason: str | None) -> dict[str, int]:
    """Count the NaN values of ``frame`` by reason."""
    missing = frame[~np.isfinite(frame[value].to_numpy(dtype=float))]
    if missing.empty:
        return {}
    if reason is None or reason not in missing.columns:
        return {"missing value": len(missing)}
    counts = missing[reason].fillna("no reason stored").value_counts()
    return {str(text): int(count) for text, count in counts.items()}


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Return a table as JSON-ready records; NaN becomes null."""
    import json

    return json.loads(frame.to_json(orient="records")) if not frame.empty else []


def factor_levels(frame: pd.DataFrame, factors: list[str]) -> list[tuple[Any, ...]]:
    """Level combinations in the order they first appear."""
    return list(dict.fromkeys(itertools.product(*(frame[f].drop_duplicates() for f in factors))))
