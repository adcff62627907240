"""Intervals, ANOVAs and post-hoc tests against scipy, statsmodels and hand computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ifval.stats import (
    AnalysisOptions,
    analyse,
    bootstrap_interval,
    cell_summary,
    oneway_anovas,
    posthoc_tests,
    t_interval,
    twoway_anovas,
)


def frame(groups, factor="width"):
    rows = []
    for level, values in groups.items():
        rows += [{factor: level, "estimator": "exact", "ground_truth": "retrain",
                  "scorer": "spearman", "value": v} for v in values]
    return pd.DataFrame(rows)


def crossed_frame(cells):
    """Rows of a two-factor layout from {(kind, width): values}."""
    rows = []
    for (kind, width), values in cells.items():
        rows += [{"kind": kind, "width": width, "value": v} for v in values]
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------ intervals


def test_t_interval_matches_scipy():
    values = np.array([0.31, 0.44, 0.52, 0.29, 0.61, 0.47])
    expected = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert t_interval(values, 0.95) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_cell_intervals_match_scipy_t(confidence):
    rng = np.random.default_rng(5)
    groups = {8: rng.normal(0.5, 0.1, 7), 14: rng.normal(0.6, 0.2, 12)}

    cells = cell_summary(frame(groups), ["width"], confidence)
    for row, values in zip(cells.itertuples(), groups.values(), strict=True):
        low, high = stats.t.interval(confidence, len(values) - 1, loc=values.mean(),
                                     scale=stats.sem(values))
        assert row.ci_low == pytest.approx(low, rel=1e-12)
        assert row.ci_high == pytest.approx(high, rel=1e-12)
        assert row.interval == "t"


def test_nan_scores_are_counted_not_used():
    groups = {8: [0.1, 0.2, np.nan, 0.3], 14: [0.5, 0.6, 0.7, np.nan]}
    cells = cell_summary(frame(groups), ["width"])

    assert cells["n"].tolist() == [3, 3]
    assert cells["n_nan"].tolist() == [1, 1]
    assert cells.loc[0, "mean"] == pytest.approx(0.2)


def test_bootstrap_interval_near_t_interval():
    values = np.random.default_rng(2).normal(0.7, 0.1, 60)

    low, high, method = bootstrap_interval(values, 0.95, 4999, np.random.default_rng(0))
    t_low, t_high = t_interval(values, 0.95)
    assert method == "bootstrap BCa"
    assert low < values.mean() < high
    assert (high - low) == pytest.approx(t_high - t_low, rel=0.2)


def test_bootstrap_interval_reproducible_with_seed():
    groups = {8: np.linspace(0.1, 0.9, 10), 14: np.linspace(0.3, 0.5, 10)}

    first = cell_summary(frame(groups), ["width"], interval="bootstrap", resamples=999, seed=4)
    second = cell_summary(frame(groups), ["width"], interval="bootstrap", resamples=999, seed=4)
    pd.testing.assert_frame_equal(first, second)


@pytest.mark.parametrize(("values", "expected"), [
    ([0.4, 0.4, 0.4], (0.4, 0.4, "bootstrap (constant values)")),
    ([0.4], (np.nan, np.nan, "bootstrap")),
])
def test_bootstrap_interval_degenerate(values, expected):
    low, high, method = bootstrap_interval(np.array(values))

    assert low == pytest.approx(expected[0], nan_ok=True)
    assert high == pytest.approx(expected[1], nan_ok=True)
    assert method == expected[2]


def test_unknown_interval_rejected():
    with pytest.raises(ValueError, match=r"interval must be one of \('t', 'bootstrap'\), got 'z'"):
        cell_summary(frame({8: [0.1, 0.2]}), ["width"], interval="z")


# -------------------------------------------------------------------------- one-way


def test_oneway_anova_matches_f_oneway():
    rng = np.random.default_rng(3)
    groups = {8: rng.normal(0.5, 0.1, 12), 14: rng.normal(0.55, 0.1, 12),
              20: rng.normal(0.7, 0.1, 12)}
    table = oneway_anovas(frame(groups), ["width"])
    expected = stats.f_oneway(*groups.values())

    assert table.loc[0, "test"] == "anova"
    assert table.loc[0, "F"] == pytest.approx(expected.statistic, rel=1e-10)
    assert table.loc[0, "p"] == pytest.approx(expected.pvalue, rel=1e-8)
    assert table.loc[0, "df_between"] == 2
    assert table.loc[0, "df_within"] == 33


def test_oneway_eta_squared_and_levene():
    groups = {8: [1.0, 2.0, 3.0], 14: [2.0, 3.0, 4.0], 20: [6.0, 7.0, 8.0]}
    table = oneway_anovas(frame(groups), ["width"])

    # Means 2, 3, 7 around 4: SS_between = 3 · (4 + 1 + 9) = 42, SS_within = 6.
    assert table.loc[0, "eta_squared"] == pytest.approx(42 / 48)
    assert table.loc[0, "F"] == pytest.approx(21.0)
    # With two numerator degrees of freedom, p = (1 + 2F/d₂)^(−d₂/2) = 8⁻³.
    assert table.loc[0, "p"] == pytest.approx(1 / 512)
    expected = stats.levene(*groups.values(), center="median")
    assert table.loc[0, "levene_p"] == pytest.approx(expected.pvalue)


def welch_by_formula(groups):
    """Welch's F test of equal means, written out from Welch (1951)."""
    k = len(groups)
    n = np.array([len(g) for g in groups], dtype=float)
    means = np.array([np.mean(g) for g in groups])
    weights = n / np.array([np.var(g, ddof=1) for g in groups])
    pooled = weights @ means / weights.sum()
    between = weights @ (means - pooled) ** 2 / (k - 1)
    lam = ((1 - weights / weights.sum()) ** 2 / (n - 1)).sum()
    f = between / (1 + 2 * (k - 2) / (k**2 - 1) * lam)
    df_within = (k**2 - 1) / (3 * lam)
    return f, k - 1, df_within, stats.f.sf(f, k - 1, df_within)


