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
from ifval.stats.groups import iter_groups


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
    """Write an interval as [low, high] with four significant digits, or ``—`` when undefined."""
    if math.isnan(low) or math.isnan(high):
        return "—"
    return f"[{low:.4g}, {high:.4g}]"


def _format_df(df: float) -> str:
    return str(int(df)) if float(df).is_integer() else f"{df:.1f}"


def format_f(f: float, df_between: float, df_within: float) -> str:
    """Write an F statistic with its degrees of freedom, as F(2, 33) = 4.21."""
    if math.isnan(f):
        return "—"
    return f"F({_format_df(df_between)}, {_format_df(df_within)}) = {f:.3g}"


def display_tables(analysis: Analysis, name: str, noun: str = "score",
                   dependent: str | None = "scorer", label: str = "") -> list[DisplayTable]:
    """Return the tables of a report in print order.

    ``noun`` names the analysed values in the first title, ``label`` is
    appended to the other titles, and ``dependent`` is the key column whose
    levels the side-by-side table spreads into columns. A key column with one
    level in every cell is left out of the tables and named in a note. An
    analysis without cells gives no tables.
    """
    cells = analysis.cells
    if cells.empty:
        return []
    constant = {key: cells[key].iloc[0] for key in analysis.keys
                if cells[key].nunique() == 1 and key != dependent}
    keys = [key for key in analysis.keys if key not in constant]
    suffix = f": {label}" if label else ""

    tables = [_cells_table(analysis, keys, name, noun, constant)]
    side = _side_by_side(analysis, keys, dependent, suffix)
    if side is not None:
        tables.append(side)
    if not analysis.oneway.empty:
        tables.append(_oneway_table(analysis, keys, suffix))
    if not analysis.twoway.empty:
        tables.append(_twoway_table(analysis, keys, suffix))
    posthoc = _posthoc_table(analysis, keys, suffix)
    if posthoc is not None:
        tables.append(posthoc)
    if analysis.nan_reasons:
        tables.append(_nan_table(analysis, suffix))
    return tables


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _display_verdict(test: dict[str, Any], alpha: float) -> str:
    """Shorten a stored verdict to its outcome; the table note gives α."""
    if _is_nan(test["p"]):
        return str(test["verdict"])
    verdict = "differs" if test["p"] < alpha else "no evidence of a difference"
    note = str(test["verdict"]).partition(";")[2].strip()
    return f"{verdict}; {note}" if note else verdict


def _cells_table(analysis: Analysis, keys: list[str], name: str, noun: str,
                 constant: dict[str, Any]) -> DisplayTable:
    level = f"{analysis.options.confidence:.0%}"
    method = " (bootstrap)" if analysis.options.interval == "bootstrap" else ""
    rows = []
    for cell in analysis.cells.to_dict(orient="records"):
        row = {column: str(cell[column]) for column in [*analysis.factors, *keys]}
        row.update({
            "mean": format_number(cell["mean"], 4),
            f"{level} interval": format_interval(cell["ci_low"], cell["ci_high"]),
            "sd": format_number(cell["sd"]),
            "n": str(cell["n"]),
            "NaN": str(cell["n_nan"]),
        })
        rows.append(row)
    title = f"{name}: mean {noun} and {level} interval per cell{method}"
    note = ""
    if constant:
        levels = ", ".join(f"{key} = {value}" for key, value in constant.items())
        note = f"In every row: {levels}."
    return DisplayTable(title, pd.DataFrame(rows), note)


def _side_by_side(analysis: Analysis, keys: list[str], dependent: str | None,
                  suffix: str) -> DisplayTable | None:
    cells = analysis.cells
    if dependent is None or dependent not in keys or cells[dependent].nunique() < 2:
        return None
    rest = [column for column in [*analysis.factors, *keys] if column != dependent]
    rows = []
    for levels, group in iter_groups(cells, rest):
        row = {column: str(level) for column, level in levels.items()}
        for cell in group.to_dict(orient="records"):
            mean = format_number(cell["mean"], 4)
            interval = format_interval(cell["ci_low"], cell["ci_high"])
            nan = f" ({cell['n_nan']} NaN)" if cell["n_nan"] else ""
            row[str(cell[dependent])] = f"{mean} {interval}{nan}"
        rows.append(row)
    frame = pd.DataFrame(rows).fillna("—")
    level = f"{analysis.options.confidence:.0%}"
    title = f"Every {dependent} side by side: mean and {level} interval{suffix}"
    return DisplayTable(title, frame)


