"""The mlp model: hand-written gradients against autograd, initialisation against nn.Linear."""

from __future__ import annotations

import math

import pytest
import torch

from ifval.kinds import Model
from ifval.models.mlp import MLP, MLPParams


@pytest.mark.parametrize("activation", ["selu", "tanh", "relu"])
@pytest.mark.parametrize("depth", [0, 1, 3])
def test_objective_gradients_match_autograd(activation, depth):
    model, params = MLP(), MLPParams(depth=depth, width=7, activation=activation)
    generator = torch.Generator().manual_seed(depth)
    stacked = [model.init(params, 5, 4, generator) for _ in range(3)]
    weights = {name: torch.stack([w[name] for w in stacked]) for name in stacked[0]}
    x = torch.randn(20, 5, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 4, (20,), generator=generator)
    sample_weights = torch.rand(3, 20, generator=generator, dtype=torch.float64)

    values, grads = model.objective(params, x, y, sample_weights)(weights, True)
    expected_values, expected_grads = Model.objective(model, params, x, y, sample_weights)(
        weights, True)
    torch.testing.assert_close(values, expected_values, rtol=1e-12, atol=1e-14)
    for name in weights:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-10, atol=1e-13)


def test_value_skipped_when_not_needed():
    model, params = MLP(), MLPParams(depth=1, width=3)
    weights = {k: v[None] for k, v in model.init(params, 2, 2, torch.Generator()).items()}
    x = torch.zeros(4, 2, dtype=torch.float64)
    values, _ = model.objective(params, x, torch.zeros(4, dtype=torch.long),
                                torch.full((1, 4), 0.25, dtype=torch.float64))(weights, False)
    assert values is None


def test_init_bounds_follow_fan_in():
    model, params = MLP(), MLPParams(depth=1, width=400)
    weights = model.init(params, 9, 3, torch.Generator().manual_seed(0))

    assert weights["layers.0.weight"].abs().max() <= 1 / 3
    assert weights["layers.0.weight"].abs().max() > 0.99 / 3
    assert weights["out.weight"].abs().max() <= 1 / math.sqrt(400)
    assert weights["out.bias"].shape == (3,)
