"""Built-in scorers against scipy, and the NaN-with-reason policy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from ifval.kinds import NoParams
from ifval.plugins import default_catalog

REFERENCES = {
    "spearman": lambda e, t: stats.spearmanr(e, t).statistic,
    "pearson": lambda e, t: stats.pearsonr(e, t).statistic,
}


def cases():
    rng = np.random.default_rng(7)
    estimate = rng.normal(size=40)
    yield "normal", estimate, 0.6 * estimate + rng.normal(size=40)
    ties = rng.integers(0, 5, size=30).astype(float)
    yield "ties", ties, ties + rng.integers(0, 3, size=30)
    yield "anti", np.arange(10.0), -np.arange(10.0) ** 3
    yield "heavy tail", rng.standard_cauchy(25), rng.standard_cauchy(25)


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("case", list(cases()), ids=lambda c: c[0])
def test_scorer_matches_scipy(name, case):
    _, estimate, truth = case
    scorer = default_catalog().get("scorer", name)

    score = scorer.score(NoParams(), estimate, truth)
    assert score.reason is None
    assert score.value == pytest.approx(REFERENCES[name](estimate, truth), abs=1e-12)


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize(
    ("estimate", "truth", "reason"),
    [
        ([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0], "estimate is constant"),
        ([1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0], "truth is constant"),
        ([1.0, np.nan, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], "estimate has 1 non-finite values"),
        ([1.0, 2.0, 3.0, 4.0], [1.0, np.inf, 3.0, -np.inf], "truth has 2 non-finite values"),
        ([1.0, 2.0], [2.0, 1.0], "fewer than 3 points (2)"),
    ],
)
def test_unscorable_pair_gives_nan_and_reason(name, estimate, truth, reason):
    scorer = default_catalog().get("scorer", name)

    score = scorer.score(NoParams(), np.array(estimate), np.array(truth))
    assert np.isnan(score.value)
    assert score.reason == reason


def test_every_scorer_has_reference():
    """A registered scorer left out of the checks above fails here."""
    registered = set(default_catalog().registries["scorer"].names())
    assert registered <= set(REFERENCES) | {"scaled_r2"}
