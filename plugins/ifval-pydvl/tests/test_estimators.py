"""The pyDVL estimators against ifval's ``exact`` and against independent computations.

References: the ``exact`` estimator (an explicit float64 Hessian and a
Cholesky solve, ifval's own code, not pyDVL's), ``torch.linalg.eigh`` of that
Hessian for the low-rank Arnoldi values, and EK-FAC's Kronecker factors
rebuilt here from their definition for the last layer.
"""

from __future__ import annotations

import dataclasses
import logging
import re

import numpy as np
import pytest
import torch
from ifval_pydvl.estimators import (
    ArnoldiParams,
    CgParams,
    DirectParams,
    EkfacParams,
    PydvlArnoldi,
    PydvlCg,
    PydvlDirect,
    PydvlEkfac,
)
from pydantic import ValidationError
from torch.func import hessian

from ifval.errors import IfvalError, NumericalError
from ifval.estimators.exact import Exact, ExactParams
from ifval.estimators.lissa import per_sample_gradients
from ifval.estimators.scope import flat_problem
from ifval.models.mlp import MLP

DAMPING = {"last_layer": 0.01, "last_layer_weights": 0.01, "all": 0.05}
"""λ per scope. With weight decay 0.01, every H + λI is positive definite (the
smallest eigenvalue of the all-parameter Hessian is about −0.01)."""

NORMALISATIONS = ["original_n", "remaining"]


