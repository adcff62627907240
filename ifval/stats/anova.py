"""One-way and two-way ANOVAs and post-hoc pairwise tests, computed with pingouin.

Every function takes a long table with one row per repetition, with factor
columns, key columns and a value column. Each level combination of the keys
is analysed on its own, for example one scorer of one estimator against one
ground truth. NaN values are left out, and each row of a result counts them
in ``n_nan``.

A one-way ANOVA compares the levels of one factor while every other factor
is held at one level combination. Levene's test (scipy's default, centred on
the median) checks for equal variances first. When it rejects at ``alpha``,
Welch's ANOVA replaces the classic one, and the automatic post-hoc choice is
Games-Howell in place of Tukey's HSD.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from ifval.stats.groups import iter_groups, present_keys

POST_HOC_METHODS = ("auto", "tukey", "games_howell", "t_test", "none")
"""Post-hoc choices: ``auto`` is Tukey's HSD, or Games-Howell when Levene's test rejects."""

P_ADJUST_METHODS = ("holm", "bonf", "sidak", "fdr_bh", "fdr_by", "none")
"""pingouin's corrections for multiple comparisons, used by the ``t_test`` post-hoc."""


@contextlib.contextmanager
def _quiet_pingouin() -> Iterator[None]:
    # NOTE: pingouin 0.7 calls pandas APIs that pandas 3 deprecates. Those
    # warnings are unrelated to the analysis, so they are hidden here only.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="pingouin")
        warnings.filterwarnings("ignore", message=".*Pandas4Warning.*")
        warnings.filterwarnings("ignore", message="The inplace keyword in DataFrame.dropna")
        yield


def _column(table: pd.DataFrame, *names: str) -> pd.Series:
    """Return the first of ``names`` that ``table`` has (pingouin renamed columns in 0.7)."""
    for name in names:
        if name in table.columns:
            return table[name]
    raise KeyError(f"none of the columns {names} in pingouin's output {list(table.columns)}")


def _not_tested(reason: str, **extra: Any) -> dict[str, Any]:
    return {"F": float("nan"), "p": float("nan"), "verdict": f"not tested: {reason}", **extra}


def _verdict(p: float, alpha: float) -> str:
    return (f"differs (p < {alpha:g})" if p < alpha
            else f"no evidence of a difference (p ≥ {alpha:g})")


def describe_levels(fixed: dict[str, Any]) -> str:
    """Return ``name=level`` pairs joined by commas, or ``all`` for no fixed factors."""
    return ", ".join(f"{key}={level}" for key, level in fixed.items()) if fixed else "all"


def _finite(group: pd.DataFrame, value: str) -> pd.DataFrame:
    return group[np.isfinite(group[value].to_numpy(dtype=float))]


# ----------------------------------------------------------------------- one-way


def _comparisons(frame: pd.DataFrame, factor: str, factors: list[str], keys: list[str] | None,
                 ) -> Iterator[tuple[dict[str, Any], pd.DataFrame]]:
    """Yield the row labels and rows of every one-way comparison across ``factor``."""
    others = [f for f in factors if f != factor]
    columns = others + present_keys(frame, keys, [factor, *others])
    for levels, group in iter_groups(frame, columns):
        fixed = {name: levels[name] for name in others}
        labels = {"factor": factor, "fixed": describe_levels(fixed)}
        labels.update({name: level for name, level in levels.items() if name not in others})
        yield labels, group


def _usable_levels(data: pd.DataFrame, factor: str, value: str,
                   ) -> tuple[pd.DataFrame, str | None, list[Any]]:
    """Drop the levels with fewer than two values.

    Returns the remaining rows, why no test is possible (None when one is)
    and the dropped levels.
    """
    counts = data.groupby(factor, sort=False)[value].count()
    dropped = [level for level, count in counts.items() if count < 2]
    if (counts >= 2).sum() < 2:
        return data, "needs two levels with at least two values each", dropped
    data = data[data[factor].map(counts) >= 2]
    if data.groupby(factor, sort=False)[value].var(ddof=1).sum() == 0:
        return data, "values are constant within every level", dropped
    return data, None, dropped


