"""Estimator ``exact``: the first-order removal estimate with an explicit Hessian."""

from __future__ import annotations

import logging

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

import ifval
from ifval.estimators.scope import SCOPE_DESCRIPTION, Scope, first_order_values
from ifval.kinds import EstimateResult, Estimator, Normalisation, TrainedBatch

logger = logging.getLogger(__name__)


class ExactParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: Scope = Field("last_layer", description=SCOPE_DESCRIPTION)
    damping: float = Field(0.0, ge=0, description="Tikhonov damping λ added to the Hessian.")
    rtol: float = Field(
        1e-10, gt=0, lt=1,
        description="H + λI counts as not positive definite when its smallest eigenvalue is "
        "at most `rtol` times its largest.",
    )


class Exact(Estimator):
    """Δ̂_i = (1/n) g_testᵀ (H + λI)⁻¹ g_i, built and solved in float64.

    H is the Hessian of (1/n) Σ ℓ_j + (w/2)‖θ‖² + R(θ) over the parameters in
    scope (Koh & Liang 2017, eq. 2 with ε = −1/n), where R is the model's
    penalty (zero for most models). For the ``remaining`` normalisation, a
    retrain on the mean over the n − 1 other points, the prediction is
    (1/(n−1)) g_testᵀ (H + λI)⁻¹ (g_i + w θ̂ + ∇R(θ̂)), which adds the term of
    the optimality condition (1/n) Σ g_j = −(w θ̂ + ∇R(θ̂)). With several test
    points, g_test is the gradient of their mean loss.
    """

    name = "exact"
    description = "First-order removal influence with an explicit float64 Hessian (Cholesky)."
    Params = ExactParams

    supports_groups = True

    def estimate_groups(self, params: ExactParams, batch: TrainedBatch,  # type: ignore[override]
                        groups: np.ndarray, normalisation: Normalisation) -> EstimateResult:
        """First-order estimate for removing each group of m points (see ``first_order_values``)."""
        return self.estimate(params, batch, groups, normalisation)

    def estimate(self, params: ExactParams, batch: TrainedBatch, points: np.ndarray,  # type: ignore[override]
                 normalisation: Normalisation) -> EstimateResult:
        values = np.empty(points.shape[:2], dtype=np.float64)
        info = []
        for index in range(batch.size):
            row, details = self._estimate_one(params, batch, index, points[index], normalisation)
            values[index] = row
            info.append(details)
        return EstimateResult(values, info)

    def _estimate_one(self, params: ExactParams, batch: TrainedBatch, index: int,
                      points: np.ndarray, normalisation: Normalisation) -> tuple[np.ndarray, dict]:
        import torch
        from torch.func import grad, vmap

        from ifval.estimators.curvature import build_curvature

        curvature = build_curvature(self.name, params, batch, index)
        problem = curvature.problem
        chosen = torch.as_tensor(points, dtype=torch.long).reshape(-1)

        def one_loss(theta: torch.Tensor, inputs: torch.Tensor,
                     label: torch.Tensor) -> torch.Tensor:
            return problem.loss(theta, inputs[None], label[None])[0]

        grads = vmap(grad(one_loss), in_dims=(None, 0, 0))(
            problem.theta, problem.inputs_train[chosen], batch.y_train[chosen]
        )
        members = points.shape[1] if points.ndim == 2 else 1
        values = first_order_values(grads, curvature.solved_test, members, batch.n_train,
                                    normalisation, curvature.regulariser_grad)
        return values.detach().numpy(), curvature.details


@ifval.hookimpl
def ifval_estimators() -> list[Estimator]:
    return [Exact()]
