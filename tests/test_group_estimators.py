"""The ``group`` and ``second_order`` estimators on Iris multinomial logistic regression.

Multinomial logistic regression with weight decay is strictly convex, so every
retrain is solved to a gradient norm below 1e-13 by Newton steps with the
closed-form gradient and Hessian written out below in numpy, independently of
ifval and torch. Whole-group removals start them from scipy's L-BFGS optimum
(``conftest.solve_logistic``).

The removal path θ(ε), ε ∈ [0, 1], weights the removed points (1 − ε)/n and,
with ``remaining``, the others (1 + ε p/(1 − p))/n, p = m/n, which is
1/(n − m) at ε = 1. The first-order estimate is the derivative of the test
loss along it at ε = 0, and ``full_taylor`` adds half the second derivative.
Both are checked against finite differences of exact re-solves.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import linear_batch, solve_logistic, test_loss_numpy
from scipy.special import softmax

from ifval.errors import IfvalError, NumericalError
from ifval.estimators.exact import Exact, ExactParams
from ifval.estimators.group import Group, GroupParams, SecondOrder, SecondOrderParams
from ifval.kinds import TrainedBatch
from ifval.models.mlp import MLP

DECAY = 0.01
CLASSES = 3
NORMALISATIONS = ["original_n", "remaining"]
ESTIMATORS = [(Group(), GroupParams()), (SecondOrder(), SecondOrderParams()),
              (SecondOrder(), SecondOrderParams(full_taylor=True))]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run torch on one thread: the problems are tiny, and extra threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------- closed-form numpy reference


def with_bias(x: np.ndarray) -> np.ndarray:
    """Append a column of ones, so that θ reshaped to (d + 1, C) is [W; b]."""
    return np.hstack([x, np.ones((len(x), 1))])


def per_point_gradients(flat: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """∇ℓ_i = x̃_i ⊗ (softmax_i − e_{y_i}), shape (n, P), in the flat order of ``linear_batch``."""
    features = with_bias(x)
    residual = softmax(features @ flat.reshape(features.shape[1], CLASSES), axis=1)
    residual[np.arange(len(y)), y] -= 1.0
    return np.einsum("nj,nc->njc", features, residual).reshape(len(y), -1)


def per_point_hessians(flat: np.ndarray, x: np.ndarray) -> np.ndarray:
    """∇²ℓ_i = (x̃_i x̃_iᵀ) ⊗ (diag(s_i) − s_i s_iᵀ), shape (n, P, P)."""
    features = with_bias(x)
    probs = softmax(features @ flat.reshape(features.shape[1], CLASSES), axis=1)
    curvature = np.einsum("nc,cd->ncd", probs, np.eye(CLASSES)) - np.einsum("nc,nd->ncd",
                                                                            probs, probs)
    size = features.shape[1] * CLASSES
    outer = np.einsum("nj,nk,ncd->njckd", features, features, curvature)
    return outer.reshape(len(x), size, size)


def newton_polish(flat: np.ndarray, x: np.ndarray, y: np.ndarray, weights: np.ndarray,
                  decay: float) -> np.ndarray:
    """Minimise Σ a_i ℓ_i + (w/2)‖θ‖² by Newton's method from ``flat`` to gradient norm 1e-13."""
    for _ in range(20):
        gradient = weights @ per_point_gradients(flat, x, y) + decay * flat
        if np.linalg.norm(gradient) < 1e-13:
            return flat
        hessian = np.einsum("n,npq->pq", weights, per_point_hessians(flat, x))
        flat = flat - np.linalg.solve(hessian + decay * np.eye(len(flat)), gradient)
    raise AssertionError(f"Newton's method stalled at gradient norm {np.linalg.norm(gradient)}")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def convex(iris_split):
    split = iris_split
    n = len(split.y_train)
    full = solve_logistic(split.x_train, split.y_train, np.full(n, 1 / n), DECAY, CLASSES)
    full = newton_polish(full, split.x_train, split.y_train, np.full(n, 1 / n), DECAY)
    base = test_loss_numpy(full, split.x_test, split.y_test, CLASSES)
    return split, full, base, linear_batch(split, full, DECAY)


