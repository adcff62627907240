"""Scorers against independent references, common properties, and the NaN-with-reason policy.

Every registered scorer goes through the property checks. Every built-in one
also needs an entry in REFERENCES, which computes the score without the
scorer's own code: with scipy, statsmodels, or a brute-force count written here.
"""

from __future__ import annotations

import itertools
from functools import partial

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import stats
from statsmodels.stats.weightstats import DescrStatsW

from ifval.plugins import default_catalog
from ifval.scorers.correlation import (
    kendall_score,
    magnitude_weighted_score,
    spearman_score,
)
from ifval.scorers.topk import (
    TopKParams,
    resolve_k,
    sign_agreement_score,
    topk_overlap_score,
)

DEFAULT_K = 10


def kendall_tau_b_by_pairs(e, t):
    """τ-b counted over all pairs: (C − D) / √((C + D + T_e)(C + D + T_t))."""
    concordant = discordant = tied_e_only = tied_t_only = 0
    for i, j in itertools.combinations(range(len(e)), 2):
        de, dt = np.sign(e[i] - e[j]), np.sign(t[i] - t[j])
        if de == 0 and dt == 0:
            continue
        if de == 0:
            tied_e_only += 1
        elif dt == 0:
            tied_t_only += 1
        elif de == dt:
            concordant += 1
        else:
            discordant += 1
    pairs = concordant + discordant
    return (concordant - discordant) / np.sqrt((pairs + tied_e_only) * (pairs + tied_t_only))


def top_k_sets(magnitude, k):
    """Every top-k index set of ``magnitude`` under some breaking of ties."""
    threshold = np.sort(magnitude)[::-1][k - 1]
    above = tuple(np.flatnonzero(magnitude > threshold))
    tied = np.flatnonzero(magnitude == threshold)
    return [set(above) | set(choice)
            for choice in itertools.combinations(tied, k - len(above))]


def topk_overlap_by_enumeration(e, t, k=DEFAULT_K):
    """Mean |A ∩ B| / k over every tie-breaking of the two top-k sets."""
    overlaps = [len(a & b) / k
                for a in top_k_sets(np.abs(e), k) for b in top_k_sets(np.abs(t), k)]
    return float(np.mean(overlaps))


def sign_agreement_by_enumeration(e, t, k=DEFAULT_K):
    """Mean share of same-sign points over every tie-breaking of the top k by |t|."""
    shares = [np.mean([np.sign(e[i]) == np.sign(t[i]) for i in chosen])
              for chosen in top_k_sets(np.abs(t), k)]
    return float(np.mean(shares))


REFERENCES = {
    "spearman": lambda e, t: stats.spearmanr(e, t).statistic,
    "pearson": lambda e, t: stats.pearsonr(e, t).statistic,
    "kendall": kendall_tau_b_by_pairs,
    "magnitude_weighted": lambda e, t: DescrStatsW(np.column_stack([e, t]),
                                                   weights=np.abs(t)).corrcoef[0, 1],
    "topk_overlap": topk_overlap_by_enumeration,
    "sign_agreement": sign_agreement_by_enumeration,
}
"""Independent value of each built-in scorer with its default settings (k = 10)."""

EXTERNAL_SCORERS = {"scaled_r2"}
"""Scorers of the example plugin package, tested in that package."""


def cases():
    rng = np.random.default_rng(7)
    estimate = rng.normal(size=40)
    yield "normal", estimate, 0.6 * estimate + rng.normal(size=40)
    ties = rng.integers(-4, 5, size=30).astype(float)
    yield "ties", ties, ties + rng.integers(0, 3, size=30)
    coarse = rng.integers(-2, 3, size=24).astype(float)
    yield "boundary ties", coarse, np.where(rng.random(24) < 0.7, coarse, -coarse) + 0.5 * (
        rng.integers(0, 2, size=24))
    yield "anti", np.arange(1.0, 13.0), -np.arange(1.0, 13.0) ** 3
    yield "heavy tail", rng.standard_cauchy(25), rng.standard_cauchy(25)
    yield "tiny scale", 1e-9 * rng.normal(size=20), 1e-12 * rng.normal(size=20)


CASES = list(cases())
REGISTERED = default_catalog().registries["scorer"].names()


def score_with_defaults(name, estimate, truth):
    scorer = default_catalog().get("scorer", name)
    return scorer.score(scorer.parse_params({}), np.asarray(estimate), np.asarray(truth))


# ------------------------------------------------------------ independent references


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_scorer_matches_reference(name, case):
    _, estimate, truth = case

    score = score_with_defaults(name, estimate, truth)
    assert score.reason is None
    assert score.value == pytest.approx(REFERENCES[name](estimate, truth), abs=1e-12)


