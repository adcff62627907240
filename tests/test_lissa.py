"""The lissa estimator: its recursion on explicit quadratics, and its estimates against exact.

Reference values come from ``torch.linalg.solve`` and ``torch.linalg.eigh`` on
explicit matrices, from the closed form of the truncated Neumann series, and
from the ``exact`` estimator's Cholesky solve on the same trained models.
"""

from __future__ import annotations

import re
import weakref

import numpy as np
import pytest
import torch

from ifval.errors import IfvalError, NumericalError
from ifval.estimators.exact import Exact, ExactParams
from ifval.estimators.lissa import (
    Lissa,
    LissaParams,
    hessian_vector_product,
    lissa_solve,
    per_sample_gradients,
)
from ifval.estimators.scope import flat_problem
from ifval.kinds import TrainedBatch
from ifval.models.mlp import MLP, MLPParams
from ifval.training.fit import FitSettings, fit

DAMPING = 0.01


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run on one thread: these products are tiny, and extra threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spd_matrix(eigenvalues: torch.Tensor, seed: int) -> torch.Tensor:
    """A symmetric matrix with the given eigenvalues and a random orthonormal basis."""
    generator = torch.Generator().manual_seed(seed)
    size = len(eigenvalues)
    basis, _ = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
    return basis @ torch.diag(eigenvalues) @ basis.T


