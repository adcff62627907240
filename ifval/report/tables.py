"""The tables of a report as formatted text, shared by the console and Markdown output.

``ifval report`` and ``ifval stats`` print the same tables because both
render the list that :func:`display_tables` returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ifval.stats import Analysis
from ifval.stats.intervals import iter_groups


@dataclass(frozen=True)
class DisplayTable:
    """One table ready to print: a title, text cells and an optional note below it."""

    title: str
    frame: pd.DataFrame
    note: str = ""


def format_number(value: Any, digits: int = 3) -> str:
    """Format a number with ``digits`` significant digits; NaN and None become ``—``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool | str):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}"


def format_interval(low: float, high: float) -> str:
    if math.isnan(low) or math.isnan(high):
        return "—"
    return f"[{low:.3f}, {high:.3f}]"


def _format_df(df: float) -> str:
    return str(int(df)) if float(df).is_integer() else f"{df:.1f}"


def format_f(f: float, df_between: float, df_within: float) -> str:
    """Write an F statistic with its degrees of freedom, as F(2, 33) = 4.21."""
    if math.isnan(f):
        return "—"
    return f"F({_format_df(df_between)}, {_format_df(df_within)}) = {f:.3g}"


def display_tables(analysis: Analysis, name: str, noun: str = "score",
                   dependent: str | None = "scorer") -> list[DisplayTable]:
    """Return the tables of a report in print order.

    ``noun`` names the analysed values in titles; ``dependent`` is the key
    column whose levels the side-by-side table spreads into columns.
    """
    tables = [_cells_table(analysis, name, noun)]
    side = _side_by_side(analysis, dependent)
    if side is not None:
        tables.append(side)
    if not analysis.oneway.empty:
        tables.append(_oneway_table(analysis))
    if not analysis.twoway.empty:
        tables.append(_twoway_table(analysis))
    posthoc = _posthoc_table(analysis)
    if posthoc is not None:
        tables.append(posthoc)
    if analysis.nan_reasons:
        tables.append(_nan_table(analysis))
    return tables


def _identity(analysis: Analysis) -> list[str]:
    return [*analysis.factors, *analysis.keys]


def _cells_table(analysis: Analysis, name: str, noun: str) -> DisplayTable:
    options = analysis.options
    level = f"{options.confidence:.0%}"
    method = " (bootstrap)" if options.interval == "bootstrap" else ""
    rows = []
    for cell in analysis.cells.to_dict(orient="records"):
        row = {column: str(cell[column]) for column in _identity(analysis)}
        row.update({
            "mean": format_number(cell["mean"], 3) if not _is_nan(cell["mean"]) else "—",
            f"{level} interval": format_interval(cell["ci_low"], cell["ci_high"]),
            "sd": format_number(cell["sd"]),
            "n": str(cell["n"]),
            "NaN": str(cell["n_nan"]),
        })
        rows.append(row)
    title = f"{name}: mean {noun} and {level} interval per cell{method}"
    return DisplayTable(title, pd.DataFrame(rows))


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _side_by_side(analysis: Analysis, dependent: str | None) -> DisplayTable | None:
    cells = analysis.cells
    if dependent is None or dependent not in analysis.keys or cells[dependent].nunique() < 2:
        return None
    rest = [column for column in _identity(analysis) if column != dependent]
    rows = []
    for levels, group in iter_groups(cells, rest):
        row = {column: str(level) for column, level in levels.items()}
        for cell in group.to_dict(orient="records"):
            mean = "—" if _is_nan(cell["mean"]) else f"{cell['mean']:.3f}"
            interval = format_interval(cell["ci_low"], cell["ci_high"])
            nan = f" ({cell['n_nan']} NaN)" if cell["n_nan"] else ""
            row[str(cell[dependent])] = f"{mean} {interval}{nan}"
        rows.append(row)
    frame = pd.DataFrame(rows).fillna("—")
    title = f"Every {dependent} side by side: mean and {analysis.options.confidence:.0%} interval"
    return DisplayTable(title, frame)


