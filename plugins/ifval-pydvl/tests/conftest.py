"""Shared fixtures: MLPs trained on real Iris data with ifval's own training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ifval.datasets.iris import Iris, IrisParams
from ifval.kinds import TrainedBatch
from ifval.models.mlp import MLP, MLPParams
from ifval.training.fit import FitSettings, fit

CHECKED = np.arange(0, 120, 10)
"""Training rows whose removal every comparison estimates."""


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Run on one thread: these problems are tiny, and extra threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def iris_split():
    return Iris().load(IrisParams(test_point=83))


def trained_mlp(split, depth: int, width: int, seeds: list[int], decay: float,
                epochs: int) -> TrainedBatch:
    """``len(seeds)`` tanh MLPs trained side by side on Iris with full-batch Adam."""
    model, params = MLP(), MLPParams(depth=depth, width=width, activation="tanh")
    initial = [model.init(params, split.n_features, split.n_classes,
                          torch.Generator().manual_seed(seed)) for seed in seeds]
    weights = {name: torch.stack([w[name] for w in initial]) for name in initial[0]}
    x = torch.tensor(split.x_train)
    y = torch.tensor(split.y_train)
    decays = torch.full((len(seeds),), decay, dtype=torch.float64)
    mean_weights = torch.full((len(seeds), len(y)), 1 / len(y), dtype=torch.float64)
    settings = FitSettings(epochs=epochs, lr=0.01, weight_decay=decays)
    result = fit(weights, model.objective(params, x, y, mean_weights), settings)
    return TrainedBatch(
        model=model, model_params=params, weights=result.weights, x_train=x, y_train=y,
        x_test=torch.tensor(split.x_test), y_test=torch.tensor(split.y_test),
        weight_decay=decays, seeds=seeds,
    )


@pytest.fixture(scope="session")
def trained(iris_split) -> TrainedBatch:
    """Two width-8 MLPs with weight decay 0.01, so the `remaining` term w θ̂ is not zero."""
    return trained_mlp(iris_split, depth=1, width=8, seeds=[0, 1], decay=0.01, epochs=1000)


@pytest.fixture
def points(trained) -> np.ndarray:
    return np.stack([CHECKED] * trained.size)
