"""Build a run's report from its store alone: tables, ANOVAs, figures, Markdown and JSON."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ifval.protocol import Protocol, factor_names
from ifval.stats import cell_summary, oneway_anovas
from ifval.store import RunStore

logger = logging.getLogger(__name__)

REPORT_DIR = "report"


@dataclass
class Report:
    """Tables and files of one run's report."""

    run_dir: Path
    name: str
    factors: list[str]
    cells: pd.DataFrame
    anova: pd.DataFrame
    trials: int
    files: list[Path] = field(default_factory=list)


def build_report(run_dir: str | Path, write: bool = True) -> Report:
    """Compute the report of the run in ``run_dir`` and, with ``write``, save its files."""
    run_dir = Path(run_dir)
    with RunStore(run_dir) as store:
        protocol = Protocol.model_validate(store.protocol_data())
        scores = store.scores_frame()
        trials = len(store.finished_trials())
    factors = factor_names(protocol)
    wanted = protocol.statistics.scores
    if wanted:
        scores = scores[scores["scorer"].isin(wanted)]
    confidence = protocol.statistics.confidence
    if scores.empty:
        cells, anova = pd.DataFrame(), pd.DataFrame()
    else:
        cells = cell_summary(scores, factors, confidence)
        anova = oneway_anovas(scores, factors) if factors else pd.DataFrame()
    report = Report(run_dir, protocol.name, factors, cells, anova, trials)
    if write and not cells.empty:
        _write(report, scores, confidence)
    return report


def _write(report: Report, scores: pd.DataFrame, confidence: float) -> None:
    from ifval.report.plots import plot_scores

    out = report.run_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    cells_path, anova_path = out / "cells.csv", out / "anova.csv"
    report.cells.to_csv(cells_path, index=False)
    report.anova.to_csv(anova_path, index=False)
    figures = plot_scores(report.cells, report.factors, out, confidence=confidence)
    reasons = scores.loc[scores["value"].isna(), "reason"].value_counts().to_dict()
    summary = {
        "name": report.name,
        "trials": report.trials,
        "factors": report.factors,
        "confidence": confidence,
        "nan_scores": {str(k): int(v) for k, v in reasons.items()},
        "cells": _records(report.cells),
        "anova": _records(report.anova),
    }
    json_path = out / "summary.json"
    json_path.write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    markdown_path = out / "summary.md"
    markdown_path.write_text(_markdown(report, summary), encoding="utf-8")
    report.files = [cells_path, anova_path, json_path, markdown_path, *figures]
    logger.info("report of %s written to %s", report.run_dir, out)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records")) if not frame.empty else []


def _markdown(report: Report, summary: dict[str, Any]) -> str:
    lines = [f"# {report.name}", "", f"{report.trials} trials.", "", "## Scores per cell", ""]
    lines.append(_markdown_table(report.cells))
    if not report.anova.empty:
        lines += ["", "## One-way ANOVA", "", _markdown_table(report.anova)]
    if summary["nan_scores"]:
        lines += ["", "## NaN scores", ""]
        lines += [f"- {count} × {reason}" for reason, count in summary["nan_scores"].items()]
    lines += ["", "![scores](scores.png)", ""]
    return "\n".join(lines)


def _markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(_cell(v) for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
