"""Reports built from a run store filled with synthetic trials (no training).

Each synthetic trial stores estimates and truths of 12 points and the scores
the real scorers give them, so the report reads what a run would write.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from ifval.cli import cli
from ifval.errors import IfvalError
from ifval.plugins import default_catalog
from ifval.protocol import expand_conditions, parse_protocol
from ifval.report.build import build_report
from ifval.store import RunStore
from ifval.trial import trial_id

PROTOCOL = """
name: synthetic
description: Synthetic trials for report tests.
dataset: {name: iris, test_point: max_loo_loss}
model: {name: mlp, depth: 1, width: 8, activation: selu}
training: {epochs: 10}
grid:
  model.width: [8, 20]
variants:
  plain: {}
  weight_decay: {training.weight_decay: 0.005}
points: {strategy: top_loss, k: 12}
estimators: [{name: exact, scope: last_layer, damping: 0.001}]
ground_truths: [{name: retrain_from_optimum, layers: last, epochs: 10}]
scorers: [spearman, pearson, kendall, magnitude_weighted, {name: topk_overlap, k: 3},
          {name: sign_agreement, k: 0.25}]
repetitions: 5
"""

POINTS = 12
SCORERS = parse_protocol(PROTOCOL).scorers


def fake_record(condition, repetition, rng, noise):
    truth = rng.normal(0.0, 1.0, POINTS) ** 3
    estimate = truth + noise * rng.normal(size=POINTS)
    if repetition == 0 and condition.factors["variant"] == "plain":
        estimate = np.ones(POINTS)  # every scorer gives NaN: the estimate is constant
    catalog = default_catalog()
    scores = []
    for spec in SCORERS:
        scorer = catalog.get("scorer", spec.name)
        score = scorer.score(scorer.parse_params(spec.settings), estimate, truth)
        scores.append({"estimator": "exact", "ground_truth": "retrain_from_optimum",
                       "scorer": spec.key, "value": score.value, "reason": score.reason})
    return {
        "trial_id": trial_id(condition.id, repetition),
        "condition_id": condition.id,
        "repetition": repetition,
        "seed": repetition,
        "test_ids": [83],
        "dataset_info": {},
        "training": {"final_train_loss": 0.1 * noise, "test_loss": 1.0 + noise + rng.random(),
                     "train_accuracy": 1.0},
        "timings": {"train": 1.0},
        "points": [{"train_row": i, "dataset_row": i, "label": 0, "training_loss": 0.1}
                   for i in range(POINTS)],
        "estimates": [{"estimator": "exact", "normalisation": "original_n",
                       "values": estimate.tolist()}],
        "truths": [{"ground_truth": "retrain_from_optimum", "normalisation": "original_n",
                    "values": truth.tolist(), "diagnostics": [{}] * POINTS}],
        "scores": scores,
    }


def make_run(run_dir, protocol_text=PROTOCOL):
    protocol = parse_protocol(protocol_text)
    conditions = expand_conditions(protocol)
    rng = np.random.default_rng(0)
    with RunStore(run_dir, create=True) as store:
        store.bind_protocol(protocol.model_dump(mode="json"), protocol_text)
        store.add_conditions(conditions)
        for condition in conditions:
            noise = 0.2 if condition.factors["variant"] == "weight_decay" else 1.5
            for repetition in range(protocol.repetitions):
                store.write_trial(fake_record(condition, repetition, rng, noise))
    return run_dir


def with_statistics(section):
    return PROTOCOL + "statistics:\n" + "".join(f"  {line}\n" for line in section)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return build_report(make_run(tmp_path_factory.mktemp("synthetic") / "run"))


def test_report_lists_every_scorer(report):
    names = ["spearman", "pearson", "kendall", "magnitude_weighted", "topk_overlap",
             "sign_agreement"]

    assert list(dict.fromkeys(report.cells["scorer"])) == names
    side = next(t for t in report.tables if t.title.startswith("Every scorer side by side"))
    assert list(side.frame.columns) == ["model.width", "variant", *names]
    assert len(side.frame) == 4


def test_report_counts_nan_scores(report):
    plain = report.cells[report.cells["variant"] == "plain"]

    assert plain["n_nan"].eq(1).all()
    assert plain["n"].eq(4).all()
    assert report.analysis.nan_reasons == {"estimate is constant": 2 * 6}
    nan_table = next(t for t in report.tables if t.title == "NaN values")
    assert nan_table.note == "12 NaN values are left out of every statistic above."


def test_report_tables_and_titles(report):
    titles = [table.title for table in report.tables]

    assert titles[0] == "synthetic: mean score and 95% interval per cell"
    assert "One-way ANOVA across each factor" in titles
    assert "Two-way ANOVA (type II sums of squares)" in titles
    assert report.tables[0].note == ("In every row: estimator = exact, "
                                     "ground_truth = retrain_from_optimum.")


def test_report_scorer_table(report):
    rows = report.scorers.set_index("scorer")

    assert rows.loc["topk_overlap", "settings"] == "k=3"
    assert rows.loc["topk_overlap", "range"] == "[0, 1]"
    assert rows.loc["spearman", "direction"] == "higher is better"
    assert rows.loc["magnitude_weighted", "scale-invariant"] == "yes"


def test_report_writes_files(report):
    out = report.run_dir / "report"
    for name in ("cells.csv", "anova.csv", "anova_twoway.csv", "posthoc.csv", "summary.json",
                 "summary.md", "scores.png", "scores.svg", "ranked_changes.png",
                 "ranked_changes.svg"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["nan_values"]["total"] == 12
    assert len(summary["ranked_changes"]) == 3
    markdown = (out / "summary.md").read_text()
    assert "## Scorers" in markdown
    assert "![ranked_changes](ranked_changes.png)" in markdown


def test_worst_trials_ranked_by_first_scorer(report):
    with RunStore(report.run_dir) as store:
        stored = store.scores_frame()
    spearman = stored.loc[stored["scorer"] == "spearman", "value"].dropna().sort_values()

    plotted = [pair.scores["spearman"] for pair in report.ranked]
    assert plotted == pytest.approx(spearman.head(3).tolist())
    assert report.ranked[0].truth.shape == (POINTS,)
    assert report.ranked[0].estimate.shape == (POINTS,)


def test_trial_plots_named_trials(tmp_path):
    protocol = parse_protocol(PROTOCOL)
    first = expand_conditions(protocol)[1]
    picked = trial_id(first.id, 2)
    text = with_statistics(["trial_plots:", f"  trials: [{picked}]", "  worst: 0"])

    report = build_report(make_run(tmp_path / "run", text), write=False)
    assert len(report.ranked) == 1
    assert report.ranked[0].title == (
        "model.width=8, variant=weight_decay, repetition 2\nexact vs retrain_from_optimum")


def test_trial_plots_unknown_trial(tmp_path):
    text = with_statistics(["trial_plots: {trials: [nope-0001]}"])
    run_dir = make_run(tmp_path / "run", text)

    with pytest.raises(IfvalError) as caught:
        build_report(run_dir, write=False)
    assert str(caught.value).startswith(
        "statistics.trial_plots.trials: trial 'nope-0001' is not in this run; trial ids look "
        "like '")


def test_report_measures(tmp_path):
    text = with_statistics(["measures: [training.test_loss]"])

    report = build_report(make_run(tmp_path / "run", text))
    assert report.measures is not None
    assert set(report.measures.cells["measure"]) == {"training.test_loss"}
    titles = [table.title for table in report.tables]
    assert "One-way ANOVA across each factor: per-trial measures" in titles
    assert (tmp_path / "run" / "report" / "measures_cells.csv").is_file()


def test_report_unknown_measure(tmp_path):
    text = with_statistics(["measures: [training.eigenvalue]"])
    run_dir = make_run(tmp_path / "run", text)

    with pytest.raises(IfvalError) as caught:
        build_report(run_dir, write=False)
    assert str(caught.value) == (
        "statistics.measures: 'training.eigenvalue' is not a numeric column of this run's "
        "trials table; available: training.final_train_loss, training.test_loss, "
        "training.train_accuracy, time.train")


def test_report_bootstrap_and_t_test(tmp_path):
    text = with_statistics(["interval: bootstrap", "bootstrap_resamples: 999",
                            "post_hoc: t_test", "p_adjust: bonf", "two_way: []"])

    report = build_report(make_run(tmp_path / "run", text), write=False)
    assert report.tables[0].title == "synthetic: mean score and 95% interval per cell (bootstrap)"
    assert set(report.cells["interval"]) <= {"bootstrap BCa", "bootstrap percentile",
                                             "bootstrap (constant values)"}
    assert report.analysis.twoway.empty


def test_single_estimator_factor_not_tested(tmp_path):
    text = with_statistics(["factors: [variant, estimator]", "two_way: [[variant, estimator]]"])

    report = build_report(make_run(tmp_path / "run", text), write=False)
    across = report.anova[report.anova["factor"] == "estimator"]
    assert across["verdict"].str.startswith("not tested: needs two levels").all()
    assert report.analysis.twoway["verdict"].eq(
        "not tested: estimator has fewer than two levels here").all()


def test_report_command_prints_tables(tmp_path):
    run_dir = make_run(tmp_path / "run")
    result = CliRunner().invoke(cli, ["report", str(run_dir)])

    assert result.exit_code == 0, result.output
    assert "synthetic: mean score and 95% interval per cell" in result.output
    assert "Every scorer side by side" in result.output
    assert "One-way ANOVA across each factor" in result.output
    assert f"wrote {run_dir / 'report' / 'ranked_changes.png'}" in result.output


def test_report_of_run_without_trials(tmp_path):
    protocol = parse_protocol(PROTOCOL)
    with RunStore(tmp_path / "run", create=True) as store:
        store.bind_protocol(protocol.model_dump(mode="json"), PROTOCOL)
        store.add_conditions(expand_conditions(protocol))

    result = CliRunner().invoke(cli, ["report", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert result.output == f"{tmp_path / 'run'}: no stored trials yet\n"