def path_weights(n: int, rows: np.ndarray, epsilon: float, normalisation: str) -> np.ndarray:
    """Weights of the training points at ε on the removal path (see the module docstring)."""
    p = len(rows) / n
    weights = np.full(n, 1 / n)
    if normalisation == "remaining":
        weights *= 1 + epsilon * p / (1 - p)
    weights[rows] = (1 - epsilon) / n
    return weights


def path_test_loss(convex, rows: np.ndarray, epsilon: float, normalisation: str) -> float:
    split, full, _, _ = convex
    weights = path_weights(len(split.y_train), rows, epsilon, normalisation)
    theta = newton_polish(full, split.x_train, split.y_train, weights, DECAY)
    return test_loss_numpy(theta, split.x_test, split.y_test, CLASSES)


def true_group_changes(convex, groups: np.ndarray, normalisation: str) -> np.ndarray:
    """Test-loss change of the retrain without each group, from scipy then Newton."""
    split, full, base, _ = convex
    x, y = split.x_train, split.y_train
    changes = []
    for rows in groups:
        weights = path_weights(len(y), rows, 1.0, normalisation)
        theta = solve_logistic(x, y, weights, DECAY, CLASSES, start=full)
        theta = newton_polish(theta, x, y, weights, DECAY)
        changes.append(test_loss_numpy(theta, split.x_test, split.y_test, CLASSES) - base)
    return np.array(changes)


# ------------------------------------------------------------------------ first order

FIXED_GROUPS = np.array([[[3, 17, 40, 77, 90, 110, 125, 141], [0, 1, 2, 3, 4, 5, 6, 7],
                          [20, 45, 60, 88, 99, 101, 130, 148]]])


@pytest.mark.parametrize("normalisation", NORMALISATIONS)
def test_group_of_one_equals_exact(convex, normalisation):
    *_, batch = convex
    points = np.arange(0, 149, 7)[None]
    group = Group().estimate(GroupParams(), batch, points, normalisation).values
    exact = Exact().estimate(ExactParams(), batch, points, normalisation).values
    np.testing.assert_allclose(group, exact, rtol=1e-12, atol=0)


def test_group_sums_exact_estimates_of_members(convex):
    *_, batch = convex
    members = FIXED_GROUPS.reshape(1, -1)
    singles = Exact().estimate(ExactParams(), batch, members, "original_n").values
    summed = Group().estimate_groups(GroupParams(), batch, FIXED_GROUPS, "original_n").values
    np.testing.assert_allclose(summed, singles.reshape(FIXED_GROUPS.shape).sum(axis=2),
                               rtol=1e-12)


@pytest.mark.parametrize("normalisation", NORMALISATIONS)
def test_group_is_derivative_along_path(convex, normalisation):
    """The central difference of exact re-solves at ε = ±1e-4 matches the first-order term."""
    *_, batch = convex
    step = 1e-4
    estimate = Group().estimate_groups(GroupParams(), batch, FIXED_GROUPS, normalisation).values
    for j, rows in enumerate(FIXED_GROUPS[0]):
        forward = path_test_loss(convex, rows, step, normalisation)
        backward = path_test_loss(convex, rows, -step, normalisation)
        derivative = (forward - backward) / (2 * step)
        assert estimate[0, j] == pytest.approx(derivative, rel=1e-6)


# ----------------------------------------------------------------------- second order