def test_welch_anova_used_when_levene_rejects():
    rng = np.random.default_rng(8)
    groups = {8: rng.normal(0.5, 0.01, 15), 14: rng.normal(0.52, 0.2, 15),
              20: rng.normal(0.6, 0.05, 15)}
    table = oneway_anovas(frame(groups), ["width"])
    f, df_between, df_within, p = welch_by_formula(list(groups.values()))

    assert table.loc[0, "levene_p"] < 0.05
    assert table.loc[0, "test"] == "welch"
    assert table.loc[0, "F"] == pytest.approx(f, rel=1e-10)
    assert table.loc[0, "df_between"] == df_between
    assert table.loc[0, "df_within"] == pytest.approx(df_within, rel=1e-10)
    assert table.loc[0, "p"] == pytest.approx(p, rel=1e-8)


def test_welch_hand_computed():
    # Groups (1, 2, 3), (2, 4, 6), (10, 14, 18) have means 2, 4, 14 and
    # variances 1, 4, 16, so the weights n/s² are 3, 3/4, 3/16 (W = 63/16) and
    # the weighted mean is 62/21. Between part: Σ w (m − 62/21)² / 2 = 185/14.
    # Λ = Σ (1 − w/W)² / (n − 1) = (25 + 289 + 400) / 441 / 2 = 17/21.
    # F = (185/14) / (1 + (2/8) Λ) = 1110/101 and df₂ = 8 / (3Λ) = 56/17.
    groups = {1: [1.0, 2.0, 3.0], 2: [2.0, 4.0, 6.0], 3: [10.0, 14.0, 18.0]}

    table = oneway_anovas(frame(groups), ["width"], alpha=1.0)  # Levene then always rejects
    assert table.loc[0, "test"] == "welch"
    assert table.loc[0, "F"] == pytest.approx(1110 / 101, rel=1e-12)
    assert table.loc[0, "df_between"] == 2
    assert table.loc[0, "df_within"] == pytest.approx(56 / 17, rel=1e-12)
    assert table.loc[0, "p"] == pytest.approx(stats.f.sf(1110 / 101, 2, 56 / 17), rel=1e-10)