def test_kendall_hand_counted():
    # Pairs of (1, 2, 3, 4) against (1, 3, 2, 4): 5 concordant, 1 discordant.
    assert kendall_score([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]).value == pytest.approx(4 / 6)
    # 4 concordant, 1 pair tied in e only, 1 tied in t only: 4 / √(5 · 5).
    assert kendall_score([1.0, 1.0, 2.0, 3.0], [1.0, 2.0, 2.0, 3.0]).value == pytest.approx(0.8)


def test_magnitude_weighted_hand_computed():
    # Weights |t| / Σ|t| = (1/4, 1/4, 1/2). For e = (0, 0, 1): weighted means
    # 0.5 and 1, covariance 0.5, variances 0.25 and 1.5, so r = √(2/3).
    truth = np.array([1.0, -1.0, 2.0])
    assert magnitude_weighted_score([0.0, 0.0, 1.0], truth).value == pytest.approx(np.sqrt(2 / 3))
    # For e = (0, 1, 1) the weighted covariance is 0.
    assert magnitude_weighted_score([0.0, 1.0, 1.0], truth).value == pytest.approx(0.0, abs=1e-15)


def test_magnitude_weighted_ignores_zero_truth():
    truth = np.array([0.0, 0.0, 1.0, 3.0])

    assert magnitude_weighted_score([9.0, -9.0, 1.0, 2.0], truth).value == pytest.approx(1.0)
    assert magnitude_weighted_score([9.0, -9.0, 2.0, 1.0], truth).value == pytest.approx(-1.0)


def test_topk_overlap_counts_ties_fractionally():
    # |e| has 5 on top, then 4 twice for one place: membership (1, ½, ½, 0, 0).
    # The top 2 of t are points 0 and 1, so the overlap is (1 + ½) / 2.
    score = topk_overlap_score([5.0, 4.0, 4.0, 1.0, 0.5], [5.0, 4.0, 3.0, 2.0, 1.0], k=2)
    assert score.value == pytest.approx(0.75)


def test_sign_agreement_hand_counted():
    # Top 3 by |t| are points 0, 1, 2; e agrees in sign on points 1 and 2.
    score = sign_agreement_score([1.0, -2.0, 3.0, -4.0, 5.0], [-10.0, -9.0, 8.0, 1.0, 0.5], k=3)
    assert score.value == pytest.approx(2 / 3)


def test_topk_fraction_equals_count():
    _, estimate, truth = CASES[0]

    by_fraction = topk_overlap_score(estimate, truth, k=0.25)
    by_count = topk_overlap_score(estimate, truth, k=10)
    assert by_fraction.value == by_count.value


@pytest.mark.parametrize(("k", "n", "expected"), [(10, 40, 10), (0.25, 40, 10), (0.25, 10, 3),
                                                  (0.01, 10, 1), (0.5, 3, 2)])
def test_resolve_k(k, n, expected):
    assert resolve_k(k, n) == expected


@pytest.mark.parametrize(("k", "problem"), [
    (2.5, "a count of points must be a whole number; give a whole number, or a fraction below "
          "1 for a share of the points"),
    (True, "k must be a number, not true or false"),
    (0, "Input should be greater than 0"),
    (-0.5, "Input should be greater than 0"),
])
def test_topk_params_reject_bad_k(k, problem):
    with pytest.raises(ValidationError) as caught:
        TopKParams(k=k)
    assert problem in str(caught.value)


def test_topk_params_whole_float_is_count():
    assert TopKParams(k=3.0).k == 3
    assert isinstance(TopKParams(k=3.0).k, int)
    assert TopKParams(k=0.3).k == 0.3


# ---------------------------------------------------------------- common properties


@pytest.mark.parametrize("name", REGISTERED)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_scorer_ignores_point_order(name, case):
    _, estimate, truth = case
    order = np.random.default_rng(11).permutation(len(estimate))

    original = score_with_defaults(name, estimate, truth)
    shuffled = score_with_defaults(name, estimate[order], truth[order])
    assert shuffled.reason == original.reason
    assert shuffled.value == pytest.approx(original.value, abs=1e-12)


@pytest.mark.parametrize("name", REGISTERED)
@pytest.mark.parametrize("factor", [3.7, 1e-6, 1e6])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_scale_invariant_scorer_ignores_scale(name, factor, case):
    scorer = default_catalog().get("scorer", name)
    if not scorer.scale_invariant:
        pytest.skip(f"{name} does not declare invariance to scaling of the estimate")
    _, estimate, truth = case

    original = score_with_defaults(name, estimate, truth)
    scaled = score_with_defaults(name, factor * estimate, truth)
    assert scaled.value == pytest.approx(original.value, abs=1e-12)