def paper_expression(convex, rows: np.ndarray, normalisation: str) -> float:
    """Basu et al.'s g_testᵀ(I⁽¹⁾ + I′) written out with numpy's explicit Hessians.

    ``remaining``: (1 − 2p)/(1 − p)² (1/n) K Σ g̃_i + 1/(1 − p)² (1/n²) K Σ H̃_i K Σ g̃_i
    with g̃_i = g_i + wθ̂ and H̃_i = ∇²ℓ_i + wI. ``original_n``: p = 0 and g_i, ∇²ℓ_i.
    """
    split, full, _, _ = convex
    x, y = split.x_train, split.y_train
    n, size = len(y), len(full)
    gradients = per_point_gradients(full, x, y)
    hessians = per_point_hessians(full, x)
    inverse = np.linalg.inv(hessians.mean(axis=0) + DECAY * np.eye(size))
    test_gradient = per_point_gradients(full, split.x_test, split.y_test).mean(axis=0)
    group_gradient = gradients[rows].sum(axis=0)
    group_hessian = hessians[rows].sum(axis=0)
    p = len(rows) / n
    if normalisation == "remaining":
        group_gradient = group_gradient + len(rows) * DECAY * full
        group_hessian = group_hessian + len(rows) * DECAY * np.eye(size)
    else:
        p = 0.0
    first = (1 - 2 * p) / (1 - p) ** 2 / n * inverse @ group_gradient
    second = (1 / (1 - p) ** 2 / n**2 * inverse @ group_hessian @ inverse @ group_gradient)
    return float(test_gradient @ (first + second))


@pytest.mark.parametrize("normalisation", NORMALISATIONS)
def test_second_order_matches_numpy_expression(convex, normalisation):
    *_, batch = convex
    estimate = SecondOrder().estimate_groups(SecondOrderParams(), batch, FIXED_GROUPS,
                                             normalisation).values
    expected = [paper_expression(convex, rows, normalisation) for rows in FIXED_GROUPS[0]]
    np.testing.assert_allclose(estimate[0], expected, rtol=1e-10)


@pytest.mark.parametrize("normalisation", NORMALISATIONS)
def test_full_taylor_is_half_second_derivative(convex, normalisation):
    """``full_taylor`` minus ``group`` matches ½ f''(0) from second differences at ε = ±1e-3."""
    *_, batch = convex
    step = 1e-3
    first = Group().estimate_groups(GroupParams(), batch, FIXED_GROUPS, normalisation).values
    taylor = SecondOrder().estimate_groups(SecondOrderParams(full_taylor=True), batch,
                                           FIXED_GROUPS, normalisation).values
    for j, rows in enumerate(FIXED_GROUPS[0]):
        centre = path_test_loss(convex, rows, 0.0, normalisation)
        forward = path_test_loss(convex, rows, step, normalisation)
        backward = path_test_loss(convex, rows, -step, normalisation)
        half_second = 0.5 * (forward - 2 * centre + backward) / step**2
        assert taylor[0, j] - first[0, j] == pytest.approx(half_second, rel=1e-4)


def random_groups(n: int, members: int, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(n, members, replace=False) for _ in range(count)])


@pytest.mark.parametrize("normalisation", NORMALISATIONS)
@pytest.mark.parametrize("members", [8, 15])
def test_second_order_beats_first_order(convex, normalisation, members):
    """Over 30 random groups of 8 or 15 of the 149 points (5 % and 10 %).

    Measured mean absolute errors (first order, second order, full Taylor),
    against mean absolute true changes of 2–4e-2:
    remaining m=8: 1.07e-3, 2.92e-4, 1.08e-4; m=15: 2.82e-3, 9.05e-4, 3.72e-4;
    original_n m=8: 1.86e-3, 2.86e-4, 2.06e-4; m=15: 4.91e-3, 8.47e-4, 8.72e-4.
    """
    split, _, _, batch = convex
    groups = random_groups(len(split.y_train), members, 30, seed=members)
    truth = true_group_changes(convex, groups, normalisation)
    first = Group().estimate_groups(GroupParams(), batch, groups[None], normalisation).values[0]
    second = SecondOrder().estimate_groups(SecondOrderParams(), batch, groups[None],
                                           normalisation).values[0]
    taylor = SecondOrder().estimate_groups(SecondOrderParams(full_taylor=True), batch,
                                           groups[None], normalisation).values[0]

    first_error = np.abs(first - truth).mean()
    second_error = np.abs(second - truth).mean()
    taylor_error = np.abs(taylor - truth).mean()
    errors = (f"mean |error|: first {first_error:.2e}, second {second_error:.2e}, "
              f"full Taylor {taylor_error:.2e}; mean |truth| {np.abs(truth).mean():.2e}")
    assert second_error < 0.5 * first_error, errors
    assert taylor_error < 0.5 * first_error, errors