def relative_error(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Return the largest absolute difference divided by the largest reference magnitude."""
    return float(np.abs(estimate - reference).max() / np.abs(reference).max())


def exact_values(batch, points, scope, normalisation):
    params = ExactParams(scope=scope, damping=DAMPING[scope])
    return Exact().estimate(params, batch, points, normalisation)


def mean_hessian(problem, labels) -> torch.Tensor:
    """Hessian of the mean training loss, without weight decay: pyDVL's H_D."""
    return hessian(lambda t: problem.loss(t, problem.inputs_train, labels).mean())(problem.theta)


def removal_vectors(batch, index, scope, points, normalisation):
    """Return u_i with Δ_i = sᵀ u_i / N for s = (H + λI)⁻¹ g_test, and N, g_test."""
    problem = flat_problem(batch, index, scope)
    rows = torch.as_tensor(points, dtype=torch.long)
    grads = per_sample_gradients(problem.loss, problem.theta, problem.inputs_train[rows],
                                 batch.y_train[rows])
    test_grad = torch.func.grad(
        lambda t: problem.loss(t, problem.inputs_test, batch.y_test).mean())(problem.theta)
    if normalisation == "original_n":
        return grads, batch.n_train, test_grad
    decay = float(batch.weight_decay[index])
    return grads + decay * problem.theta, batch.n_train - 1, test_grad


# ------------------------------------------------------------------------- direct


@pytest.mark.parametrize("normalisation", NORMALISATIONS)
@pytest.mark.parametrize("scope", ["last_layer", "last_layer_weights", "all"])
def test_direct_matches_exact(trained, points, scope, normalisation):
    exact = exact_values(trained, points, scope, normalisation)

    params = DirectParams(scope=scope, damping=DAMPING[scope])
    direct = PydvlDirect().estimate(params, trained, points, normalisation)

    # Both solve the same explicit float64 system, so only rounding separates them
    # (measured: at most 1e-15 relative on these models).
    error = relative_error(direct.values, exact.values)
    assert error < 1e-9, f"relative error {error:.2e}"
    assert direct.values.shape == points.shape
    for ours, theirs in zip(direct.info, exact.info, strict=True):
        assert ours["min_eigenvalue"] == pytest.approx(theirs["min_eigenvalue"], rel=1e-8)
        assert ours["regularization"] == pytest.approx(0.01 + DAMPING[scope])


def test_direct_sign_and_scale_by_hand(trained, points):
    """One value from first principles: (1/n) g_testᵀ (H_D + (w + λ) I)⁻¹ g_i."""
    problem = flat_problem(trained, 0, "last_layer")
    system = mean_hessian(problem, trained.y_train) + 0.02 * torch.eye(problem.theta.numel(),
                                                                       dtype=torch.float64)
    grads, n, test_grad = removal_vectors(trained, 0, "last_layer", points[0], "original_n")
    expected = (grads @ torch.linalg.solve(system, test_grad) / n).numpy()

    params = DirectParams(scope="last_layer", damping=0.01)
    direct = PydvlDirect().estimate(params, trained, points, "original_n")

    np.testing.assert_allclose(direct.values[0], expected, rtol=1e-9)


def test_direct_singular_hessian_raises(trained, points):
    # Without weight decay or damping, the last-layer cross-entropy Hessian is singular:
    # adding one vector to every class's weights changes no probability.
    undecayed = dataclasses.replace(trained, weight_decay=torch.zeros(trained.size,
                                                                      dtype=torch.float64))
    params = DirectParams(scope="last_layer", damping=0.0)

    with pytest.raises(NumericalError) as caught:
        PydvlDirect().estimate(params, undecayed, points, "original_n")

    message = str(caught.value)
    assert "estimator 'pydvl_direct' (scope last_layer, seed 0): H + λI is not positive " \
           "definite" in message
    assert "regularization w + λ = 0" in message
    assert re.search(r"set the estimator's `damping` to at least \d", message)


@pytest.mark.parametrize("normalisation", NORMALISATIONS)
@pytest.mark.parametrize("estimator", [PydvlDirect(), PydvlCg()])
def test_groups_match_exact(trained, estimator, normalisation):
    """Groups of 4 rows against ``exact``'s first-order group estimate."""
    rng = np.random.default_rng(3)
    groups = np.stack([np.stack([rng.choice(trained.n_train, size=4, replace=False)
                                 for _ in range(5)]) for _ in range(trained.size)])
    exact = Exact().estimate_groups(ExactParams(damping=0.01), trained, groups, normalisation)

    ours = estimator.estimate_groups(estimator.Params(damping=0.01), trained, groups,
                                     normalisation)

    assert ours.values.shape == (trained.size, 5)
    error = relative_error(ours.values, exact.values)
    assert error < 1e-9, f"relative error {error:.2e}"


# ----------------------------------------------------------------------------- cg


@pytest.mark.parametrize("normalisation", NORMALISATIONS)
@pytest.mark.parametrize("scope", ["last_layer", "all"])
def test_cg_within_residual_bound_of_exact(trained, points, scope, normalisation):
    """CG's error is bounded by its stopping residual over the smallest eigenvalue.

    pyDVL 0.10 stops CG once the residual norm is below
    τ = max(rtol² |b₁|, atol²) ≤ max(rtol² ‖b‖∞, atol²), with b = g_test. Then
    ‖s_cg − s‖ ≤ ‖r‖ / μ_min(H + λI), so |Δ_cg,i − Δ_i| ≤ ‖u_i‖ τ / (μ_min N).
    The term 1e-10 ‖b‖ allows for CG's recursive residual drifting from the
    true one by rounding.
    """
    exact = exact_values(trained, points, scope, normalisation)
    params = CgParams(scope=scope, damping=DAMPING[scope])

    cg = PydvlCg().estimate(params, trained, points, normalisation)

    for index in range(trained.size):
        vectors, count, test_grad = removal_vectors(trained, index, scope, points[index],
                                                    normalisation)
        b_norm = float(torch.linalg.vector_norm(test_grad))
        tau = max(params.rtol**2 * float(test_grad.abs().max()), params.atol**2)
        smallest = exact.info[index]["min_eigenvalue"]
        bound = (torch.linalg.vector_norm(vectors, dim=1).numpy() * (tau + 1e-10 * b_norm)
                 / (smallest * count))
        difference = np.abs(cg.values[index] - exact.values[index])
        assert (difference <= bound).all(), f"differences {difference} exceed bounds {bound}"
        assert cg.info[index]["solver_warnings"] == 0
    # Measured on these models: at most 3e-11 relative with pyDVL's default tolerances.
    assert relative_error(cg.values, exact.values) < 1e-6


def test_cg_iteration_limit_logs_warning(trained, points, caplog):
    params = CgParams(scope="last_layer", damping=0.01, maxiter=1)

    with caplog.at_level(logging.WARNING, logger="ifval_pydvl.estimators"):
        cg = PydvlCg().estimate(params, trained, points, "original_n")

    assert "estimator 'pydvl_cg' (scope last_layer, seed 0): pyDVL warned: Reached max " \
           "number of iterations maxiter=1" in caplog.text
    assert [details["solver_warnings"] for details in cg.info] == [1, 1]


# ------------------------------------------------------------------------ arnoldi


@pytest.mark.parametrize("normalisation", NORMALISATIONS)
@pytest.mark.parametrize("scope", ["last_layer", "all"])
def test_arnoldi_full_rank_matches_exact(trained, points, scope, normalisation):
    exact = exact_values(trained, points, scope, normalisation)
    params = ArnoldiParams(scope=scope, damping=DAMPING[scope], rank=1000)

    arnoldi = PydvlArnoldi().estimate(params, trained, points, normalisation)

    # pyDVL keeps p − 1 eigenpairs, and the one dropped is a null direction of the
    # cross-entropy Hessian, orthogonal to every per-sample gradient. ARPACK's relative
    # tolerance 1e-6 bounds the rest (measured: 1e-15).
    error = relative_error(arnoldi.values, exact.values)
    assert error < 1e-6, f"relative error {error:.2e}"
    assert [details["rank"] for details in arnoldi.info] == [
        details["parameters"] - 1 for details in arnoldi.info]


@pytest.mark.parametrize("scope", ["last_layer", "all"])
def test_arnoldi_low_rank_matches_truncated_eigh(trained, points, scope):
    """Rank 3 against V (D + w + λ)⁻¹ Vᵀ from ``torch.linalg.eigh``, and its error against exact."""
    rank, damping = 3, DAMPING[scope]
    params = ArnoldiParams(scope=scope, damping=damping, rank=rank)
    low = PydvlArnoldi().estimate(params, trained, points, "original_n")
    full = PydvlArnoldi().estimate(params.model_copy(update={"rank": 1000}), trained, points,
                                   "original_n")
    exact = exact_values(trained, points, scope, "original_n")

    for index in range(trained.size):
        problem = flat_problem(trained, index, scope)
        eigenvalues, eigenvectors = torch.linalg.eigh(mean_hessian(problem, trained.y_train))
        top = eigenvalues.abs().argsort(descending=True)[:rank]
        values, vectors = eigenvalues[top], eigenvectors[:, top]
        grads, count, test_grad = removal_vectors(trained, index, scope, points[index],
                                                  "original_n")
        regularization = float(trained.weight_decay[index]) + damping
        solved = vectors @ ((vectors.T @ test_grad) / (values + regularization))
        expected = (grads @ solved / count).numpy()
        np.testing.assert_allclose(low.values[index], expected, rtol=1e-6,
                                   atol=1e-9 * np.abs(expected).max())

    low_error = relative_error(low.values, exact.values)
    full_error = relative_error(full.values, exact.values)
    # Measured: 6e-3 (last_layer) and 0.3 (all) at rank 3, against 1e-15 at full rank.
    assert low_error > 1e-3
    assert low_error > 1000 * full_error


def test_arnoldi_woodbury_without_regularization_raises(trained, points):
    undecayed = dataclasses.replace(trained, weight_decay=torch.zeros(trained.size,
                                                                      dtype=torch.float64))
    params = ArnoldiParams(damping=0.0, use_woodbury=True)

    with pytest.raises(IfvalError, match=re.escape(
            "estimator 'pydvl_arnoldi' (scope last_layer, seed 0): use_woodbury needs weight "
            "decay + damping > 0, got 0; set `damping` above 0 or `use_woodbury` to false")):
        PydvlArnoldi().estimate(params, undecayed, points, "original_n")


def test_arnoldi_invalid_krylov_dimension_raises(trained, points):
    params = ArnoldiParams(damping=0.01, rank=10, krylov_dimension=5)

    with pytest.raises(IfvalError, match=re.escape(
            "estimator 'pydvl_arnoldi' (scope last_layer, seed 0): krylov_dimension 5 is "
            "invalid for rank 10 and 27 parameters; ARPACK needs rank < krylov_dimension <= "
            "parameters, so set it between 11 and 27, or to null")):
        PydvlArnoldi().estimate(params, trained, points, "original_n")


# -------------------------------------------------------------------------- ekfac


def ekfac_reference(batch, index, points, regularization, normalisation) -> np.ndarray:
    """EK-FAC of one affine layer with pyDVL 0.10's curvature, built from its definition.

    With layer input ã = [a, 1] and v = ∂/∂logits Σ_c √p_c log p_c (√p_c held
    fixed), which is what pyDVL backpropagates: A = mean ã ãᵀ = Q_A diag Q_Aᵀ,
    G = mean v vᵀ = Q_G diag Q_Gᵀ, and the corrected eigenvalues
    Λ_jk = mean (Q_Gᵀ v)_j² (Q_Aᵀ ã)_k². A gradient Γ (classes × inputs) is
    solved as Q_G [(Q_Gᵀ Γ Q_A) / (Λ + r)] Q_Aᵀ.
    """
    problem = flat_problem(batch, index, "last_layer")
    weight = batch.weights["out.weight"][index]
    bias = batch.weights["out.bias"][index]

    def layer_inputs(features):
        return torch.cat([features, torch.ones(len(features), 1, dtype=torch.float64)], dim=1)

    def gradients(features, labels):
        probabilities = torch.softmax(features @ weight + bias, dim=1)
        residual = probabilities - torch.nn.functional.one_hot(labels, 3)
        return residual[:, :, None] * layer_inputs(features)[:, None, :]

    inputs = layer_inputs(problem.inputs_train)
    probabilities = torch.softmax(problem.inputs_train @ weight + bias, dim=1)
    roots = probabilities.sqrt()
    v = roots - probabilities * roots.sum(dim=1, keepdim=True)
    n = len(inputs)
    _, basis_a = torch.linalg.eigh(inputs.T @ inputs / n)
    _, basis_g = torch.linalg.eigh(v.T @ v / n)
    corrected = ((v @ basis_g) ** 2).T @ ((inputs @ basis_a) ** 2) / n

    test_gradient = gradients(problem.inputs_test, batch.y_test).mean(dim=0)
    rotated = basis_g.T @ test_gradient @ basis_a / (corrected + regularization)
    solved = basis_g @ rotated @ basis_a.T
    rows = torch.as_tensor(points, dtype=torch.long)
    vectors = gradients(problem.inputs_train[rows], batch.y_train[rows])
    count = n
    if normalisation == "remaining":
        theta = torch.cat([weight.T, bias[:, None]], dim=1)
        vectors = vectors + float(batch.weight_decay[index]) * theta
        count = n - 1
    return (torch.einsum("ijk,jk->i", vectors, solved) / count).numpy()


@pytest.mark.parametrize("normalisation", NORMALISATIONS)
def test_ekfac_matches_kronecker_reference(trained, points, normalisation):
    params = EkfacParams(scope="last_layer", damping=0.01)

    ekfac = PydvlEkfac().estimate(params, trained, points, normalisation)

    for index in range(trained.size):
        expected = ekfac_reference(trained, index, points[index], 0.02, normalisation)
        np.testing.assert_allclose(ekfac.values[index], expected, rtol=1e-8)


@pytest.mark.parametrize("scope", ["last_layer", "all"])
def test_ekfac_ranks_points_like_exact(trained, points, scope):
    params = EkfacParams(scope=scope, damping=DAMPING[scope])
    ekfac = PydvlEkfac().estimate(params, trained, points, "original_n")
    exact = exact_values(trained, points, scope, "original_n")

    # pyDVL's curvature is not the Hessian, so magnitudes differ (measured: 2.7 relative
    # for last_layer, 7.4 for all), while the order of the points mostly survives.
    for index in range(trained.size):
        correlation = np.corrcoef(ekfac.values[index], exact.values[index])[0, 1]
        assert correlation > 0.95, f"model {index}: Pearson correlation {correlation:.3f}"
    assert relative_error(ekfac.values, exact.values) > 0.1


def test_ekfac_rejects_last_layer_weights(trained, points):
    params = EkfacParams(scope="last_layer_weights", damping=0.01)

    with pytest.raises(IfvalError, match=re.escape(
            "estimator 'pydvl_ekfac': scope 'last_layer_weights' is not supported, because "
            "pyDVL 0.10's EK-FAC assumes every linear layer has a bias")):
        PydvlEkfac().estimate(params, trained, points, "original_n")


class ReshapedMLP(MLP):
    """An MLP whose features pyDVL cannot see as a stack of linear layers."""

    name = "reshaped_mlp"

    def features(self, params, weights, x):  # type: ignore[no-untyped-def,override]
        return super().features(params, weights, x) * 1.0


def test_ekfac_all_scope_needs_mlp(trained, points):
    reshaped = dataclasses.replace(trained, model=ReshapedMLP())

    with pytest.raises(IfvalError, match=re.escape(
            "estimator 'pydvl_ekfac': scope 'all' needs a model built only from linear layers, "
            "which ifval knows only for the model 'mlp', not 'reshaped_mlp'")):
        PydvlEkfac().estimate(EkfacParams(scope="all"), reshaped, points, "original_n")
    last_layer = PydvlEkfac().estimate(EkfacParams(scope="last_layer", damping=0.01), reshaped,
                                       points, "original_n")
    assert np.isfinite(last_layer.values).all()


# ------------------------------------------------------------------------ penalty


class PenalisedMLP(MLP):
    """An MLP with an L2 penalty in its objective, which pyDVL's Hessian cannot include."""

    name = "penalised_mlp"

    def penalty(self, params, weights):  # type: ignore[no-untyped-def,override]
        return 0.5 * sum((w.reshape(w.shape[0], -1) ** 2).sum(dim=1) for w in weights.values())


@pytest.mark.parametrize("estimator", [PydvlDirect(), PydvlCg(), PydvlArnoldi()])
def test_model_with_penalty_raises(trained, points, estimator):
    penalised = dataclasses.replace(trained, model=PenalisedMLP())

    with pytest.raises(IfvalError, match=re.escape(
            f"estimator {estimator.name!r}: model 'penalised_mlp' adds a penalty term to its "
            "objective (Model.penalty)")):
        estimator.estimate(estimator.Params(damping=0.01), penalised, points, "original_n")


def test_ekfac_model_with_penalty_raises(trained, points):
    penalised = dataclasses.replace(trained, model=PenalisedMLP())

    with pytest.raises(IfvalError, match=re.escape(
            "estimator 'pydvl_ekfac': model 'penalised_mlp' overrides its head, loss or "
            "penalty")):
        PydvlEkfac().estimate(EkfacParams(damping=0.01), penalised, points, "original_n")


# ------------------------------------------------------------------------- params


@pytest.mark.parametrize("estimator", [PydvlDirect(), PydvlCg(), PydvlArnoldi(), PydvlEkfac()])
def test_params_reject_unknown_and_negative(estimator):
    with pytest.raises(ValidationError, match="extra_forbidden"):
        estimator.parse_params({"dampng": 0.1})
    with pytest.raises(ValidationError, match="greater_than_equal"):
        estimator.parse_params({"damping": -1.0})
    for name, field in estimator.Params.model_fields.items():
        assert field.description, f"{estimator.name}: field {name} has no description"
