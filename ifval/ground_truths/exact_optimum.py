"""Ground truth ``exact_optimum``: the leave-one-out optimum of the last layer, solved by Newton.

With the features fixed and weight decay w > 0, the last-layer objective
Σ_i a_i ℓ_i(θ) + (w/2)‖θ‖² (cross-entropy ℓ) is strictly convex, so its
minimiser is unique and Newton's method with a backtracking line search
reaches it to machine precision in a few steps. This separates the error of
an influence approximation from the error of a retraining procedure.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

import ifval
from ifval.errors import IfvalError
from ifval.ground_truths.weights import removal_weights
from ifval.kinds import GroundTruth, Normalisation, TrainedBatch, TruthResult
from ifval.settings import Real

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


class ExactOptimumParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    normalisation: Normalisation = Field(
        "original_n",
        description="`original_n`: data term (1/n) Σ_{j≠i} ℓ_j; `remaining`: mean over the "
        "n − 1 remaining points.",
    )
    tol: Real = Field(1e-9, gt=0, description="Stop when every gradient norm is below this.")
    max_iter: int = Field(50, ge=1, strict=True, description="Newton steps at most.")


class ExactOptimum(GroundTruth):
    """ℓ(z_test, θ*_{-i}) − ℓ(z_test, θ*) for the exact last-layer optima θ* and θ*_{-i}.

    Newton's method is chosen over L-BFGS because the last layer has at most a
    few hundred parameters, so the Hessian is cheap to form and solve, and
    Newton's quadratic convergence gives machine-precision optima in under
    ten steps. Both optima start at θ̂'s last layer; θ* is the full-data
    optimum with the same fixed features, and its distance from θ̂ in test
    loss is stored as ``baseline_drift``.
    """

    name = "exact_optimum"
    description = "Exact leave-one-out optimum of the last layer (Newton, float64); needs w > 0."
    Params = ExactOptimumParams

    def normalisation(self, params: ExactOptimumParams) -> Normalisation:  # type: ignore[override]
        return params.normalisation

    supports_groups = True

    def measure_groups(self, params: ExactOptimumParams, batch: TrainedBatch,  # type: ignore[override]
                       groups: np.ndarray) -> TruthResult:
        """Remove each group of m points at once; the same procedure as :meth:`measure`."""
        return self.measure(params, batch, groups)

    def measure(self, params: ExactOptimumParams, batch: TrainedBatch,  # type: ignore[override]
                points: np.ndarray) -> TruthResult:
        import torch

        self._check_convex(batch)
        model, model_params = batch.model, batch.model_params
        weight_name, bias_name = model.last_layer_names(model_params)
        size, k = points.shape[:2]
        n = batch.n_train
        with torch.no_grad():
            feats = model.features(model_params, batch.weights, batch.x_train).double()
            feats_test = model.features(model_params, batch.weights, batch.x_test).double()
        ones = torch.ones(*feats.shape[:2], 1, dtype=torch.float64)
        augmented = torch.cat([feats, ones], dim=2)
        augmented_test = torch.cat([feats_test, torch.ones(*feats_test.shape[:2], 1,
                                                           dtype=torch.float64)], dim=2)
        start = torch.cat([batch.weights[weight_name], batch.weights[bias_name][:, None]],
                          dim=1).double()

        values = np.empty((size, k))
        diagnostics: list[list[dict]] = []
        weights = removal_weights(points, n, params.normalisation, torch.float64)
        for b in range(size):
            keep = weights[b]
            decay = float(batch.weight_decay[b])
            theta, grad_norm, steps = newton(augmented[b], batch.y_train, keep,
                                             start[b].expand(k + 1, -1, -1).clone(), decay,
                                             params.tol, params.max_iter)
            test = mean_test_losses(augmented_test[b], batch.y_test, theta)
            with torch.no_grad():
                logits = augmented_test[b] @ start[b]
                at_start = torch.nn.functional.cross_entropy(logits, batch.y_test)
            values[b] = (test[:k] - test[k]).numpy()
            drift = float(test[k] - at_start)
            diagnostics.append([
                {"grad_norm": float(grad_norm[j]), "newton_steps": steps,
                 "distance_from_optimum": float((theta[j] - theta[k]).norm()),
                 "baseline_drift": drift}
                for j in range(k)
            ])
            if float(grad_norm.max()) > params.tol:
                logger.warning("exact_optimum: seed %s stopped after %d Newton steps with "
                               "gradient norm %.3g above tol %.3g", batch.seeds[b], steps,
                               float(grad_norm.max()), params.tol)
        return TruthResult(values, diagnostics)

    @staticmethod
    def _check_convex(batch: TrainedBatch) -> None:
        if not batch.model.has_affine_head:
            msg = (f"ground truth 'exact_optimum' needs an affine last layer with the "
                   f"cross-entropy loss and no extra penalty, but model {batch.model.name!r} "
                   f"defines its own head, loss or penalty; use retrain_from_optimum")
            raise IfvalError(msg)
        decays = batch.weight_decay.tolist()
        if min(decays) <= 0:
            msg = ("ground truth 'exact_optimum' needs weight decay w > 0: without it the "
                   "last-layer cross-entropy problem is not strictly convex and has no unique "
                   f"optimum (found w = {min(decays):g}); set training.weight_decay, or use "
                   "retrain_from_optimum")
            raise IfvalError(msg)


def objective(features: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor,
              theta: torch.Tensor, decay: float) -> torch.Tensor:
    """Σ_i a_ri ℓ_i + (w/2)‖θ_r‖² for problems r; θ of shape ``(R, h+1, C)``."""
    import torch

    log_probs = torch.log_softmax(features @ theta, dim=-1)
    losses = -log_probs.gather(2, labels.expand(theta.shape[0], -1)[..., None])[..., 0]
    return (keep * losses).sum(dim=1) + 0.5 * decay * theta.pow(2).sum(dim=(1, 2))


def newton(features: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor,
           theta: torch.Tensor, decay: float, tol: float,
           max_iter: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Minimise :func:`objective` for every problem r with damped Newton steps.

    Returns the optima, their gradient norms and the number of steps taken.
    """
    import torch

    problems, width, classes = theta.shape
    one_hot = torch.nn.functional.one_hot(labels, classes).to(torch.float64)
    identity = torch.eye(width * classes, dtype=torch.float64)
    steps = 0
    for steps in range(1, max_iter + 1):
        probabilities = torch.softmax(features @ theta, dim=-1)
        residual = keep[..., None] * (probabilities - one_hot)
        grad = features.T @ residual + decay * theta
        grad_norm = grad.flatten(1).norm(dim=1)
        if float(grad_norm.max()) <= tol:
            return theta, grad_norm, steps - 1
        # Per-sample curvature a_i (diag(p_i) − p_i p_iᵀ), then Σ_i over φ_i φ_iᵀ blocks.
        curvature = keep[..., None, None] * (torch.diag_embed(probabilities)
                                             - probabilities[..., :, None]
                                             * probabilities[..., None, :])
        hessian = torch.einsum("if,ricd,ig->rfcgd", features, curvature, features)
        hessian = hessian.reshape(problems, width * classes, width * classes)
        hessian = hessian + decay * identity
        direction = torch.linalg.solve(hessian, grad.reshape(problems, -1, 1))
        direction = direction.reshape(problems, width, classes)
        theta = _line_search(features, labels, keep, theta, direction, grad, decay)
    probabilities = torch.softmax(features @ theta, dim=-1)
    grad = features.T @ (keep[..., None] * (probabilities - one_hot)) + decay * theta
    return theta, grad.flatten(1).norm(dim=1), steps


