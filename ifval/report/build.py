"""Build a run's report from its store alone: tables, ANOVAs, figures, Markdown and JSON."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ifval.errors import IfvalError, UnknownPluginError
from ifval.protocol import Protocol, factor_names
from ifval.report.plots import RankedPair
from ifval.report.retrains import basin_flags, basin_table, flagged_pairs, trajectory_picks
from ifval.report.tables import DisplayTable, display_tables
from ifval.stats import RESULT_KEYS, Analysis, AnalysisOptions, analyse
from ifval.store import RunStore

logger = logging.getLogger(__name__)

REPORT_DIR = "report"

MEASURE = "measure"
"""Key column of the per-trial measures analysis."""


@dataclass
class Report:
    """Tables, figures and files of one run's report.

    ``analysis`` covers the scores; ``measures`` covers the per-trial measures
    named in ``statistics.measures`` and is None when there are none.
    """

    run_dir: Path
    name: str
    analysis: Analysis
    trials: int
    tables: list[DisplayTable]
    scorers: pd.DataFrame
    measures: Analysis | None = None
    ranked: list[RankedPair] = field(default_factory=list)
    retraining: list[tuple[str, str]] = field(default_factory=list)
    """(trial id, ground truth) pairs whose retraining trajectories are plotted."""
    truths: pd.DataFrame | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def factors(self) -> list[str]:
        return self.analysis.factors

    @property
    def cells(self) -> pd.DataFrame:
        return self.analysis.cells

    @property
    def anova(self) -> pd.DataFrame:
        return self.analysis.oneway


def build_report(run_dir: str | Path, write: bool = True) -> Report:
    """Compute the report of the run in ``run_dir`` and, with ``write``, save its files."""
    run_dir = Path(run_dir)
    with RunStore(run_dir) as store:
        protocol = Protocol.model_validate(store.protocol_data())
        scores = store.scores_frame()
        trials = store.trials_frame()
        points = store.points_frame()
        truths = store.truths_frame()
    statistics = protocol.statistics
    if statistics.scores:
        scores = scores[scores["scorer"].isin(statistics.scores)]
    factors = factor_names(protocol)
    flags = basin_flags(truths)
    if statistics.exclude_basin_jumps:
        scores = _without_basin_jumps(scores, flags)
    options = analysis_options(protocol)

    if scores.empty:
        analysis = Analysis.empty(factors, RESULT_KEYS, "value", options)
    else:
        analysis = analyse(scores, factors, RESULT_KEYS, "value", options, reason="reason")
    tables = display_tables(analysis, protocol.name, "score", "scorer")
    basin = basin_table(flags, factors)
    if basin is not None:
        tables.append(basin)
    measures = None
    if statistics.measures and not trials.empty:
        frame = measure_frame(trials, statistics.measures, factors)
        measures = analyse(frame, factors, [MEASURE], "value", options)
        tables += display_tables(measures, protocol.name, "per-trial measure", MEASURE,
                                 label="per-trial measures")
    report = Report(run_dir, protocol.name, analysis, len(trials), tables,
                    scorer_table(protocol), measures)
    if not scores.empty:
        report.ranked = ranked_pairs(protocol, scores, points, factors)
        # Ground truths without trajectories are skipped, so rank every pair.
        worst = _worst(protocol, scores, _plot_scorer(protocol, scores), len(scores))
        report.retraining = trajectory_picks(truths, flags, [(t, g) for t, _, g in worst])
    report.truths = truths
    if write and not analysis.cells.empty:
        _write(report, protocol)
    return report


def analysis_options(protocol: Protocol) -> AnalysisOptions:
    """Return the analysis settings of the protocol's ``statistics`` section."""
    statistics = protocol.statistics
    two_way = None
    if statistics.two_way is not None:
        two_way = [(first, second) for first, second in statistics.two_way]
    return AnalysisOptions(
        confidence=statistics.confidence, interval=statistics.interval,
        resamples=statistics.bootstrap_resamples, seed=protocol.seed, alpha=statistics.alpha,
        two_way=two_way, post_hoc=statistics.post_hoc, p_adjust=statistics.p_adjust)


