"""Estimators ``group`` and ``second_order``: the effect of removing a group of points at once.

Both build H + λI in float64 as ``exact`` does, where H is the Hessian of the
training objective (1/n) Σ_j ℓ_j + (w/2)‖θ‖² + R(θ) over the parameters in
scope and R is the model's penalty (usually zero). Write g_i for ∇ℓ_i(θ̂),
r = w θ̂ + ∇R(θ̂) for the gradient of the parameter-only terms, and
W = wI + ∇²R(θ̂) for their Hessian. A group U contains m of the n training
points, and p = m/n.

Each retrain is the end (ε = 1) of a path θ(ε) of optima that starts at θ̂
(ε = 0). Along it the removed points' weight falls from 1/n to (1 − ε)/n.
With ``remaining`` the other points' weight also rises from 1/n to
(1 + ε p/(1 − p))/n, which is 1/(n − m) at ε = 1. The first-order estimate is
g_testᵀ θ'(0), and ``second_order`` adds a second-order term.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

import ifval
from ifval.errors import IfvalError
from ifval.estimators.curvature import Curvature, build_curvature
from ifval.estimators.exact import ExactParams
from ifval.kinds import EstimateResult, Estimator, Normalisation, TrainedBatch

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


class GroupParams(ExactParams):
    """Settings of ``group``, the same as those of ``exact``."""


class SecondOrderParams(ExactParams):
    full_taylor: bool = Field(
        False,
        description="Also add the two second-order terms that Basu et al.'s expression leaves "
        "out: −½ g_testᵀ(H + λI)⁻¹ ∇³L[Δθ₁, Δθ₁] (the change of the Hessian along the path) "
        "and ½ Δθ₁ᵀ ∇²ℓ_test Δθ₁ (the curvature of the test loss), so that the estimate is the "
        "complete second-order Taylor polynomial in the removal weight.",
    )


def check_group_size(estimator: str, groups: np.ndarray, n: int) -> None:
    """Raise unless ``groups`` has shape (B, k, m) with 1 ≤ m < n."""
    if groups.ndim != 3:
        msg = (f"estimator '{estimator}': groups must be an integer array of shape (B, k, m), "
               f"got shape {groups.shape}")
        raise IfvalError(msg)
    members = groups.shape[2]
    if not 1 <= members < n:
        msg = (f"estimator '{estimator}': a group of {members} points out of {n} training "
               f"points leaves no data term; use groups of 1 to {n - 1} points")
        raise IfvalError(msg)


def first_order_step(curvature: Curvature, rows: torch.Tensor,
                     normalisation: Normalisation) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the right-hand sides v_U and the first-order changes Δθ₁ = (H + λI)⁻¹ v_U.

    ``rows`` is (k, m). For ``original_n``, v_U = (1/n) Σ_{i∈U} g_i; for
    ``remaining``, v_U = (1/(n − m)) (Σ_{i∈U} g_i + m r). Both are rows of
    the (k, p) results.
    """
    import torch
    from torch.func import grad, vmap

    problem = curvature.problem
    n, members = curvature.n, rows.shape[1]

    def summed_loss(theta: torch.Tensor, inputs: torch.Tensor,
                    labels: torch.Tensor) -> torch.Tensor:
        return problem.loss(theta, inputs, labels).sum()

    summed = vmap(grad(summed_loss), in_dims=(None, 0, 0))(
        problem.theta, problem.inputs_train[rows], curvature.labels_train[rows])
    if normalisation == "original_n":
        rhs = summed / n
    else:
        rhs = (summed + members * curvature.regulariser_grad) / (n - members)
    step = torch.cholesky_solve(rhs.T, curvature.factor).T
    return rhs, step


# ------------------------------------------------------------------------ estimators