def random_vector(size: int, seed: int) -> torch.Tensor:
    return torch.randn(size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture(scope="module")
def quadratic():
    """H with eigenvalues log-spaced in [0.1, 10], a right-hand side v, and (H + λI)⁻¹ v."""
    hessian = spd_matrix(torch.logspace(-1, 1, 12, dtype=torch.float64), seed=0)
    v = random_vector(12, seed=1)
    system = hessian + DAMPING * torch.eye(12, dtype=torch.float64)
    return hessian, v, torch.linalg.solve(system, v)


def relative_error(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(estimate - reference)
                 / torch.linalg.vector_norm(reference))


# ------------------------------------------------------------------ the recursion


def test_solve_matches_linalg_solve(quadratic):
    hessian, v, expected = quadratic

    result = lissa_solve(lambda u: hessian @ u, v, scale=10.0, damping=DAMPING, depth=5000,
                         tol=1e-13)

    error = relative_error(result.solution, expected)
    assert error < 1e-6, f"relative error {error:.2e} after {result.depth_reached} steps"
    assert result.depth_reached[0] < 5000
    assert result.relative_residual < 1e-9


def test_error_falls_with_depth(quadratic):
    """Errors at depth 10, 100, 1000 decrease and equal the closed-form truncation error.

    With A = H + λI, J steps give h_J / s = A⁻¹ (I − (I − A/s)^{J+1}) v, so the
    error is −A⁻¹ (I − A/s)^{J+1} v.
    """
    hessian, v, expected = quadratic
    scale = 10.0
    eigenvalues, basis = torch.linalg.eigh(hessian + DAMPING * torch.eye(12, dtype=torch.float64))
    coefficients = basis.T @ v

    errors = []
    for depth in (10, 100, 1000):
        result = lissa_solve(lambda u: hessian @ u, v, scale=scale, damping=DAMPING,
                             depth=depth, tol=0.0)
        contraction = (1 - eigenvalues / scale) ** (depth + 1)
        truncation = -basis @ (contraction * coefficients / eigenvalues)

        assert result.depth_reached == [depth]
        torch.testing.assert_close(result.solution - expected, truncation, rtol=1e-8,
                                   atol=1e-12)
        errors.append(relative_error(result.solution, expected))
    assert errors[0] > errors[1] > errors[2], f"relative errors at depth 10, 100, 1000: {errors}"
    assert errors[2] < 1e-3


def test_damping_factor_form_maps_to_scale_times_factor(quadratic):
    """h_j = v + (1 − d) h_{j−1} − H h_{j−1}/s is the recursion with λ = s·d."""
    hessian, v, _ = quadratic
    scale, factor, depth = 10.0, 0.003, 200
    h = v.clone()
    for _ in range(depth):
        h = v + (1 - factor) * h - hessian @ h / scale

    result = lissa_solve(lambda u: hessian @ u, v, scale=scale, damping=scale * factor,
                         depth=depth, tol=0.0)
    torch.testing.assert_close(result.solution, h / scale, rtol=1e-12, atol=1e-14)


def test_repeats_reduce_minibatch_variance():
    """Averaging 8 independent repeats divides the variance over seeds by about 8 (checked: 3)."""
    rows = torch.randn(40, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    hessian = rows.T @ rows / len(rows)
    v = random_vector(4, seed=3)
    scale = 2 * float(torch.linalg.eigvalsh(hessian)[-1])

    def solve(repeats: int, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)

        def sampled(u: torch.Tensor) -> torch.Tensor:
            chosen = torch.randperm(len(rows), generator=generator)[:4]
            return rows[chosen].T @ (rows[chosen] @ u) / 4

        return lissa_solve(sampled, v, scale=scale, damping=DAMPING, depth=100,
                           repeats=repeats, tol=0.0, full_hvp=lambda u: hessian @ u).solution

    single = torch.stack([solve(1, seed) for seed in range(24)])
    averaged = torch.stack([solve(8, 100 + seed) for seed in range(24)])
    variance_single = float(single.var(dim=0).sum())
    variance_averaged = float(averaged.var(dim=0).sum())
    assert variance_single > 0
    assert variance_averaged < variance_single / 3, (
        f"variance over seeds: 1 repeat {variance_single:.3e}, 8 repeats "
        f"{variance_averaged:.3e}")


def test_scale_too_small_raises_divergence(quadratic):
    hessian, v, _ = quadratic
    largest = float(torch.linalg.eigvalsh(hessian)[-1]) + DAMPING

    with pytest.raises(NumericalError) as caught:
        lissa_solve(lambda u: hessian @ u, v, scale=3.0, damping=DAMPING, depth=5000)
    message = str(caught.value)
    assert "the LiSSA recursion diverged (scale s=3, damping λ=0.01)" in message
    assert "the step norm ‖h_j − h_{j−1}‖ grew" in message
    half = float(re.search(r"LiSSA needs scale > λ_max/2 = ([0-9.e+-]+);", message).group(1))
    assert half == pytest.approx(largest / 2, rel=0.02)


def test_minibatch_divergence_caught_by_norm_bound():
    """Minibatch steps skip the step-norm check, so ‖h_j‖ > (j + 1)‖v‖ must catch them."""
    rows = torch.randn(40, 4, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    hessian = rows.T @ rows / len(rows)
    generator = torch.Generator().manual_seed(12)

    def sampled(u: torch.Tensor) -> torch.Tensor:
        chosen = torch.randperm(len(rows), generator=generator)[:8]
        return rows[chosen].T @ (rows[chosen] @ u) / 8

    scale = 0.2 * float(torch.linalg.eigvalsh(hessian)[-1])
    with pytest.raises(NumericalError) as caught:
        lissa_solve(sampled, random_vector(4, seed=13), scale=scale, damping=0.0, depth=5000,
                    full_hvp=lambda u: hessian @ u)
    message = str(caught.value)
    assert f"diverged (scale s={scale:g}, damping λ=0)" in message
    assert "exceeds (j + 1)‖v‖" in message
    assert "a minibatch Hessian's λ_max can exceed the full-batch one" in message


def test_negative_curvature_raises_and_suggests_damping():
    """An eigenvalue of −0.05 diverges slowly; the step-norm check catches it."""
    eigenvalues = torch.cat([torch.tensor([-0.05], dtype=torch.float64),
                             torch.linspace(0.5, 5.0, 7, dtype=torch.float64)])
    hessian = spd_matrix(eigenvalues, seed=4)
    v = random_vector(8, seed=5)

    with pytest.raises(NumericalError) as caught:
        lissa_solve(lambda u: hessian @ u, v, scale=5.0, damping=DAMPING, depth=5000)
    message = str(caught.value)
    assert "the step norm ‖h_j − h_{j−1}‖ grew" in message
    assert "H + λI has a negative eigenvalue" in message
    suggested = float(re.search(r"set `damping` to at least ([0-9.e+-]+)", message).group(1))
    assert suggested > 0.05


def test_undamped_singular_hessian_suggests_damping():
    """With more parameters (20) than points (5), H = XᵀX/5 is singular and λ = 0 grows h."""
    rows = torch.randn(5, 20, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    hessian = rows.T @ rows / 5
    v = random_vector(20, seed=7)
    scale = float(torch.linalg.eigvalsh(hessian)[-1])

    with pytest.raises(NumericalError) as caught:
        lissa_solve(lambda u: hessian @ u, v, scale=scale, damping=0.0, depth=2000)
    message = str(caught.value)
    assert "with damping λ = 0 the LiSSA iterate grows linearly" in message
    assert "H + λI is singular along v" in message
    suggested = float(re.search(r"Set `damping` to at least ([0-9.e+-]+),", message).group(1))
    assert suggested == pytest.approx(5 * scale / 2000, rel=1e-2)

    damped = lissa_solve(lambda u: hessian @ u, v, scale=scale, damping=suggested, depth=2000)
    expected = torch.linalg.solve(hessian + suggested * torch.eye(20, dtype=torch.float64), v)
    assert relative_error(damped.solution, expected) < 1e-2


def test_zero_vector_returns_zero(quadratic):
    hessian, v, _ = quadratic

    result = lissa_solve(lambda u: hessian @ u, torch.zeros_like(v), scale=10.0,
                         damping=DAMPING, depth=10)
    assert torch.equal(result.solution, torch.zeros_like(v))


# --------------------------------------------------------------------------- memory


class TrackedProduct:
    """Wrap a Hessian-vector product and count how many of its inputs are still alive.

    An autograd graph kept across steps keeps every h_j that a product saved
    for backward alive, so the count grows with depth. Without one, only the
    last iterate survives.
    """

    def __init__(self, product) -> None:  # type: ignore[no-untyped-def]
        self.product = product
        self.inputs: list[weakref.ref] = []

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        self.inputs.append(weakref.ref(vector))
        return self.product(vector)

    def alive(self) -> int:
        return sum(reference() is not None for reference in self.inputs)


def test_tracker_sees_graph_kept_across_steps():
    """The instrument itself: a recursion that records autograd ops keeps every iterate."""
    hessian = spd_matrix(torch.linspace(1.0, 2.0, 6, dtype=torch.float64), 8).requires_grad_()
    v = random_vector(6, seed=9)
    product = TrackedProduct(lambda u: hessian @ u)

    h = v.clone()
    for _ in range(100):
        h = v + h - product(h) / 4.0
    assert product.alive() == 100


def test_memory_flat_in_depth(quadratic):
    """With a product that records autograd ops, no iterate outlives its step."""
    hessian, v, _ = quadratic
    tracked = hessian.clone().requires_grad_()

    for depth in (10, 1000):
        product = TrackedProduct(lambda u: tracked @ u)
        result = lissa_solve(product, v, scale=10.0, damping=DAMPING, depth=depth, tol=0.0)
        assert len(product.inputs) == depth + 1
        assert product.alive() <= 1
        assert result.solution.grad_fn is None


@pytest.mark.parametrize("linearized", [False, True])
def test_memory_flat_in_depth_for_model_products(trained_small, linearized):
    batch = trained_small
    problem = flat_problem(batch, 0, "all")
    problem.theta.requires_grad_()
    v = random_vector(problem.theta.numel(), seed=10)

    for depth in (10, 1000):
        product = TrackedProduct(hessian_vector_product(
            problem, 0.01, problem.inputs_train, batch.y_train, linearized=linearized))
        result = lissa_solve(product, v, scale=10.0, damping=0.1, depth=depth, tol=0.0)
        assert len(product.inputs) == depth + 1
        assert product.alive() <= 1
        assert result.solution.grad_fn is None


# ------------------------------------------------------------- trained models


def trained_mlp(iris_split, depth: int, width: int, seeds: list[int], decay: float,
                epochs: int) -> TrainedBatch:
    """``len(seeds)`` mlp models trained side by side on Iris with full-batch Adam."""
    model, params = MLP(), MLPParams(depth=depth, width=width, activation="tanh")
    n_features, n_classes = iris_split.n_features, iris_split.n_classes
    initial = [model.init(params, n_features, n_classes, torch.Generator().manual_seed(seed))
               for seed in seeds]
    weights = {name: torch.stack([w[name] for w in initial]) for name in initial[0]}
    x = torch.tensor(iris_split.x_train)
    y = torch.tensor(iris_split.y_train)
    mean_weights = torch.full((len(seeds), len(y)), 1 / len(y), dtype=torch.float64)
    settings = FitSettings(epochs=epochs, lr=0.01,
                           weight_decay=torch.full((len(seeds),), decay, dtype=torch.float64))
    result = fit(weights, model.objective(params, x, y, mean_weights), settings)
    return TrainedBatch(
        model=model, model_params=params, weights=result.weights, x_train=x, y_train=y,
        x_test=torch.tensor(iris_split.x_test), y_test=torch.tensor(iris_split.y_test),
        weight_decay=torch.full((len(seeds),), decay, dtype=torch.float64), seeds=seeds,
    )


@pytest.fixture(scope="module")
def trained_wide(iris_split):
    return trained_mlp(iris_split, depth=1, width=8, seeds=[0, 1], decay=0.01, epochs=1000)


@pytest.fixture(scope="module")
def trained_small(iris_split):
    return trained_mlp(iris_split, depth=1, width=3, seeds=[2], decay=0.01, epochs=1000)


CHECKED = np.arange(0, 120, 10)


@pytest.mark.parametrize("normalisation", ["original_n", "remaining"])
@pytest.mark.parametrize(("scope", "fixture", "damping"), [
    ("last_layer", "trained_wide", 0.01),
    ("all", "trained_small", 0.05),
])
def test_lissa_matches_exact(request, scope, fixture, damping, normalisation):
    batch = request.getfixturevalue(fixture)
    points = np.stack([CHECKED] * batch.size)
    exact = Exact().estimate(ExactParams(scope=scope, damping=damping), batch, points,
                             normalisation)
    scale = max(details["max_eigenvalue"] for details in exact.info)

    params = LissaParams(scope=scope, damping=damping, scale=scale, depth=20000, tol=1e-11)
    lissa = Lissa().estimate(params, batch, points, normalisation)

    error = np.abs(lissa.values - exact.values).max() / np.abs(exact.values).max()
    assert error < 1e-6, f"relative error {error:.2e}, details {lissa.info}"
    for details in lissa.info:
        assert details["depth_reached"] < 20000
        assert details["relative_step"] <= 1e-11
        assert details["relative_residual"] < 1e-8


def test_full_size_minibatch_matches_full_batch(trained_wide):
    """A minibatch of all n points is the full Hessian, reached through the sampling path."""
    batch = trained_wide
    points = np.stack([CHECKED] * batch.size)
    full = Lissa().estimate(LissaParams(scale=0.6, damping=0.1), batch, points, "remaining")

    params = LissaParams(scale=0.6, damping=0.1, batch_size=batch.n_train, repeats=2)
    sampled = Lissa().estimate(params, batch, points, "remaining")
    np.testing.assert_allclose(sampled.values, full.values, rtol=1e-8)
    assert [details["repeats"] for details in sampled.info] == [2, 2]
    assert [details["repeats"] for details in full.info] == [1, 1]


def test_minibatch_larger_than_data_rejected(trained_wide):
    n = trained_wide.n_train
    with pytest.raises(IfvalError) as caught:
        Lissa().estimate(LissaParams(batch_size=500), trained_wide, np.array([[0], [1]]),
                         "original_n")
    assert str(caught.value) == (
        f"estimator 'lissa': batch_size 500 exceeds the {n} training points; set it to at most "
        f"{n}, or leave it unset for the full-batch Hessian")


def test_estimator_divergence_names_model(trained_wide):
    with pytest.raises(NumericalError) as caught:
        Lissa().estimate(LissaParams(scale=0.01), trained_wide, np.array([[0], [1]]),
                         "original_n")
    message = str(caught.value)
    assert message.startswith("estimator 'lissa' (scope last_layer, seed 0): the LiSSA "
                              "recursion diverged (scale s=0.01, damping λ=0.01)")


# ------------------------------------------------------------- per-sample gradients


@pytest.fixture(scope="module")
def gradient_problem(trained_small):
    return flat_problem(trained_small, 0, "all"), trained_small.y_train


def test_per_sample_gradients_ignore_chunk_size(gradient_problem):
    problem, labels = gradient_problem
    reference = per_sample_gradients(problem.loss, problem.theta, problem.inputs_train, labels)

    for chunk in (1, 7, 1000):
        chunked = per_sample_gradients(problem.loss, problem.theta, problem.inputs_train,
                                       labels, chunk)
        torch.testing.assert_close(chunked, reference, rtol=1e-12, atol=1e-15)


def test_per_sample_gradients_match_autograd_loop(gradient_problem):
    problem, labels = gradient_problem
    rows = [0, 17, 64, 119]
    gradients = per_sample_gradients(problem.loss, problem.theta, problem.inputs_train[rows],
                                     labels[rows], chunk_size=3)

    for position, row in enumerate(rows):
        theta = problem.theta.clone().requires_grad_()
        loss = problem.loss(theta, problem.inputs_train[row:row + 1], labels[row:row + 1])
        (expected,) = torch.autograd.grad(loss.sum(), theta)
        torch.testing.assert_close(gradients[position], expected, rtol=1e-12, atol=1e-15)


def test_per_sample_gradients_carry_no_reduction(gradient_problem):
    """Their sum is ∇ of the summed loss and their mean is ∇ of the mean loss."""
    problem, labels = gradient_problem
    gradients = per_sample_gradients(problem.loss, problem.theta, problem.inputs_train, labels,
                                     chunk_size=16)
    theta = problem.theta.clone().requires_grad_()
    losses = problem.loss(theta, problem.inputs_train, labels)
    (summed,) = torch.autograd.grad(losses.sum(), theta, retain_graph=True)
    (averaged,) = torch.autograd.grad(losses.mean(), theta)

    torch.testing.assert_close(gradients.sum(dim=0), summed, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(gradients.mean(dim=0), averaged, rtol=1e-10, atol=1e-13)