def _line_search(features, labels, keep, theta, direction, grad, decay):  # type: ignore[no-untyped-def]
    """Backtrack each problem's step until it meets the Armijo condition (at most 30 halvings)."""
    import torch

    current = objective(features, labels, keep, theta, decay)
    slope = -(grad * direction).flatten(1).sum(dim=1)
    step = torch.ones(theta.shape[0], dtype=torch.float64)
    accepted = torch.zeros(theta.shape[0], dtype=torch.bool)
    for _ in range(30):
        candidate = theta - step[:, None, None] * direction
        value = objective(features, labels, keep, candidate, decay)
        accepted = accepted | (value <= current + 1e-4 * step * slope)
        if bool(accepted.all()):
            break
        step = torch.where(accepted, step, step / 2)
    return theta - step[:, None, None] * direction


def mean_test_losses(features: torch.Tensor, labels: torch.Tensor,
                     theta: torch.Tensor) -> torch.Tensor:
    """Mean test cross-entropy of each problem's parameters, shape ``(R,)``."""
    import torch

    log_probs = torch.log_softmax(features @ theta, dim=-1)
    return -log_probs.gather(2, labels.expand(theta.shape[0], -1)[..., None])[..., 0].mean(dim=1)


@ifval.hookimpl
def ifval_ground_truths() -> list[GroundTruth]:
    return [ExactOptimum()]