class Group(Estimator):
    """Δ̂_U = g_testᵀ Δθ₁, the first-order change for removing the group U at once.

    For ``original_n``, Δθ₁ = (1/n) (H + λI)⁻¹ Σ_{i∈U} g_i, the sum of the
    members' ``exact`` estimates. For ``remaining``,
    Δθ₁ = (1/(n − m)) (H + λI)⁻¹ (Σ_{i∈U} g_i + m (w θ̂ + ∇R(θ̂))), the
    derivative at ε = 0 along the path in the module docstring: the optimality
    condition (1/n) Σ_j g_j = −(w θ̂ + ∇R(θ̂)) turns the renormalised data term
    into this right-hand side. With m = 1 both are ``exact``'s estimates.
    """

    name = "group"
    description = "First-order influence of removing a group of points at once (float64 Hessian)."
    Params = GroupParams

    supports_groups = True

    def estimate(self, params: GroupParams, batch: TrainedBatch, points: np.ndarray,  # type: ignore[override]
                 normalisation: Normalisation) -> EstimateResult:
        return self.estimate_groups(params, batch, points[..., None], normalisation)

    def estimate_groups(self, params: GroupParams, batch: TrainedBatch,  # type: ignore[override]
                        groups: np.ndarray, normalisation: Normalisation) -> EstimateResult:
        import torch

        check_group_size(self.name, groups, batch.n_train)
        values = np.empty(groups.shape[:2], dtype=np.float64)
        info = []
        for index in range(batch.size):
            curvature = build_curvature(self.name, params, batch, index)
            rows = torch.as_tensor(groups[index], dtype=torch.long)
            rhs, _ = first_order_step(curvature, rows, normalisation)
            values[index] = (rhs @ curvature.solved_test).detach().numpy()
            info.append({**curvature.details, "group_size": int(groups.shape[2])})
        return EstimateResult(values, info)


class SecondOrder(Estimator):
    """Second-order group influence of Basu, You & Feizi (ICML 2020, arXiv:1911.00418).

    Δ̂_U = g_testᵀ (Δθ₁ + Δθ₂), first order in the test loss as in the paper,
    where Δθ₁ is ``group``'s first-order change and Δθ₂ the second-order term
    of θ(ε) at ε = 1 along the path in the module docstring, with the
    third derivative of the objective left out. With K = (H + λI)⁻¹:

    ``remaining`` (the paper's setting, the other points renormalised by
    1/(1 − p)): put ℓ̃_i = ℓ_i + (w/2)‖θ‖² + R, so that both objectives are
    plain means of ℓ̃ as in the paper, with g̃_i = g_i + r and H̃_i = ∇²ℓ_i + W.
    The paper's I⁽¹⁾ + I⁽²⁾ is then

        Δθ₁ + Δθ₂ = (1 − 2p)/(1 − p)² · (1/n) K Σ_{i∈U} g̃_i
                    + 1/(1 − p)² · (1/n²) K (Σ_{i∈U} H̃_i) K Σ_{i∈U} g̃_i
                  = (1 − 2p)/(1 − p) · Δθ₁ + (1/(n − m)) K (Σ_{i∈U} ∇²ℓ_i + m W) Δθ₁.

    ``original_n`` (no renormalisation): the same expansion of the
    optimality condition ∇L(θ) − (ε/n) Σ_{i∈U} ∇ℓ_i(θ) = 0 gives

        Δθ₁ + Δθ₂ = Δθ₁ + (1/n) K (Σ_{i∈U} ∇²ℓ_i) Δθ₁,

    the paper's expression with p = 0 in its coefficients and g_i, ∇²ℓ_i in
    place of g̃_i, H̃_i. The per-group Hessians are applied as Hessian-vector
    products of Σ_{i∈U} ℓ_i with torch.func, in float64; no Σ ∇²ℓ_i matrix is
    formed. With m = 1 the estimate differs from ``group``'s by O(1/n²).

    With λ > 0, K takes the place of the inverse Hessian throughout, as in ``exact``.

    Source: the coefficients (1 − 2p)/(1 − p)² and 1/(1 − p)² are those of the
    paper's I⁽¹⁾ and I′ as restated in the documentation of deel-ai/influenciae
    (``SecondOrderInfluenceCalculator``). The expressions above were derived
    from the weighted optimality condition, and they agree with that restatement.
    NOTE: they were not checked against the paper's own equations, whose
    numbers are therefore not given.

    The expression leaves out −½ K ∇³L[Δθ₁, Δθ₁], which is of the same order
    as the term kept, so it is the exact second-order term only where the
    third derivative of the objective L vanishes (quadratic losses).
    ``full_taylor`` adds that term and ½ Δθ₁ᵀ ∇²ℓ_test Δθ₁, which makes the
    estimate the complete second-order Taylor polynomial of the test loss in ε
    (for λ = 0).
    """

    name = "second_order"
    description = ("Second-order group influence (Basu, You & Feizi 2020) with an explicit "
                   "float64 Hessian.")
    Params = SecondOrderParams

    supports_groups = True

    def estimate(self, params: SecondOrderParams, batch: TrainedBatch,  # type: ignore[override]
                 points: np.ndarray, normalisation: Normalisation) -> EstimateResult:
        return self.estimate_groups(params, batch, points[..., None], normalisation)

    def estimate_groups(self, params: SecondOrderParams, batch: TrainedBatch,  # type: ignore[override]
                        groups: np.ndarray, normalisation: Normalisation) -> EstimateResult:
        check_group_size(self.name, groups, batch.n_train)
        values = np.empty(groups.shape[:2], dtype=np.float64)
        info = []
        for index in range(batch.size):
            curvature = build_curvature(self.name, params, batch, index)
            row, details = self._estimate_one(params, curvature, groups[index], normalisation)
            values[index] = row
            info.append({**curvature.details, **details})
        return EstimateResult(values, info)

    def _estimate_one(self, params: SecondOrderParams, curvature: Curvature, groups: np.ndarray,
                      normalisation: Normalisation) -> tuple[np.ndarray, dict[str, Any]]:
        import torch

        rows = torch.as_tensor(groups, dtype=torch.long)
        n, members = curvature.n, rows.shape[1]
        rhs, step = first_order_step(curvature, rows, normalisation)
        first = rhs @ curvature.solved_test

        curved = group_hessian_products(curvature, rows, step)
        if normalisation == "original_n":
            second = curved @ curvature.solved_test / n
            values = first + second
        else:
            curved = curved + members * step @ curvature.regulariser_hessian.T
            second = curved @ curvature.solved_test / (n - members)
            values = (n - 2 * members) / (n - members) * first + second

        details: dict[str, Any] = {"group_size": int(members), "full_taylor": params.full_taylor}
        if params.full_taylor:
            objective_change, test_curvature = taylor_terms(curvature, step)
            values = values - 0.5 * objective_change @ curvature.solved_test
            values = values + 0.5 * (step * test_curvature).sum(dim=1)
        return values.detach().numpy(), details