def _oneway_table(analysis: Analysis) -> DisplayTable:
    rows = []
    for test in analysis.oneway.to_dict(orient="records"):
        row = {"factor": test["factor"], "fixed": test["fixed"]}
        row.update({key: str(test[key]) for key in analysis.keys})
        tested = not _is_nan(test["F"])
        row.update({
            "test": test.get("test") or "—",
            "F": format_f(test["F"], test.get("df_between", math.nan),
                          test.get("df_within", math.nan)) if tested else "—",
            "p": format_number(test["p"]),
            "η²": format_number(test.get("eta_squared", math.nan)),
            "Levene p": format_number(test.get("levene_p", math.nan)),
            "verdict": test["verdict"],
        })
        rows.append(row)
    note = ("test: `welch` where Levene's test rejected equal variances, else the classic "
            "`anova`.")
    return DisplayTable("One-way ANOVA across each factor", pd.DataFrame(rows), note)


def _twoway_table(analysis: Analysis) -> DisplayTable:
    frame = analysis.twoway
    rows = []
    residual_df: dict[tuple[Any, ...], float] = {}
    identity = ["factors", "fixed", *analysis.keys]
    for test in frame.to_dict(orient="records"):
        if test.get("source") == "residual":
            residual_df[tuple(test[c] for c in identity)] = test["DF"]
    for test in frame.to_dict(orient="records"):
        if test.get("source") == "residual":
            continue
        row = {column: str(test[column]) for column in identity}
        df_within = residual_df.get(tuple(test[c] for c in identity), math.nan)
        tested = not _is_nan(test["F"])
        row.update({
            "source": test.get("source") or "—",
            "F": format_f(test["F"], test.get("DF", math.nan), df_within) if tested else "—",
            "p": format_number(test["p"]),
            "η²": format_number(test.get("eta_squared", math.nan)),
            "partial η²": format_number(test.get("partial_eta_squared", math.nan)),
            "Levene p": format_number(test.get("levene_p", math.nan)),
            "verdict": test["verdict"],
        })
        rows.append(row)
    return DisplayTable("Two-way ANOVA (type II sums of squares)", pd.DataFrame(rows))


def _posthoc_table(analysis: Analysis) -> DisplayTable | None:
    if analysis.posthoc.empty:
        return None
    alpha = analysis.options.alpha
    identity = ["factor", "fixed", *analysis.keys]
    oneway = analysis.oneway
    rejected = oneway[oneway["p"] < alpha][identity] if not oneway.empty else oneway
    shown = analysis.posthoc.merge(rejected.astype(str), how="inner",
                                   on=identity) if not rejected.empty else None
    total = len(analysis.posthoc)
    if shown is None or shown.empty:
        return DisplayTable("Post-hoc pairwise tests", pd.DataFrame(),
                            f"No one-way ANOVA rejected at α = {alpha:g}; all {total} pairwise "
                            "tests are in the written tables.")
    rows = []
    for test in shown.to_dict(orient="records"):
        row = {column: str(test[column]) for column in identity}
        row.update({
            "method": test["method"],
            "A": str(test["A"]),
            "B": str(test["B"]),
            "mean A − B": format_number(test["diff"]),
            "p (adjusted)": format_number(test["p"]),
            "differs": "yes" if test["reject"] else "no",
            "Hedges g": format_number(test["hedges_g"]),
        })
        rows.append(row)
    note = (f"Only comparisons whose one-way ANOVA rejected at α = {alpha:g} are shown "
            f"({len(rows)} of {total} pairwise tests).")
    return DisplayTable("Post-hoc pairwise tests", pd.DataFrame(rows), note)


def _nan_table(analysis: Analysis) -> DisplayTable:
    rows = [{"reason": reason, "count": str(count)}
            for reason, count in analysis.nan_reasons.items()]
    note = f"{analysis.n_nan} NaN values are left out of every statistic above."
    return DisplayTable("NaN values", pd.DataFrame(rows), note)