def test_welch_undefined_with_zero_variance_level():
    groups = {8: [0.5, 0.5, 0.5], 14: [0.1, 0.9, 0.4], 20: [0.2, 0.3, 0.95]}
    table = oneway_anovas(frame(groups), ["width"], alpha=1.0)

    assert table.loc[0, "test"] == "anova"
    assert table.loc[0, "verdict"].endswith(
        "; Welch's ANOVA is undefined because a level has zero variance")


def test_single_level_is_not_tested():
    table = oneway_anovas(frame({8: [0.1, 0.2, 0.3]}), ["width"])
    assert table.loc[0, "verdict"] == "not tested: needs two levels with at least two values each"


def test_level_with_one_value_left_out_and_named():
    groups = {8: [0.1, 0.2, 0.3], 14: [0.5, 0.6, 0.8], 20: [0.9]}
    table = oneway_anovas(frame(groups), ["width"])
    expected = stats.f_oneway(groups[8], groups[14])

    assert table.loc[0, "F"] == pytest.approx(expected.statistic)
    assert table.loc[0, "verdict"].endswith(
        "; left out level(s) with fewer than two values: [20]")


def test_oneway_holds_other_factors_fixed():
    rng = np.random.default_rng(1)
    cells = {(kind, width): rng.normal(0.1 * width, 1.0, 6)
             for kind in ("plain", "decay") for width in (1, 2, 3)}
    table = oneway_anovas(crossed_frame(cells), ["kind", "width"], keys=[])

    across_width = table[table["factor"] == "width"].set_index("fixed")
    expected = stats.f_oneway(*(cells[("decay", w)] for w in (1, 2, 3)))
    assert across_width.loc["kind=decay", "F"] == pytest.approx(expected.statistic)
    assert len(table) == 2 + 3


# -------------------------------------------------------------------------- two-way


def test_twoway_matches_hand_computation():
    rng = np.random.default_rng(9)
    kinds, widths, n = ("plain", "decay"), (8, 14, 20), 5
    cells = {(k, w): rng.normal(0.5 + 0.1 * i + 0.05 * j, 0.1, n)
             for i, k in enumerate(kinds) for j, w in enumerate(widths)}
    table = twoway_anovas(crossed_frame(cells), [("kind", "width")], ["kind", "width"], keys=[])

    # Balanced layout: SS_A = bn Σ(ā − m)², SS_B = an Σ(b̄ − m)², the
    # interaction is the rest of the between-cell SS, the residual the within-cell SS.
    values = np.array([cells[(k, w)] for k in kinds for w in widths]).reshape(2, 3, n)
    grand = values.mean()
    ss_kind = 3 * n * ((values.mean(axis=(1, 2)) - grand) ** 2).sum()
    ss_width = 2 * n * ((values.mean(axis=(0, 2)) - grand) ** 2).sum()
    ss_cells = n * ((values.mean(axis=2) - grand) ** 2).sum()
    ss_interaction = ss_cells - ss_kind - ss_width
    ss_residual = ((values - values.mean(axis=2, keepdims=True)) ** 2).sum()
    ms_residual = ss_residual / (2 * 3 * (n - 1))
    total = ss_kind + ss_width + ss_interaction + ss_residual

    rows = table.set_index("source")
    for source, ss, df in (("kind", ss_kind, 1), ("width", ss_width, 2),
                           ("kind × width", ss_interaction, 2)):
        f = ss / df / ms_residual
        assert rows.loc[source, "SS"] == pytest.approx(ss, rel=1e-10)
        assert rows.loc[source, "DF"] == df
        assert rows.loc[source, "F"] == pytest.approx(f, rel=1e-10)
        assert rows.loc[source, "p"] == pytest.approx(stats.f.sf(f, df, 24), rel=1e-8)
        assert rows.loc[source, "eta_squared"] == pytest.approx(ss / total, rel=1e-10)
        assert rows.loc[source, "partial_eta_squared"] == pytest.approx(
            ss / (ss + ss_residual), rel=1e-10)
    assert rows.loc["residual", "SS"] == pytest.approx(ss_residual, rel=1e-10)


