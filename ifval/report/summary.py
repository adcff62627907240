"""Write an analysis as CSV tables, a JSON summary and a Markdown summary in one folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from ifval.report.tables import DisplayTable
from ifval.stats import Analysis

TABLE_FILES = {
    "cells": "cells.csv",
    "oneway": "anova.csv",
    "twoway": "anova_twoway.csv",
    "posthoc": "posthoc.csv",
}
"""Analysis table → CSV file name in the report folder."""


def write_tables(analysis: Analysis, out_dir: Path, prefix: str = "") -> list[Path]:
    """Write every table of ``analysis`` as CSV; an empty table gives an empty file."""
    paths = []
    for attribute, file_name in TABLE_FILES.items():
        path = out_dir / f"{prefix}{file_name}"
        getattr(analysis, attribute).to_csv(path, index=False)
        paths.append(path)
    return paths


def write_json(path: Path, analysis: Analysis, header: dict[str, Any]) -> Path:
    """Write ``header`` followed by every table of ``analysis`` as JSON."""
    summary = {**header, **analysis.to_dict()}
    path.write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return path


def markdown_summary(title: str, intro: list[str], tables: list[DisplayTable],
                     figures: list[Path], sections: list[tuple[str, pd.DataFrame]] = ()
                     ) -> str:
    """Render a Markdown summary: intro lines, extra ``sections``, tables and PNG figures."""
    lines = [f"# {title}", ""]
    if intro:
        lines += [*intro, ""]
    for heading, frame in sections:
        lines += [f"## {heading}", "", markdown_table(frame), ""]
    for table in tables:
        lines += [f"## {table.title}", ""]
        if not table.frame.empty:
            lines += [markdown_table(table.frame), ""]
        if table.note:
            lines += [table.note, ""]
    for figure in figures:
        if figure.suffix == ".png":
            lines += [f"![{figure.stem}]({figure.name})", ""]
    return "\n".join(lines)


def markdown_table(frame: pd.DataFrame) -> str:
    """Render a table of text cells as a Markdown pipe table."""
    header = "| " + " | ".join(_escape(column) for column in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(_escape(value) for value in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _escape(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")