@pytest.mark.parametrize("normalisation", NORMALISATIONS)
def test_single_point_term_is_inverse_n_squared(convex, normalisation):
    """For |U| = 1 the second-order term is O(1/n²), and halves twice when n doubles.

    With K = (H + wI)⁻¹, the difference from first order is
    (1/n²) (K g_test)ᵀ ∇²ℓ_i K g_i for original_n, and
    (1/(n−1)²) (K g_test)ᵀ (H̃_i − H − wI) K g̃_i for remaining, where
    g̃_i = g_i + wθ̂ and H̃_i = ∇²ℓ_i + wI. By Cauchy–Schwarz it is at most
    C/n² times scale_i = ‖K g_test‖ ‖K g_i‖ ‖∇²ℓ_i‖ (original_n) or
    ‖K g_test‖ ‖K g̃_i‖ ‖H̃_i − H − wI‖ (remaining), with C = 1.1 ≥ (n/(n−1))²
    for n = 149. Measured: max |second − first| 7.5e-3 (original_n) and
    7.2e-3 (remaining), that is 166 and 160 times 1/n², and 0.002 to 0.40
    times scale_i/n². Duplicating every training point keeps θ̂ and H, so the
    difference shrinks by exactly 4 (original_n) or ((2n−1)/(n−1))² (remaining).
    """
    split, full, _, batch = convex
    n = len(split.y_train)
    points = np.arange(0, n, 5)[None]
    difference = (SecondOrder().estimate(SecondOrderParams(), batch, points, normalisation).values
                  - Group().estimate(GroupParams(), batch, points, normalisation).values)[0]

    x, y = split.x_train, split.y_train
    rows = points[0]
    identity = np.eye(len(full))
    hessians = per_point_hessians(full, x)
    system = hessians.mean(axis=0) + DECAY * identity
    inverse = np.linalg.inv(system)
    test_solved = inverse @ per_point_gradients(full, split.x_test, split.y_test).mean(axis=0)
    gradients = per_point_gradients(full, x, y)[rows]
    curvatures = hessians[rows]
    if normalisation == "remaining":
        gradients = gradients + DECAY * full
        curvatures = curvatures + DECAY * identity - system
    scale = (np.linalg.norm(test_solved) * np.linalg.norm(gradients @ inverse, axis=1)
             * np.linalg.norm(curvatures, ord=2, axis=(1, 2)))
    ratio = np.abs(difference) * n**2 / scale
    assert ratio.max() <= 1.1, f"|second − first|·n²/scale up to {ratio.max():.3f}"

    doubled = dataclasses.replace(split, x_train=np.concatenate([x, x]),
                                  y_train=np.concatenate([y, y]))
    doubled_batch = linear_batch(doubled, full, DECAY)
    doubled_difference = (
        SecondOrder().estimate(SecondOrderParams(), doubled_batch, points, normalisation).values
        - Group().estimate(GroupParams(), doubled_batch, points, normalisation).values)[0]
    shrink = 4.0 if normalisation == "original_n" else ((2 * n - 1) / (n - 1)) ** 2
    np.testing.assert_allclose(difference / doubled_difference, shrink, rtol=1e-8)


# ----------------------------------------------------------------------- batches, errors