def levene_test(data: pd.DataFrame, factor: str, value: str) -> tuple[float, float]:
    """Levene's W and p for equal variances across the levels of ``factor`` (pingouin).

    When every level's absolute deviations from its median are equal (for
    example, levels of two values each), W is 0/0 and both results are NaN;
    when they differ only between levels, W is infinite and p is 0.
    """
    import pingouin

    with _quiet_pingouin(), warnings.catch_warnings(), np.errstate(divide="ignore",
                                                                   invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        table = pingouin.homoscedasticity(data, dv=value, group=factor, method="levene")
    return float(table["W"].iloc[0]), float(_column(table, "pval", "p-val", "p_val").iloc[0])


def eta_squared(data: pd.DataFrame, factor: str, value: str) -> float:
    """η² = SS_between / SS_total of a one-way layout."""
    values = data[value].to_numpy(dtype=float)
    grand = values.mean()
    total = float(((values - grand) ** 2).sum())
    groups = data.groupby(factor, sort=False)[value]
    between = float((groups.count() * (groups.mean() - grand) ** 2).sum())
    return between / total if total > 0 else float("nan")


def oneway_anovas(scores: pd.DataFrame, factors: list[str], alpha: float = 0.05, *,
                  keys: list[str] | None = None, value: str = "value") -> pd.DataFrame:
    """One-way ANOVA of ``value`` across each factor, the other factors held fixed.

    For every factor, every level combination of the other factors and every
    level combination of ``keys`` (by default estimator, ground truth and
    scorer), the factor's levels are compared. Levels with fewer than two
    values are left out and named in the verdict.

    Besides the labels and counts, the columns are ``levene_W``,
    ``levene_p``, ``test`` (``anova`` or ``welch``), ``F``, ``df_between``,
    ``df_within`` (fractional for Welch), ``p`` and ``eta_squared``. η² is
    SS_between / SS_total of the classic layout, which in a one-way design
    equals partial η².
    """
    rows = []
    for factor in factors:
        for labels, group in _comparisons(scores, factor, factors, keys):
            finite = _finite(group, value)
            row: dict[str, Any] = {**labels, "n": len(finite), "n_nan": len(group) - len(finite),
                                   "levels": int(finite[factor].nunique())}
            row.update(_oneway_row(finite, factor, value, alpha))
            rows.append(row)
    return pd.DataFrame(rows)


def _oneway_row(data: pd.DataFrame, factor: str, value: str, alpha: float) -> dict[str, Any]:
    import pingouin

    data, problem, dropped = _usable_levels(data, factor, value)
    note = f"; left out level(s) with fewer than two values: {dropped}" if dropped else ""
    if problem:
        return _not_tested(problem + note, test="")
    levene_w, levene_p = levene_test(data, factor, value)
    if np.isnan(levene_p):
        note += "; Levene's test is undefined here, so the classic ANOVA is used"
    variances = data.groupby(factor, sort=False)[value].var(ddof=1)
    welch = bool(levene_p < alpha)
    if welch and (variances == 0).any():
        welch = False
        note += "; Welch's ANOVA is undefined because a level has zero variance"

    with _quiet_pingouin():
        if welch:
            table = pingouin.welch_anova(data=data, dv=value, between=factor)
            df_between = float(table["ddof1"].iloc[0])
            df_within = float(table["ddof2"].iloc[0])
        else:
            table = pingouin.anova(data=data, dv=value, between=factor, detailed=True)
            df_between = float(table["DF"].iloc[0])
            df_within = float(table["DF"].iloc[1])
    p = float(_column(table, "p_unc", "p-unc").iloc[0])
    return {
        "levene_W": levene_w,
        "levene_p": levene_p,
        "test": "welch" if welch else "anova",
        "F": float(table["F"].iloc[0]),
        "df_between": df_between,
        "df_within": df_within,
        "p": p,
        "eta_squared": eta_squared(data, factor, value),
        "verdict": _verdict(p, alpha) + note,
    }


# ----------------------------------------------------------------------- two-way


def twoway_anovas(scores: pd.DataFrame, pairs: list[tuple[str, str]], factors: list[str],
                  alpha: float = 0.05, *, keys: list[str] | None = None,
                  value: str = "value") -> pd.DataFrame:
    """Two-way ANOVA (type II sums of squares, pingouin) for each pair of factors.

    Factors in ``factors`` that are not in the pair are held fixed, as are
    the ``keys``. The design must be fully crossed: every combination of the
    two factors' levels needs a value, and there must be more values than
    cells. Each test gives one row per source (first factor, second factor,
    interaction, residual) with SS, DF, MS, F, p, η² = SS / (sum of the
    table's SS) and partial η² = SS / (SS + SS_residual). The sum of the SS
    is SS_total only in a balanced design, because type II sums of squares
    of an unbalanced one do not add up to it. ``levene_p`` tests equal
    variances across the cells, which the F test assumes.
    """
    rows = []
    for first, second in pairs:
        others = [f for f in factors if f not in (first, second)]
        columns = others + present_keys(scores, keys, [first, second, *others])
        for levels, group in iter_groups(scores, columns):
            fixed = {name: levels[name] for name in others}
            labels = {"factors": f"{first} × {second}", "fixed": describe_levels(fixed)}
            labels.update({name: level for name, level in levels.items() if name not in others})
            finite = _finite(group, value)
            counts = {"n": len(finite), "n_nan": len(group) - len(finite)}
            for source_row in _twoway_rows(finite, first, second, value, alpha):
                rows.append({**labels, **counts, **source_row})
    return pd.DataFrame(rows)


def _twoway_rows(data: pd.DataFrame, first: str, second: str, value: str,
                 alpha: float) -> list[dict[str, Any]]:
    import pingouin

    problem = _twoway_problem(data, first, second, value)
    if problem:
        return [_not_tested(problem, source="")]
    cell = data[first].astype(str) + " | " + data[second].astype(str)
    _, levene_p = levene_test(data.assign(_cell=cell), "_cell", value)

    with _quiet_pingouin():
        table = pingouin.anova(data=data, dv=value, between=[first, second], detailed=True)
    ss = table["SS"].to_numpy(dtype=float)
    total = float(ss.sum())
    residual = float(ss[-1])
    p_values = _column(table, "p_unc", "p-unc").to_numpy(dtype=float)
    sources = [first, second, f"{first} × {second}", "residual"]
    rows = []
    for index, source in enumerate(sources):
        effect = index < len(sources) - 1
        rows.append({
            "source": source,
            "SS": ss[index],
            "DF": float(table["DF"].iloc[index]),
            "MS": float(table["MS"].iloc[index]),
            "F": float(table["F"].iloc[index]) if effect else float("nan"),
            "p": float(p_values[index]) if effect else float("nan"),
            "eta_squared": ss[index] / total if total > 0 else float("nan"),
            "partial_eta_squared": (ss[index] / (ss[index] + residual) if effect
                                    else float("nan")),
            "levene_p": levene_p,
            "verdict": _verdict(float(p_values[index]), alpha) if effect else "",
        })
    return rows


def _twoway_problem(data: pd.DataFrame, first: str, second: str, value: str) -> str | None:
    for factor in (first, second):
        if data[factor].nunique() < 2:
            return f"{factor} has fewer than two levels here"
    cells = data.groupby([first, second], sort=False)[value].count()
    expected = data[first].nunique() * data[second].nunique()
    if len(cells) < expected:
        return (f"the design is not fully crossed: {expected - len(cells)} of {expected} "
                "level combinations have no values")
    if len(data) <= expected:
        return f"needs more values ({len(data)}) than cells ({expected})"
    if data.groupby([first, second], sort=False)[value].var(ddof=1).fillna(0).sum() == 0:
        return "values are constant within every cell"
    return None


# ----------------------------------------------------------------------- post-hoc


def posthoc_tests(scores: pd.DataFrame, factors: list[str], alpha: float = 0.05, *,
                  method: str = "auto", p_adjust: str = "holm", keys: list[str] | None = None,
                  value: str = "value") -> pd.DataFrame:
    """Compare the levels of each factor pairwise, within the comparisons of :func:`oneway_anovas`.

    Only comparisons with at least three usable levels get pairwise tests:
    with two levels the one-way test already is the pairwise test.

    ``method``: ``tukey`` (Tukey's HSD), ``games_howell`` (no equal-variance
    assumption), ``t_test`` (two-sample t-tests, Welch's when the sizes
    differ, with ``p_adjust`` applied across the pairs of one comparison) or
    ``auto`` (Games-Howell when Levene's test rejects at ``alpha``, else
    Tukey). Tukey and Games-Howell control the family-wise error of one
    comparison by construction. Columns: ``A`` and ``B`` (levels),
    ``mean_A``, ``mean_B``, ``diff`` = mean_A − mean_B, ``statistic``,
    ``p`` (adjusted), ``reject`` (p < alpha) and Hedges' ``g``.
    """
    if method not in POST_HOC_METHODS:
        raise ValueError(f"post-hoc method must be one of {POST_HOC_METHODS}, got {method!r}")
    if p_adjust not in P_ADJUST_METHODS:
        raise ValueError(f"p_adjust must be one of {P_ADJUST_METHODS}, got {p_adjust!r}")
    if method == "none":
        return pd.DataFrame()
    rows = []
    for factor in factors:
        for labels, group in _comparisons(scores, factor, factors, keys):
            data, problem, _ = _usable_levels(_finite(group, value), factor, value)
            if problem or data[factor].nunique() < 3:
                continue
            chosen = method
            if method == "auto":
                _, levene_p = levene_test(data, factor, value)
                chosen = "games_howell" if levene_p < alpha else "tukey"
            for pair in _pairwise(data, factor, value, chosen, p_adjust):
                rows.append({**labels, "method": chosen, **pair,
                             "reject": bool(pair["p"] < alpha)})
    return pd.DataFrame(rows)


def _pairwise(data: pd.DataFrame, factor: str, value: str, method: str,
              p_adjust: str) -> list[dict[str, Any]]:
    import pingouin

    with _quiet_pingouin():
        if method == "tukey":
            table = pingouin.pairwise_tukey(data=data, dv=value, between=factor)
            p = _column(table, "p_tukey", "p-tukey")
        elif method == "games_howell":
            table = pingouin.pairwise_gameshowell(data=data, dv=value, between=factor)
            p = _column(table, "pval", "p-val", "p_val")
        else:
            table = pingouin.pairwise_tests(data=data, dv=value, between=factor,
                                            padjust=p_adjust)
            p = (_column(table, "p_unc", "p-unc") if p_adjust == "none"
                 else _column(table, "p_corr", "p-corr"))
    means = data.groupby(factor, sort=False)[value].mean()
    pairs = []
    for index in range(len(table)):
        first, second = table["A"].iloc[index], table["B"].iloc[index]
        pairs.append({
            "A": first,
            "B": second,
            "mean_A": float(means[first]),
            "mean_B": float(means[second]),
            "diff": float(means[first] - means[second]),
            "statistic": float(table["T"].iloc[index]),
            "p": float(p.iloc[index]),
            "hedges_g": float(table["hedges"].iloc[index]),
        })
    return pairs