def test_twoway_needs_crossed_design():
    cells = {("plain", 8): [0.1, 0.2], ("plain", 14): [0.3, 0.4], ("decay", 8): [0.5, 0.7]}
    table = twoway_anovas(crossed_frame(cells), [("kind", "width")], ["kind", "width"], keys=[])

    assert table.loc[0, "verdict"] == ("not tested: the design is not fully crossed: 1 of 4 "
                                       "level combinations have no values")


# ------------------------------------------------------------------------- post-hoc


def three_groups():
    rng = np.random.default_rng(12)
    return {8: rng.normal(0.5, 0.1, 10), 14: rng.normal(0.6, 0.1, 10),
            20: rng.normal(0.75, 0.1, 10)}


def test_tukey_matches_scipy():
    groups = three_groups()
    table = posthoc_tests(frame(groups), ["width"], method="tukey")
    expected = stats.tukey_hsd(*groups.values()).pvalue

    index = {8: 0, 14: 1, 20: 2}
    for row in table.itertuples():
        assert row.p == pytest.approx(expected[index[row.A], index[row.B]], rel=1e-4)
        assert row.diff == pytest.approx(groups[row.A].mean() - groups[row.B].mean())


def test_t_test_posthoc_applies_holm():
    groups = three_groups()
    table = posthoc_tests(frame(groups), ["width"], method="t_test", p_adjust="holm")

    pairs = [(8, 14), (8, 20), (14, 20)]
    raw = np.array([stats.ttest_ind(groups[a], groups[b]).pvalue for a, b in pairs])
    order = np.argsort(raw)
    holm = np.empty(3)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, (3 - rank) * raw[index])
        holm[index] = min(1.0, running)
    for row, expected in zip(table.itertuples(), holm, strict=True):
        assert row.p == pytest.approx(expected, rel=1e-8)
        assert row.reject == (expected < 0.05)


def test_auto_posthoc_follows_levene():
    rng = np.random.default_rng(8)
    unequal = {8: rng.normal(0.5, 0.01, 15), 14: rng.normal(0.52, 0.2, 15),
               20: rng.normal(0.6, 0.05, 15)}

    assert set(posthoc_tests(frame(three_groups()), ["width"])["method"]) == {"tukey"}
    assert set(posthoc_tests(frame(unequal), ["width"])["method"]) == {"games_howell"}


def test_two_levels_get_no_posthoc():
    table = posthoc_tests(frame({8: [0.1, 0.2, 0.3], 14: [0.4, 0.5, 0.7]}), ["width"])
    assert table.empty


# ---------------------------------------------------------------------------- analyse


def test_analyse_counts_nan_reasons():
    data = frame({8: [0.1, 0.2, np.nan, 0.3], 14: [0.5, 0.6, 0.7, np.nan]})
    data["reason"] = [None, None, "estimate is constant", None, None, None, None,
                      "truth is constant"]

    analysis = analyse(data, ["width"], reason="reason")
    assert analysis.nan_reasons == {"estimate is constant": 1, "truth is constant": 1}
    assert analysis.n_nan == 2
    assert analysis.to_dict()["nan_values"]["total"] == 2


def test_analyse_default_two_way_pairs():
    rng = np.random.default_rng(1)
    cells = {(kind, width): rng.normal(size=4) for kind in ("a", "b") for width in (1, 2)}
    data = crossed_frame(cells)

    every_pair = analyse(data, ["kind", "width"], keys=[])
    no_pairs = analyse(data, ["kind", "width"], keys=[], options=AnalysisOptions(two_way=[]))
    assert set(every_pair.twoway["factors"]) == {"kind × width"}
    assert no_pairs.twoway.empty
