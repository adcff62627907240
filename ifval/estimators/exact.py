"""Estimator ``exact``: the first-order removal estimate with an explicit Hessian."""

from __future__ import annotations

import logging

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

import ifval
from ifval.errors import NumericalError
from ifval.estimators.scope import SCOPE_DESCRIPTION, Scope, first_order_values, flat_problem
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
        from torch.func import grad, hessian, vmap

        problem = flat_problem(batch, index, params.scope)
        decay = float(batch.weight_decay[index])
        n = batch.n_train
        y_train = batch.y_train
        chosen = torch.as_tensor(points, dtype=torch.long).reshape(-1)

        def mean_train_loss(theta: torch.Tensor) -> torch.Tensor:
            return problem.loss(theta, problem.inputs_train, y_train).mean()

        def one_loss(theta: torch.Tensor, inputs: torch.Tensor,
                     label: torch.Tensor) -> torch.Tensor:
            return problem.loss(theta, inputs[None], label[None])[0]

        theta = problem.theta
        hess = hessian(mean_train_loss)(theta)
        # ∇ of the parameter-only part of the objective at θ̂: w θ̂ plus the model's penalty.
        regulariser_grad = decay * theta
        if problem.penalty is not None:
            hess = hess + hessian(problem.penalty)(theta)
            regulariser_grad = regulariser_grad + grad(problem.penalty)(theta)
        size = theta.numel()
        system = hess + (decay + params.damping) * torch.eye(size, dtype=theta.dtype)
        system = 0.5 * (system + system.T)
        grads = vmap(grad(one_loss), in_dims=(None, 0, 0))(
            theta, problem.inputs_train[chosen], y_train[chosen]
        )
        test_grad = grad(lambda t: problem.loss(t, problem.inputs_test, batch.y_test).mean())(theta)

        # A last-layer cross-entropy Hessian without decay or damping is singular
        # (adding one vector to every class's logit weights changes no
        # probability), and Cholesky can still succeed on the rounding error, so
        # the spectrum is checked first.
        eigenvalues = torch.linalg.eigvalsh(system)
        smallest, largest = float(eigenvalues[0]), float(eigenvalues[-1])
        factor, failure = torch.linalg.cholesky_ex(system)
        if int(failure) != 0 or smallest <= params.rtol * abs(largest):
            raise self._indefinite_error(smallest, largest, params, decay, batch.seeds[index])
        solved = torch.cholesky_solve(test_grad[:, None], factor)[:, 0]

        members = points.shape[1] if points.ndim == 2 else 1
        values = first_order_values(grads, solved, members, n, normalisation, regulariser_grad)
        details = {"parameters": size, "scope": params.scope, "damping": params.damping,
                   "min_eigenvalue": smallest, "max_eigenvalue": largest}
        return values.detach().numpy(), details

    @staticmethod
    def _indefinite_error(smallest: float, largest: float, params: ExactParams, decay: float,
                          seed: int) -> NumericalError:
        suggestion = params.damping + max(-smallest, 0.0) + 1e-3 * max(abs(largest), 1e-12)
        msg = (
            f"estimator 'exact' (scope {params.scope}, seed {seed}): H + λI is not positive "
            f"definite; its smallest eigenvalue is {smallest:.3e} (largest {largest:.3e}, "
            f"weight decay {decay:g}, damping λ={params.damping:g}); set the estimator's "
            f"`damping` to at least {suggestion:.3g}"
        )
        return NumericalError(msg)


@ifval.hookimpl
def ifval_estimators() -> list[Estimator]:
    return [Exact()]