@pytest.mark.parametrize("name", REGISTERED)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_score_lies_in_declared_range(name, case):
    scorer = default_catalog().get("scorer", name)
    _, estimate, truth = case
    low, high = scorer.value_range

    value = score_with_defaults(name, estimate, truth).value
    assert low <= value <= high


@pytest.mark.parametrize("name", REGISTERED)
def test_scorer_declares_metadata(name):
    scorer = default_catalog().get("scorer", name)

    assert isinstance(scorer.higher_is_better, bool)
    assert isinstance(scorer.scale_invariant, bool)
    assert scorer.value_range[0] < scorer.value_range[1]
    assert scorer.description


def test_every_scorer_has_reference():
    """A registered scorer left out of the reference checks above fails here."""
    registered = set(REGISTERED)
    assert registered - EXTERNAL_SCORERS <= set(REFERENCES)
    assert set(REFERENCES) <= registered


# ----------------------------------------------------------- equal Spearman, Figure 4


def figure4_pairs():
    """Two estimates with Spearman ≈ 0.85 against one truth: a few large effects, many small.

    ``matching`` has the true magnitudes and scrambles only the order of the
    17 largest small effects. ``far_off`` predicts the large effects as tiny
    values (0 to 0.04, reversed) and scrambles 11 small effects.
    """
    large = np.array([1.0, 0.8, 0.6, 0.5, 0.4])
    small = np.linspace(0.05, -0.05, 35)
    truth = np.concatenate([large, small])
    scrambled = small.copy()
    scrambled[:17] = scrambled[:17][::-1]
    matching = np.concatenate([large, scrambled])
    scrambled = small.copy()
    scrambled[:11] = scrambled[:11][::-1]
    far_off = np.concatenate([[0.0, 0.01, 0.02, 0.03, 0.04], scrambled])
    return truth, matching, far_off


def test_magnitude_weighted_separates_equal_spearman():
    truth, matching, far_off = figure4_pairs()

    rho_matching = spearman_score(matching, truth).value
    rho_far_off = spearman_score(far_off, truth).value
    assert rho_matching == pytest.approx(0.85, abs=0.01)
    assert rho_far_off == pytest.approx(rho_matching, abs=0.005)

    weighted_matching = magnitude_weighted_score(matching, truth).value
    weighted_far_off = magnitude_weighted_score(far_off, truth).value
    assert weighted_matching > 0.99
    assert abs(weighted_far_off) < 0.05


# ------------------------------------------------------------------ NaN with reason


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize(
    ("estimate", "truth", "reason"),
    [
        ([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0], "estimate is constant"),
        ([1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0], "truth is constant"),
        ([1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0], "truth is constant"),
        ([1.0, np.nan, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], "estimate has 1 non-finite values"),
        ([1.0, 2.0, 3.0, 4.0], [1.0, np.inf, 3.0, -np.inf], "truth has 2 non-finite values"),
        ([1.0, 2.0], [2.0, 1.0], "fewer than 3 points (2)"),
        ([1.0, 2.0, 3.0], [1.0, 2.0], "estimate and truth must be vectors of one length, got "
                                      "(3,) and (2,)"),
    ],
)
def test_unscorable_pair_gives_nan_and_reason(name, estimate, truth, reason):
    score = score_with_defaults(name, estimate, truth)

    assert np.isnan(score.value)
    assert score.reason == reason


@pytest.mark.parametrize(("function", "estimate", "truth", "reason"), [
    (magnitude_weighted_score, [5.0, 6.0, 1.0, 1.0], [0.0, 0.0, 1.0, -2.0],
     "estimate is constant on the points with nonzero truth"),
    (magnitude_weighted_score, [1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 3.0, 3.0],
     "truth takes a single nonzero value"),
    (partial(topk_overlap_score, k=2), [1.0, -1.0, 1.0, -1.0], [1.0, 2.0, 3.0, 4.0],
     "estimate magnitudes are all equal, so the top k is undefined"),
    (partial(sign_agreement_score, k=2), [1.0, 2.0, 3.0, 4.0], [1.0, -1.0, 1.0, -1.0],
     "truth magnitudes are all equal, so the top k is undefined"),
    (topk_overlap_score, [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0],
     "k = 10 exceeds the number of points (4)"),
    (sign_agreement_score, [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0],
     "k = 10 exceeds the number of points (4)"),
])
def test_scorer_specific_nan_reason(function, estimate, truth, reason):
    score = function(np.array(estimate), np.array(truth))

    assert np.isnan(score.value)
    assert score.reason == reason
