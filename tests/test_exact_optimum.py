"""exact_optimum against scikit-learn's multinomial logistic regression on fixed features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import linear_batch, solve_logistic
from sklearn.linear_model import LogisticRegression

from ifval.errors import IfvalError
from ifval.ground_truths.exact_optimum import ExactOptimum, ExactOptimumParams, newton

DECAY = 0.05
POINTS = np.array([[3, 50, 101, 140]])


def sklearn_fit(x, y, weight, n_scale):
    """Fit scikit-learn's L2 multinomial regression with the bias penalised like the weights.

    ifval minimises (1/N) Σ_i ℓ_i + (w/2)‖θ‖² over θ = (W, b); dividing by w
    gives (1/(N w)) Σ_i ℓ_i + ½‖θ‖², scikit-learn's objective with
    C = 1/(N w). N is n for the original-n normalisation, whatever the number
    of points fitted. scikit-learn leaves its intercept unpenalised, so the
    bias enters as a constant feature instead.
    """
    augmented = np.hstack([x, np.ones((len(x), 1))])
    model = LogisticRegression(C=1.0 / (n_scale * weight), fit_intercept=False, tol=1e-12,
                               max_iter=100_000)
    model.fit(augmented, y)
    return model.coef_.T


def test_losses(x, y, theta):
    """Mean test cross-entropy of the (d + 1, C) parameter matrix ``theta``."""
    augmented = np.hstack([x, np.ones((len(x), 1))])
    logits = augmented @ theta
    logits -= logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(y)), y].mean())


test_losses.__test__ = False


@pytest.fixture(scope="module")
def batch(iris_split):
    n = len(iris_split.y_train)
    start = solve_logistic(iris_split.x_train, iris_split.y_train, np.full(n, 1 / n), 0.3, 3)
    return linear_batch(iris_split, start, DECAY)


def test_newton_optimum_matches_sklearn(iris_split):
    x, y = iris_split.x_train, iris_split.y_train
    n = len(y)
    features = torch.tensor(np.hstack([x, np.ones((n, 1))]))
    keep = torch.full((1, n), 1 / n, dtype=torch.float64)
    theta, grad_norm, steps = newton(features, torch.tensor(y), keep,
                                     torch.zeros(1, 5, 3, dtype=torch.float64), DECAY,
                                     1e-12, 50)
    expected = sklearn_fit(x, y, DECAY, n)

    np.testing.assert_allclose(theta[0].numpy(), expected, rtol=1e-6, atol=1e-8)
    assert float(grad_norm[0]) < 1e-12
    assert steps < 15


@pytest.mark.parametrize("normalisation", ["original_n", "remaining"])
def test_loo_optima_match_sklearn(iris_split, normalisation):
    x, y = iris_split.x_train, iris_split.y_train
    n = len(y)
    n_scale = n if normalisation == "original_n" else n - 1
    features = torch.tensor(np.hstack([x, np.ones((n, 1))]))
    keep = torch.ones(len(POINTS[0]), n, dtype=torch.float64) / n_scale
    keep[torch.arange(len(POINTS[0])), torch.tensor(POINTS[0])] = 0.0
    theta, _, _ = newton(features, torch.tensor(y), keep,
                         torch.zeros(len(POINTS[0]), 5, 3, dtype=torch.float64), DECAY, 1e-12, 50)

    for row, point in enumerate(POINTS[0]):
        kept = np.ones(n, dtype=bool)
        kept[point] = False
        expected = sklearn_fit(x[kept], y[kept], DECAY, n_scale)
        np.testing.assert_allclose(theta[row].numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("normalisation", ["original_n", "remaining"])
def test_loo_changes_match_scipy(iris_split, batch, normalisation):
    """The measured changes agree with scipy's L-BFGS optima.

    L-BFGS stops on a relative decrease of the objective as well, which leaves
    its leave-one-out test losses about 5e-9 from Newton's; the tolerance
    allows for that and nothing more.
    """
    x, y = iris_split.x_train, iris_split.y_train
    n = len(y)
    n_scale = n if normalisation == "original_n" else n - 1
    full = solve_logistic(x, y, np.full(n, 1 / n), DECAY, 3)
    base = test_losses(iris_split.x_test, iris_split.y_test, _as_matrix(full))
    expected = []
    for point in POINTS[0]:
        weights = np.full(n, 1 / n_scale)
        weights[point] = 0.0
        theta = solve_logistic(x, y, weights, DECAY, 3, start=full)
        expected.append(test_losses(iris_split.x_test, iris_split.y_test, _as_matrix(theta))
                        - base)

    result = ExactOptimum().measure(ExactOptimumParams(normalisation=normalisation), batch,
                                    POINTS)
    np.testing.assert_allclose(result.values[0], expected, rtol=1e-6, atol=2e-8)
    for diagnostics in result.diagnostics[0]:
        assert diagnostics["grad_norm"] < 1e-10


def _as_matrix(flat):
    """conftest's flat (W row-major, then b) as the (d + 1, C) matrix used here."""
    return np.vstack([flat[:12].reshape(4, 3), flat[12:][None]])


def test_drift_from_non_optimal_start_recorded(iris_split, batch):
    """θ̂ was fitted with a stronger decay, so the exact optimum lies elsewhere."""
    n = len(iris_split.y_train)
    full = sklearn_fit(iris_split.x_train, iris_split.y_train, DECAY, n)
    start = batch.weights
    theta_start = torch.cat([start["out.weight"][0], start["out.bias"][0][None]]).numpy()
    expected = (test_losses(iris_split.x_test, iris_split.y_test, full)
                - test_losses(iris_split.x_test, iris_split.y_test, theta_start))

    result = ExactOptimum().measure(ExactOptimumParams(), batch, POINTS)
    assert result.diagnostics[0][0]["baseline_drift"] == pytest.approx(expected, rel=1e-6)


def test_no_weight_decay_rejected(iris_split, batch):
    flat = torch.cat([batch.weights["out.weight"][0].flatten(), batch.weights["out.bias"][0]])
    undecayed = linear_batch(iris_split, flat.numpy(), 0.0)

    with pytest.raises(IfvalError) as caught:
        ExactOptimum().measure(ExactOptimumParams(), undecayed, POINTS)
    assert str(caught.value) == (
        "ground truth 'exact_optimum' needs weight decay w > 0: without it the last-layer "
        "cross-entropy problem is not strictly convex and has no unique optimum (found w = 0); "
        "set training.weight_decay, or use retrain_from_optimum")