def measure_frame(trials: pd.DataFrame, measures: list[str], factors: list[str]) -> pd.DataFrame:
    """Return the named per-trial measures as a long table with a ``measure`` column.

    Raises :class:`IfvalError` for a name that is not a numeric ``training.``
    or ``time.`` column of the trials table.
    """
    numeric = [c for c in trials.columns if pd.api.types.is_numeric_dtype(trials[c])
               and c.startswith(("training.", "time."))]
    frames = []
    for measure in measures:
        if measure not in numeric:
            msg = (f"statistics.measures: {measure!r} is not a numeric column of this run's "
                   f"trials table; available: {', '.join(numeric)}")
            raise IfvalError(msg)
        rows = trials[[*factors, "trial_id", "repetition"]].copy()
        rows[MEASURE] = measure
        rows["value"] = trials[measure].to_numpy(dtype=float)
        frames.append(rows)
    return pd.concat(frames, ignore_index=True)


def scorer_table(protocol: Protocol) -> pd.DataFrame:
    """Return each scorer of the protocol with its direction, range and scale invariance."""
    from ifval.plugins import default_catalog

    catalog = default_catalog()
    rows = []
    for spec in protocol.scorers:
        row: dict[str, Any] = {"scorer": spec.key, "plugin": spec.name}
        try:
            scorer = catalog.get("scorer", spec.name)
        except UnknownPluginError:
            row.update({"direction": "unknown (plugin not installed)", "range": "—",
                        "scale-invariant": "—", "description": "—"})
        else:
            low, high = scorer.value_range  # type: ignore[attr-defined]
            row.update({
                "direction": ("higher is better" if scorer.higher_is_better  # type: ignore[attr-defined]
                              else "lower is better"),
                "range": f"[{low:g}, {high:g}]",
                "scale-invariant": "yes" if scorer.scale_invariant else "no",  # type: ignore[attr-defined]
                "description": scorer.description,
            })
        row["settings"] = ", ".join(f"{k}={v}" for k, v in spec.settings.items()) or "—"
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ ranked changes


def ranked_pairs(protocol: Protocol, scores: pd.DataFrame, points: pd.DataFrame,
                 factors: list[str]) -> list[RankedPair]:
    """Select the (trial, estimator, ground truth) combinations to plot against rank.

    The selection is every combination of the trials named in
    ``statistics.trial_plots.trials``, then the ``worst`` combinations by the
    chosen scorer, worst meaning lowest for a higher-is-better scorer.
    Raises :class:`IfvalError` for a named trial that is not in the store.
    """
    plots = protocol.statistics.trial_plots
    picks: list[tuple[str, str, str]] = []
    known = set(scores["trial_id"])
    for trial in plots.trials:
        if trial not in known:
            example = sorted(known)[0] if known else "none stored"
            msg = (f"statistics.trial_plots.trials: trial {trial!r} is not in this run; "
                   f"trial ids look like {example!r} (see `ifval export`)")
            raise IfvalError(msg)
        combos = scores.loc[scores["trial_id"] == trial, ["estimator", "ground_truth"]]
        picks += [(trial, e, g) for e, g in combos.drop_duplicates().itertuples(index=False)]

    scorer = _plot_scorer(protocol, scores)
    if plots.worst and scorer is not None:
        picks += _worst(protocol, scores, scorer, plots.worst)
    picks = list(dict.fromkeys(picks))
    return [_ranked_pair(trial, estimator, truth, scores, points, factors)
            for trial, estimator, truth in picks]


def _plot_scorer(protocol: Protocol, scores: pd.DataFrame) -> str | None:
    """Return the scorer that ranks trials for the figures: the chosen one, else the first."""
    plots = protocol.statistics.trial_plots
    return plots.scorer or (list(dict.fromkeys(scores["scorer"]))[:1] or [None])[0]


