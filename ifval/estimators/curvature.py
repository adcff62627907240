"""The factored curvature H + λI of one trained model, shared by the Hessian-based estimators.

H is the float64 Hessian of the training objective (1/n) Σ_j ℓ_j + (w/2)‖θ‖² + R(θ)
over the parameters in scope, where R is the model's penalty (usually zero).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ifval.errors import NumericalError
from ifval.estimators.scope import FlatProblem, flat_problem
from ifval.kinds import TrainedBatch

if TYPE_CHECKING:
    import torch

    from ifval.estimators.exact import ExactParams


@dataclass
class Curvature:
    """Everything about one trained model that the group estimates share.

    ``factor`` is the Cholesky factor of H + λI, ``solved_test`` is
    (H + λI)⁻¹ g_test, ``regulariser_grad`` is r = w θ̂ + ∇R(θ̂) and
    ``regulariser_hessian`` is W = wI + ∇²R(θ̂).
    """

    problem: FlatProblem
    labels_train: torch.Tensor
    labels_test: torch.Tensor
    n: int
    factor: torch.Tensor
    solved_test: torch.Tensor
    regulariser_grad: torch.Tensor
    regulariser_hessian: torch.Tensor
    details: dict[str, Any]

    def mean_objective(self, theta: torch.Tensor) -> torch.Tensor:
        """Return (1/n) Σ ℓ_j + R(θ), the objective without its quadratic weight decay."""
        problem = self.problem
        value = problem.loss(theta, problem.inputs_train, self.labels_train).mean()
        if problem.penalty is not None:
            value = value + problem.penalty(theta)
        return value


def build_curvature(estimator: str, params: ExactParams, batch: TrainedBatch,
                    index: int) -> Curvature:
    """Build H + λI of model ``index`` in float64 and factor it.

    Raises ``NumericalError`` with a damping to try when H + λI is not positive definite.
    """
    import torch
    from torch.func import grad, hessian

    problem = flat_problem(batch, index, params.scope)
    decay = float(batch.weight_decay[index])
    theta = problem.theta
    size = theta.numel()
    y_train, y_test = batch.y_train, batch.y_test

    def mean_train_loss(t: torch.Tensor) -> torch.Tensor:
        return problem.loss(t, problem.inputs_train, y_train).mean()

    hess = hessian(mean_train_loss)(theta)
    identity = torch.eye(size, dtype=theta.dtype)
    regulariser_grad = decay * theta
    regulariser_hessian = decay * identity
    if problem.penalty is not None:
        penalty_hessian = hessian(problem.penalty)(theta)
        hess = hess + penalty_hessian
        regulariser_hessian = regulariser_hessian + penalty_hessian
        regulariser_grad = regulariser_grad + grad(problem.penalty)(theta)
    system = hess + (decay + params.damping) * identity
    system = 0.5 * (system + system.T)
    test_grad = grad(lambda t: problem.loss(t, problem.inputs_test, y_test).mean())(theta)

    # A last-layer cross-entropy Hessian without decay or damping is singular
    # (adding one vector to every class's logit weights changes no
    # probability), and Cholesky can still succeed on the rounding error, so
    # the spectrum is checked first.
    eigenvalues = torch.linalg.eigvalsh(system)
    smallest, largest = float(eigenvalues[0]), float(eigenvalues[-1])
    factor, failure = torch.linalg.cholesky_ex(system)
    if int(failure) != 0 or smallest <= params.rtol * abs(largest):
        raise indefinite_error(estimator, smallest, largest, params, decay, batch.seeds[index])
    solved_test = torch.cholesky_solve(test_grad[:, None], factor)[:, 0]

    details = {"parameters": size, "scope": params.scope, "damping": params.damping,
               "min_eigenvalue": smallest, "max_eigenvalue": largest}
    return Curvature(problem, y_train, y_test, batch.n_train, factor, solved_test,
                     regulariser_grad, regulariser_hessian, details)


def indefinite_error(estimator: str, smallest: float, largest: float, params: ExactParams,
                     decay: float, seed: int) -> NumericalError:
    """Return the error for an H + λI that is not positive definite, with a damping to try."""
    suggestion = params.damping + max(-smallest, 0.0) + 1e-3 * max(abs(largest), 1e-12)
    msg = (
        f"estimator '{estimator}' (scope {params.scope}, seed {seed}): H + λI is not positive "
        f"definite; its smallest eigenvalue is {smallest:.3e} (largest {largest:.3e}, "
        f"weight decay {decay:g}, damping λ={params.damping:g}); set the estimator's "
        f"`damping` to at least {suggestion:.3g}"
    )
    return NumericalError(msg)
