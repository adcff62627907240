"""The exact estimator against leave-one-out retraining solved to tolerance on a convex problem.

Multinomial logistic regression on the standardised Iris features with weight
decay is strictly convex, so scipy's L-BFGS finds every leave-one-out optimum
to a gradient norm of about 1e-12, independently of ifval.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import linear_batch, solve_logistic, test_loss_numpy

from ifval.errors import NumericalError
from ifval.estimators.exact import Exact, ExactParams

DECAY = 0.1
CHECKED = 12


@pytest.fixture(scope="module")
def convex(iris_split):
    split = iris_split
    n = len(split.y_train)
    full = solve_logistic(split.x_train, split.y_train, np.full(n, 1 / n), DECAY, 3)
    base = test_loss_numpy(full, split.x_test, split.y_test, 3)
    return split, full, base


def true_changes(convex, points, normalisation):
    split, full, base = convex
    n = len(split.y_train)
    changes = []
    for point in points:
        weights = np.full(n, 1 / n if normalisation == "original_n" else 1 / (n - 1))
        weights[point] = 0.0
        refit = solve_logistic(split.x_train, split.y_train, weights, DECAY, 3, start=full)
        changes.append(test_loss_numpy(refit, split.x_test, split.y_test, 3) - base)
    return np.array(changes)


def ranked_points(convex, normalisation):
    """Training rows sorted by the size of their estimated effect, largest first."""
    split, full, _ = convex
    batch = linear_batch(split, full, DECAY)
    every = np.arange(len(split.y_train))[None]
    estimate = Exact().estimate(ExactParams(), batch, every, normalisation).values[0]
    return np.argsort(-np.abs(estimate))


def most_influential(convex, normalisation):
    """The points whose removal changes the test loss most (so relative errors are meaningful)."""
    return ranked_points(convex, normalisation)[:CHECKED]


@pytest.mark.parametrize("normalisation", ["original_n", "remaining"])
def test_exact_matches_loo_retraining(convex, normalisation):
    split, full, _ = convex
    points = most_influential(convex, normalisation)
    truth = true_changes(convex, points, normalisation)
    batch = linear_batch(split, full, DECAY)
    estimate = Exact().estimate(ExactParams(), batch, points[None], normalisation).values[0]

    relative = np.abs(estimate - truth) / np.abs(truth)
    assert np.all(np.sign(estimate) == np.sign(truth))
    assert relative.max() < 0.05, f"relative errors {relative}"


def test_uncorrected_estimate_misses_mean_normalised_truth(convex):
    """Without the w·θ̂ term, n/(n−1) times the original-n estimate misses the mean retrain.

    The missing term is the same for every point, so it shows on the points
    with small effects, where the first-order approximation itself is tight.
    """
    split, full, _ = convex
    n = len(split.y_train)
    points = ranked_points(convex, "remaining")[-CHECKED:]
    truth = true_changes(convex, points, "remaining")
    batch = linear_batch(split, full, DECAY)
    corrected = Exact().estimate(ExactParams(), batch, points[None], "remaining").values[0]
    plain = Exact().estimate(ExactParams(), batch, points[None], "original_n").values[0]
    uncorrected = plain * n / (n - 1)

    error_corrected = np.abs(corrected - truth).max()
    error_uncorrected = np.abs(uncorrected - truth).min()
    assert error_uncorrected > 10 * error_corrected


def test_normalisations_differ_under_weight_decay(convex):
    """The two retrains differ by a measurable amount, which each estimate predicts."""
    split, full, _ = convex
    points = ranked_points(convex, "original_n")[-4:]
    original = true_changes(convex, points, "original_n")
    remaining = true_changes(convex, points, "remaining")
    batch = linear_batch(split, full, DECAY)
    exact = Exact()
    predicted = (exact.estimate(ExactParams(), batch, points[None], "remaining").values[0]
                 - exact.estimate(ExactParams(), batch, points[None], "original_n").values[0])

    measured = remaining - original
    assert np.abs(measured).min() > np.abs(original).max()
    np.testing.assert_allclose(predicted, measured, rtol=0.05)


def test_singular_hessian_suggests_damping(iris_split):
    """Without weight decay or damping the last-layer cross-entropy Hessian is singular."""
    split = iris_split
    n = len(split.y_train)
    theta = solve_logistic(split.x_train, split.y_train, np.full(n, 1 / n), 0.05, 3)
    batch = linear_batch(split, theta, 0.0)

    with pytest.raises(NumericalError) as caught:
        Exact().estimate(ExactParams(damping=0.0), batch, np.array([[0, 1, 2]]), "original_n")
    message = str(caught.value)
    assert "H + λI is not positive definite" in message
    assert "set the estimator's `damping` to at least" in message


def test_damping_makes_singular_hessian_solvable(iris_split):
    split = iris_split
    n = len(split.y_train)
    theta = solve_logistic(split.x_train, split.y_train, np.full(n, 1 / n), 0.05, 3)
    batch = linear_batch(split, theta, 0.0)

    result = Exact().estimate(ExactParams(damping=1e-3), batch, np.array([[0, 1, 2]]),
                              "original_n")
    assert np.isfinite(result.values).all()
