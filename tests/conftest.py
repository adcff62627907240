"""Shared fixtures: real Iris data and a convex problem solved to tolerance with scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import log_softmax

from ifval.datasets.iris import Iris, IrisParams
from ifval.kinds import TrainedBatch
from ifval.models.mlp import MLP, MLPParams


@pytest.fixture(scope="session")
def iris_split():
    return Iris().load(IrisParams(test_point=83))


def softmax_objective(flat, x, y, weights_per_point, decay, n_classes):
    """Σ_i a_i ℓ_i + (w/2)‖θ‖² of multinomial logistic regression, and its gradient (numpy)."""
    d = x.shape[1]
    weight = flat[: d * n_classes].reshape(d, n_classes)
    bias = flat[d * n_classes :]
    log_probs = log_softmax(x @ weight + bias, axis=1)
    losses = -log_probs[np.arange(len(y)), y]
    value = weights_per_point @ losses + 0.5 * decay * flat @ flat
    residual = np.exp(log_probs)
    residual[np.arange(len(y)), y] -= 1.0
    residual *= weights_per_point[:, None]
    grad = np.concatenate([(x.T @ residual).ravel(), residual.sum(axis=0)]) + decay * flat
    return value, grad


def solve_logistic(x, y, weights_per_point, decay, n_classes, start=None):
    """Minimise the weighted, L2-regularised multinomial logistic loss to gradient norm 1e-12."""
    size = x.shape[1] * n_classes + n_classes
    start = np.zeros(size) if start is None else start
    result = minimize(softmax_objective, start, jac=True, method="L-BFGS-B",
                      args=(x, y, weights_per_point, decay, n_classes),
                      options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 20000, "maxcor": 30})
    return result.x


def test_loss_numpy(flat, x, y, n_classes):
    d = x.shape[1]
    weight = flat[: d * n_classes].reshape(d, n_classes)
    bias = flat[d * n_classes :]
    log_probs = log_softmax(x @ weight + bias, axis=1)
    return float(-log_probs[np.arange(len(y)), y].mean())


test_loss_numpy.__test__ = False


def linear_batch(split, flat, decay) -> TrainedBatch:
    """Wrap a depth-0 ``mlp`` (multinomial logistic regression) at ``flat`` as a batch of 1."""
    d, c = split.n_features, split.n_classes
    weights = {
        "out.weight": torch.tensor(flat[: d * c].reshape(1, d, c)),
        "out.bias": torch.tensor(flat[d * c :].reshape(1, c)),
    }
    return TrainedBatch(
        model=MLP(),
        model_params=MLPParams(depth=0),
        weights=weights,
        x_train=torch.tensor(split.x_train),
        y_train=torch.tensor(split.y_train),
        x_test=torch.tensor(split.x_test),
        y_test=torch.tensor(split.y_test),
        weight_decay=torch.tensor([decay], dtype=torch.float64),
        seeds=[0],
    )