def stacked_batch(split, thetas: list[np.ndarray], decays: list[float]) -> TrainedBatch:
    """A batch of several logistic regressions, one per (θ̂, w) pair."""
    singles = [linear_batch(split, theta, decay) for theta, decay in zip(thetas, decays,
                                                                          strict=True)]
    weights = {name: torch.cat([single.weights[name] for single in singles])
               for name in singles[0].weights}
    return dataclasses.replace(singles[0], weights=weights,
                               weight_decay=torch.tensor(decays, dtype=torch.float64),
                               seeds=list(range(len(singles))))


@pytest.mark.parametrize("estimator,params", ESTIMATORS)
def test_batch_of_two_models_matches_each_alone(iris_split, estimator, params):
    split = iris_split
    n = len(split.y_train)
    decays = [0.01, 0.05]
    thetas = [solve_logistic(split.x_train, split.y_train, np.full(n, 1 / n), decay, CLASSES)
              for decay in decays]
    groups = np.stack([FIXED_GROUPS[0], FIXED_GROUPS[0][::-1]])
    together = estimator.estimate_groups(params, stacked_batch(split, thetas, decays), groups,
                                         "remaining")
    for index, (theta, decay) in enumerate(zip(thetas, decays, strict=True)):
        alone = estimator.estimate_groups(params, linear_batch(split, theta, decay),
                                          groups[index : index + 1], "remaining")
        np.testing.assert_allclose(together.values[index], alone.values[0], rtol=1e-12)
    assert [info["group_size"] for info in together.info] == [8, 8]


class PenalisedMLP(MLP):
    """``mlp`` whose L2 term (w/2)‖θ‖² comes from :meth:`penalty` instead of the weight decay."""

    def penalty(self, params, weights):  # type: ignore[no-untyped-def,override]
        return sum(0.5 * DECAY * w.flatten(1).pow(2).sum(dim=1) for w in weights.values())


@pytest.mark.parametrize("normalisation", NORMALISATIONS)
@pytest.mark.parametrize("estimator,params", ESTIMATORS)
def test_penalty_acts_as_weight_decay(convex, estimator, params, normalisation):
    """A penalty R = (w/2)‖θ‖² with no weight decay gives the estimates of weight decay w."""
    *_, batch = convex
    penalised = dataclasses.replace(batch, model=PenalisedMLP(),
                                    weight_decay=torch.zeros(1, dtype=torch.float64))
    expected = estimator.estimate_groups(params, batch, FIXED_GROUPS, normalisation).values
    got = estimator.estimate_groups(params, penalised, FIXED_GROUPS, normalisation).values
    np.testing.assert_allclose(got, expected, rtol=1e-10)


@pytest.mark.parametrize("estimator", [Group(), SecondOrder()])
def test_singular_hessian_suggests_damping(iris_split, estimator):
    """Without weight decay or damping the last-layer cross-entropy Hessian is singular."""
    split = iris_split
    n = len(split.y_train)
    theta = solve_logistic(split.x_train, split.y_train, np.full(n, 1 / n), 0.05, CLASSES)
    batch = linear_batch(split, theta, 0.0)

    with pytest.raises(NumericalError) as caught:
        estimator.estimate_groups(estimator.Params(damping=0.0), batch, FIXED_GROUPS,
                                  "original_n")
    message = str(caught.value)
    assert message.startswith(f"estimator '{estimator.name}' (scope last_layer, seed 0): "
                              "H + λI is not positive definite")
    assert "set the estimator's `damping` to at least" in message

    damped = estimator.estimate_groups(estimator.Params(damping=1e-3), batch, FIXED_GROUPS,
                                       "original_n")
    assert np.isfinite(damped.values).all()


@pytest.mark.parametrize("estimator", [Group(), SecondOrder()])
def test_group_of_all_points_rejected(convex, estimator):
    *_, batch = convex
    every = np.arange(149)[None, None]
    with pytest.raises(IfvalError, match="a group of 149 points out of 149 training points"):
        estimator.estimate_groups(estimator.Params(), batch, every, "remaining")
