"""Intervals and ANOVAs against scipy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ifval.stats import cell_summary, oneway_anovas, t_interval


def frame(groups):
    rows = []
    for level, values in groups.items():
        rows += [{"width": level, "estimator": "exact", "ground_truth": "retrain",
                  "scorer": "spearman", "value": v} for v in values]
    return pd.DataFrame(rows)


def test_t_interval_matches_scipy():
    values = np.array([0.31, 0.44, 0.52, 0.29, 0.61, 0.47])
    expected = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert t_interval(values, 0.95) == pytest.approx(expected, rel=1e-12)


def test_oneway_anova_matches_f_oneway():
    rng = np.random.default_rng(3)
    groups = {8: rng.normal(0.5, 0.1, 12), 14: rng.normal(0.55, 0.1, 12),
              20: rng.normal(0.7, 0.1, 12)}
    table = oneway_anovas(frame(groups), ["width"])
    expected = stats.f_oneway(*groups.values())

    assert table.loc[0, "F"] == pytest.approx(expected.statistic, rel=1e-10)
    assert table.loc[0, "p"] == pytest.approx(expected.pvalue, rel=1e-8)
    assert table.loc[0, "df_between"] == 2
    assert table.loc[0, "df_within"] == 33


def test_nan_scores_are_counted_not_used():
    groups = {8: [0.1, 0.2, np.nan, 0.3], 14: [0.5, 0.6, 0.7, np.nan]}
    cells = cell_summary(frame(groups), ["width"])

    assert cells["n"].tolist() == [3, 3]
    assert cells["n_nan"].tolist() == [1, 1]
    assert cells.loc[0, "mean"] == pytest.approx(0.2)


def test_single_level_is_not_tested():
    table = oneway_anovas(frame({8: [0.1, 0.2, 0.3]}), ["width"])
    assert table.loc[0, "verdict"] == "not tested: needs two levels with at least two scores each"