def _without_basin_jumps(scores: pd.DataFrame, flags: pd.DataFrame) -> pd.DataFrame:
    """Drop the scores of (trial, ground truth) pairs with a retrain that left its basin."""
    flagged = flagged_pairs(flags)
    if not flagged:
        return scores
    keep = [(t, g) not in flagged for t, g in zip(scores["trial_id"], scores["ground_truth"],
                                                 strict=True)]
    logger.info("left out the scores of %d trial-ground truth pairs with a basin jump",
                len(flagged))
    return scores[keep]


def _worst(protocol: Protocol, scores: pd.DataFrame, scorer: str | None,
           count: int) -> list[tuple[str, str, str]]:
    if scorer is None:
        return []
    subset = scores[(scores["scorer"] == scorer) & scores["value"].notna()]
    higher_is_better = _higher_is_better(protocol, scorer)
    subset = subset.sort_values("value", ascending=higher_is_better, kind="stable")
    rows = subset[["trial_id", "estimator", "ground_truth"]].head(count)
    return [tuple(row) for row in rows.itertuples(index=False)]  # type: ignore[misc]


def _higher_is_better(protocol: Protocol, label: str) -> bool:
    from ifval.plugins import default_catalog

    name = next((spec.name for spec in protocol.scorers if spec.key == label), label)
    try:
        return bool(default_catalog().get("scorer", name).higher_is_better)  # type: ignore[attr-defined]
    except UnknownPluginError:
        logger.warning("scorer plugin %r is not installed; treating higher %s as better",
                       name, label)
        return True


def _ranked_pair(trial: str, estimator: str, truth: str, scores: pd.DataFrame,
                 points: pd.DataFrame, factors: list[str]) -> RankedPair:
    rows = points[(points["trial_id"] == trial) & (points["estimator"] == estimator)
                  & (points["ground_truth"] == truth)].sort_values("position")
    trial_scores = scores[(scores["trial_id"] == trial) & (scores["estimator"] == estimator)
                          & (scores["ground_truth"] == truth)]
    first = trial_scores.iloc[0]
    parts = [f"{name}={first[name]}" for name in factors]
    parts.append(f"repetition {first['repetition']}")
    title = f"{', '.join(parts)}\n{estimator} vs {truth}"
    values = {str(s): float(v) for s, v in zip(trial_scores["scorer"], trial_scores["value"],
                                               strict=True) if np.isfinite(v)}
    return RankedPair(title, rows["estimate"].to_numpy(dtype=float),
                      rows["truth"].to_numpy(dtype=float), values)


# -------------------------------------------------------------------------- files


def _write(report: Report, protocol: Protocol) -> None:
    from ifval.report.plots import plot_ranked_changes, plot_scores
    from ifval.report.retrains import plot_retraining
    from ifval.report.summary import markdown_summary, write_json, write_tables

    out = report.run_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    analysis = report.analysis
    confidence = analysis.options.confidence
    files = write_tables(analysis, out)
    figures = plot_scores(analysis.cells, analysis.factors, out, confidence=confidence)
    if report.measures is not None:
        files += write_tables(report.measures, out, prefix="measures_")
        figures += plot_scores(report.measures.cells, report.measures.factors, out,
                               stem="measures", confidence=confidence, keys=(), panel=MEASURE)
    if report.ranked:
        figures += plot_ranked_changes(report.ranked, out)
    if report.retraining and report.truths is not None:
        figures += plot_retraining(report.truths, report.retraining, out)

    header = {
        "name": report.name,
        "description": protocol.description,
        "trials": report.trials,
        "scorers": report.scorers.to_dict(orient="records"),
        "ranked_changes": [{"title": pair.title, "scores": pair.scores}
                           for pair in report.ranked],
    }
    if report.measures is not None:
        header["measures"] = report.measures.to_dict()
    json_path = write_json(out / "summary.json", analysis, header)
    intro = [f"{report.trials} trials."]
    if protocol.description:
        intro = [protocol.description.strip(), "", *intro]
    markdown = markdown_summary(report.name, intro, report.tables, figures,
                                [("Scorers", report.scorers)])
    markdown_path = out / "summary.md"
    markdown_path.write_text(markdown, encoding="utf-8")
    report.files = [*files, json_path, markdown_path, *figures]
    logger.info("report of %s written to %s", report.run_dir, out)
