"""Model hooks ``head``, ``penalty`` and ``predict``, checked through the estimators and retrains.

A penalty of (w/2)‖θ‖² must act exactly like weight decay w, so the same
model seen both ways is an independent check of every path that handles
a penalty or a non-default head.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import linear_batch, solve_logistic

from ifval.errors import IfvalError
from ifval.estimators.exact import Exact, ExactParams
from ifval.ground_truths.exact_optimum import ExactOptimum, ExactOptimumParams
from ifval.ground_truths.retrain import RetrainFromOptimum, RetrainParams
from ifval.models.mlp import MLP, MLPParams

DECAY = 0.02


class PenalisedMLP(MLP):
    """``mlp`` whose L2 term comes from :meth:`penalty` instead of the optimizer."""

    def penalty(self, params, weights):  # type: ignore[no-untyped-def,override]
        return sum(0.5 * DECAY * w.flatten(1).pow(2).sum(dim=1) for w in weights.values())


@pytest.fixture(scope="module")
def batches(iris_split):
    n = len(iris_split.y_train)
    flat = solve_logistic(iris_split.x_train, iris_split.y_train, np.full(n, 1.0 / n), DECAY,
                          iris_split.n_classes)
    with_decay = linear_batch(iris_split, flat, DECAY)
    with_penalty = dataclasses.replace(with_decay, model=PenalisedMLP(),
                                       weight_decay=torch.zeros(1, dtype=torch.float64))
    return with_decay, with_penalty


POINTS = np.array([[0, 5, 40, 77, 120]])


@pytest.mark.parametrize("normalisation", ["original_n", "remaining"])
def test_exact_penalty_equals_decay(batches, normalisation):
    with_decay, with_penalty = batches
    params = ExactParams(scope="last_layer")
    expected = Exact().estimate(params, with_decay, POINTS, normalisation).values
    got = Exact().estimate(params, with_penalty, POINTS, normalisation).values
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("layers", ["last", "all"])
def test_retrain_penalty_equals_decay(batches, layers):
    with_decay, with_penalty = batches
    params = RetrainParams(layers=layers, epochs=200, lr=0.01)
    expected = RetrainFromOptimum().measure(params, with_decay, POINTS).values
    got = RetrainFromOptimum().measure(params, with_penalty, POINTS).values
    assert np.abs(expected).max() > 1e-5
    np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-12)


def test_exact_optimum_rejects_penalty(batches):
    _, with_penalty = batches
    params = ExactOptimumParams()
    with pytest.raises(IfvalError, match="penalty"):
        ExactOptimum().measure(params, with_penalty, POINTS)


def test_predict_default_is_argmax():
    output = torch.tensor([[[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]]])
    predicted = MLP().predict(MLPParams(), output)
    assert predicted.tolist() == [[1, 0]]
