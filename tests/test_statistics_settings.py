"""The protocol's ``statistics`` section: accepted settings and the exact rejection messages."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ifval.errors import ProtocolError
from ifval.protocol import analysis_factors, validate_protocol
from ifval.report.build import analysis_options

BASE: dict[str, Any] = {
    "name": "tiny",
    "dataset": {"name": "iris"},
    "model": {"name": "mlp", "depth": 1, "width": 8, "activation": "selu"},
    "training": {"lr": 0.01, "epochs": 10},
    "grid": {"model.width": [4, 8]},
    "variants": {"plain": {}, "decay": {"training.weight_decay": 0.005}},
    "estimators": [{"name": "exact", "damping": 0.001}],
    "ground_truths": [{"name": "retrain_from_optimum", "epochs": 5}],
    "scorers": ["spearman", {"name": "topk_overlap", "k": 0.25}],
    "repetitions": 2,
}


def with_statistics(**section: Any) -> dict[str, Any]:
    protocol = copy.deepcopy(BASE)
    protocol["statistics"] = section
    return protocol


def problem_of(protocol: dict[str, Any]) -> str:
    with pytest.raises(ProtocolError) as caught:
        validate_protocol(protocol)
    [problem] = caught.value.problems
    return problem


def test_full_statistics_section_accepted():
    protocol = validate_protocol(with_statistics(
        scores=["spearman"], measures=["training.test_loss"], factors=["model.width", "variant"],
        two_way=[["model.width", "variant"]], post_hoc="games_howell", p_adjust="fdr_bh",
        confidence=0.9, interval="bootstrap", bootstrap_resamples=500, alpha=0.01,
        trial_plots={"trials": ["abc-0001"], "worst": 2, "scorer": "topk_overlap"}))

    options = analysis_options(protocol)
    assert options.two_way == [("model.width", "variant")]
    assert options.interval == "bootstrap"
    assert options.resamples == 500
    assert options.post_hoc == "games_howell"
    assert options.p_adjust == "fdr_bh"
    assert options.alpha == 0.01


def test_defaults():
    options = analysis_options(validate_protocol(copy.deepcopy(BASE)))

    assert options.two_way is None
    assert options.interval == "t"
    assert options.post_hoc == "auto"
    assert options.p_adjust == "holm"
    assert options.confidence == 0.95


def test_analysis_factors():
    protocol = validate_protocol(copy.deepcopy(BASE))
    assert analysis_factors(protocol) == ["model.width", "variant", "estimator", "ground_truth"]


def test_estimator_factor_accepted():
    validate_protocol(with_statistics(factors=["estimator", "ground_truth"],
                                      two_way=[["estimator", "ground_truth"]]))


@pytest.mark.parametrize(("section", "problem"), [
    pytest.param(
        {"two_way": [["model.width", "model.depth"]]},
        "statistics.two_way[0][1]: 'model.depth' is not a grid path, `variant`, `estimator` or "
        "`ground_truth`; allowed: model.width, variant, estimator, ground_truth",
        id="two-way-unknown-factor"),
    pytest.param(
        {"two_way": [["variant", "variant"]]},
        "statistics.two_way[0]: names 'variant' twice; a two-way ANOVA needs two different "
        "factors",
        id="two-way-same-factor"),
    pytest.param(
        {"measures": ["test_loss"]},
        "statistics.measures[0]: 'test_loss' is not a trial measure; name a column of the "
        "exported trials table, such as training.test_loss",
        id="measure-without-prefix"),
    pytest.param(
        {"trial_plots": {"scorer": "kendall"}},
        "statistics.trial_plots.scorer: 'kendall' is not a scorer label of this protocol; "
        "allowed: spearman, topk_overlap",
        id="trial-plot-scorer-unknown"),
    pytest.param(
        {"interval": "percentile"},
        "statistics.interval: input should be 't' or 'bootstrap' (found 'percentile')",
        id="interval-unknown"),
    pytest.param(
        {"post_hoc": "scheffe"},
        "statistics.post_hoc: input should be 'auto', 'tukey', 'games_howell', 't_test' or "
        "'none' (found 'scheffe')",
        id="post-hoc-unknown"),
    pytest.param(
        {"bootstrap_resamples": 10},
        "statistics.bootstrap_resamples: input should be greater than or equal to 100 "
        "(found 10)",
        id="too-few-resamples"),
    pytest.param(
        {"trial_plots": {"worst": -1}},
        "statistics.trial_plots.worst: input should be greater than or equal to 0 (found -1)",
        id="negative-worst"),
])
def test_statistics_problem(section, problem):
    assert problem_of(with_statistics(**section)) == problem


def test_topk_fraction_setting_rejected():
    protocol = copy.deepcopy(BASE)
    protocol["scorers"] = [{"name": "topk_overlap", "k": 2.5}]

    assert problem_of(protocol) == (
        "scorers[0].k: a count of points must be a whole number; give a whole number, or a "
        "fraction below 1 for a share of the points (found 2.5)")