def _oneway_table(analysis: Analysis, keys: list[str], suffix: str) -> DisplayTable:
    alpha = analysis.options.alpha
    rows = []
    for test in analysis.oneway.to_dict(orient="records"):
        row = {"factor": test["factor"], "fixed": test["fixed"]}
        row.update({key: str(test[key]) for key in keys})
        tested = not _is_nan(test["F"])
        row.update({
            "test": test.get("test") or "—",
            "F": format_f(test["F"], test.get("df_between", math.nan),
                          test.get("df_within", math.nan)) if tested else "—",
            "p": format_number(test["p"]),
            "η²": format_number(test.get("eta_squared", math.nan)),
            "Levene p": format_number(test.get("levene_p", math.nan)),
            "verdict": _display_verdict(test, alpha),
        })
        rows.append(row)
    note = (f"Verdicts at α = {alpha:g}. test: `welch` where Levene's test rejected equal "
            "variances, else the classic `anova`.")
    return DisplayTable(f"One-way ANOVA across each factor{suffix}", pd.DataFrame(rows), note)


def _twoway_table(analysis: Analysis, keys: list[str], suffix: str) -> DisplayTable:
    alpha = analysis.options.alpha
    identity = ["factors", "fixed", *analysis.keys]
    records = analysis.twoway.to_dict(orient="records")
    residual_df = {tuple(test[c] for c in identity): test["DF"] for test in records
                   if test.get("source") == "residual"}
    rows = []
    for test in records:
        if test.get("source") == "residual":
            continue
        row = {column: str(test[column]) for column in ["factors", "fixed", *keys]}
        df_within = residual_df.get(tuple(test[c] for c in identity), math.nan)
        tested = not _is_nan(test["F"])
        row.update({
            "source": test.get("source") or "—",
            "F": format_f(test["F"], test.get("DF", math.nan), df_within) if tested else "—",
            "p": format_number(test["p"]),
            "η²": format_number(test.get("eta_squared", math.nan)),
            "partial η²": format_number(test.get("partial_eta_squared", math.nan)),
            "Levene p": format_number(test.get("levene_p", math.nan)),
            "verdict": _display_verdict(test, alpha),
        })
        rows.append(row)
    note = (f"Verdicts at α = {alpha:g}. Levene p tests equal variances across the cells, "
            "which the F test assumes.")
    title = f"Two-way ANOVA (type II sums of squares){suffix}"
    return DisplayTable(title, pd.DataFrame(rows), note)


def _posthoc_table(analysis: Analysis, keys: list[str], suffix: str) -> DisplayTable | None:
    if analysis.posthoc.empty:
        return None
    alpha = analysis.options.alpha
    title = f"Post-hoc pairwise tests{suffix}"
    identity = ["factor", "fixed", *analysis.keys]
    oneway = analysis.oneway
    rejected = oneway.loc[oneway["p"] < alpha, identity]
    selected = analysis.posthoc.merge(rejected, how="inner", on=identity)
    total = len(analysis.posthoc)
    if selected.empty:
        return DisplayTable(title, pd.DataFrame(),
                            f"No one-way ANOVA with three or more levels rejected at α = "
                            f"{alpha:g}; all {total} pairwise tests are in the written tables.")
    rows = []
    for test in selected.to_dict(orient="records"):
        row = {column: str(test[column]) for column in ["factor", "fixed", *keys]}
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
    return DisplayTable(title, pd.DataFrame(rows), note)


def _nan_table(analysis: Analysis, suffix: str) -> DisplayTable:
    rows = [{"reason": reason, "count": str(count)}
            for reason, count in analysis.nan_reasons.items()]
    note = f"{analysis.n_nan} NaN values are left out of every statistic above."
    return DisplayTable(f"NaN values{suffix}", pd.DataFrame(rows), note)