def group_hessian_products(curvature: Curvature, rows: torch.Tensor,
                           vectors: torch.Tensor) -> torch.Tensor:
    """Return (Σ_{i∈U_j} ∇²ℓ_i) v_j for each group j, from Hessian-vector products; (k, p)."""
    from torch.func import grad, jvp, vmap

    problem = curvature.problem

    def product(inputs: torch.Tensor, labels: torch.Tensor,
                vector: torch.Tensor) -> torch.Tensor:
        def summed_loss(theta: torch.Tensor) -> torch.Tensor:
            return problem.loss(theta, inputs, labels).sum()

        return jvp(grad(summed_loss), (problem.theta,), (vector,))[1]

    return vmap(product)(problem.inputs_train[rows], curvature.labels_train[rows], vectors)


def taylor_terms(curvature: Curvature, steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ∇³L[u, u] and ∇²ℓ_test u for each row u of ``steps``, both (k, p).

    L is the training objective. Its weight decay is quadratic, so only the mean
    loss and the model's penalty have a third derivative.
    NOTE: the third derivative is vmapped over all k groups at once through the
    whole training set, so its memory grows with k·n.
    """
    from torch.func import grad, jvp, vmap

    problem = curvature.problem
    theta = problem.theta

    def objective_hvp(point: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        return jvp(grad(curvature.mean_objective), (point,), (vector,))[1]

    def third(vector: torch.Tensor) -> torch.Tensor:
        return jvp(lambda point: objective_hvp(point, vector), (theta,), (vector,))[1]

    def test_loss(point: torch.Tensor) -> torch.Tensor:
        return problem.loss(point, problem.inputs_test, curvature.labels_test).mean()

    def test_hvp(vector: torch.Tensor) -> torch.Tensor:
        return jvp(grad(test_loss), (theta,), (vector,))[1]

    return vmap(third)(steps), vmap(test_hvp)(steps)


@ifval.hookimpl
def ifval_estimators() -> list[Estimator]:
    return [Group(), SecondOrder()]
