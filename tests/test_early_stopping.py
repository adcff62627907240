"""Early stopping and the convergence criterion of fits and retrains."""

from __future__ import annotations

import numpy as np
import torch
from conftest import linear_batch, solve_logistic, test_loss_numpy

from ifval.ground_truths.retrain import RetrainFromOptimum, RetrainParams
from ifval.models.mlp import MLP, MLPParams
from ifval.settings import Plateau
from ifval.training.fit import FitSettings, fit

DECAY = 0.01
POINTS = np.array([[4, 60, 120]])


def test_grad_tol_retrain_reaches_scipy_optimum(iris_split):
    x, y = iris_split.x_train, iris_split.y_train
    n = len(y)
    full = solve_logistic(x, y, np.full(n, 1 / n), DECAY, 3)
    batch = linear_batch(iris_split, full, DECAY)
    params = RetrainParams(epochs=50000, lr=0.01, grad_tol=1e-9,
                           plateau=Plateau(factor=0.5, patience=50, threshold=0.0))
    result = RetrainFromOptimum().measure(params, batch, POINTS)

    base = test_loss_numpy(full, iris_split.x_test, iris_split.y_test, 3)
    for j, row in enumerate(POINTS[0]):
        weights = np.full(n, 1 / n)
        weights[row] = 0.0
        theta = solve_logistic(x, y, weights, DECAY, 3, start=full)
        expected = test_loss_numpy(theta, iris_split.x_test, iris_split.y_test, 3) - base
        entry = result.diagnostics[0][j]
        assert entry["stopped_epoch"] < 50000
        assert entry["grad_norm"] <= 1e-9
        assert abs(result.values[0, j] - expected) < 1e-7


def stacked_mlp(iris_split):
    model, params = MLP(), MLPParams(depth=1, width=5)
    initial = [model.init(params, 4, 3, torch.Generator().manual_seed(s)) for s in (0, 1)]
    weights = {k: torch.stack([w[k] for w in initial]) for k in initial[0]}
    x = torch.tensor(iris_split.x_train)
    y = torch.tensor(iris_split.y_train)
    objective = model.objective(params, x, y, torch.full((2, len(y)), 1 / len(y),
                                                         dtype=torch.float64))
    return weights, objective


def test_stopped_model_keeps_its_parameters(iris_split):
    weights, objective = stacked_mlp(iris_split)
    stopping = FitSettings(epochs=3000, lr=0.05, weight_decay=torch.zeros(2),
                           stop_patience=10, stop_threshold=1e-2)
    stopped = fit(weights, objective, stopping)
    epochs = stopped.stopped_epoch.tolist()
    assert epochs[0] < 3000
    assert epochs[1] < 3000
    assert epochs[0] != epochs[1]

    for b, epoch in enumerate(epochs):
        alone = fit(weights, objective, FitSettings(epochs=epoch, lr=0.05,
                                                    weight_decay=torch.zeros(2)))
        for name in weights:
            torch.testing.assert_close(stopped.weights[name][b], alone.weights[name][b],
                                       rtol=0, atol=0)


def test_no_criterion_runs_every_epoch(iris_split):
    weights, objective = stacked_mlp(iris_split)
    result = fit(weights, objective, FitSettings(epochs=30, lr=0.05,
                                                 weight_decay=torch.zeros(2)))
    assert result.stopped_epoch is None
    assert result.history_epochs[-1] == 30


def test_minibatch_of_whole_set_equals_full_batch(iris_split):
    n = len(iris_split.y_train)
    full = solve_logistic(iris_split.x_train, iris_split.y_train, np.full(n, 1 / n), DECAY, 3)
    batch = linear_batch(iris_split, full, DECAY)
    whole = RetrainFromOptimum().measure(RetrainParams(epochs=200, lr=0.01), batch, POINTS)
    minibatch = RetrainFromOptimum().measure(RetrainParams(epochs=200, lr=0.01, batch_size=n),
                                             batch, POINTS)
    np.testing.assert_allclose(minibatch.values, whole.values, rtol=1e-12, atol=1e-15)


def test_minibatch_retrain_tracks_exact_optimum(iris_split):
    from scipy.stats import pearsonr

    from ifval.ground_truths.exact_optimum import ExactOptimum, ExactOptimumParams

    n = len(iris_split.y_train)
    full = solve_logistic(iris_split.x_train, iris_split.y_train, np.full(n, 1 / n), DECAY, 3)
    batch = linear_batch(iris_split, full, DECAY)
    points = np.arange(0, 149, 7)[None]
    exact = ExactOptimum().measure(ExactOptimumParams(), batch, points).values[0]
    params = RetrainParams(epochs=300, lr=0.002, batch_size=30,
                           plateau=Plateau(factor=0.5, patience=50))
    result = RetrainFromOptimum().measure(params, batch, points)
    # Minibatch noise leaves each retrain near, not at, the optimum.
    assert pearsonr(result.values[0], exact).statistic > 0.8
    epochs = result.diagnostics[0][0]["trajectory_epochs"]
    assert epochs[-1] == 300
