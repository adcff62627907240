"""Batched Adam, plateau scheduling and stacked training against torch's own classes."""

from __future__ import annotations

import torch

from ifval.models.mlp import MLP, MLPParams
from ifval.training.fit import FitSettings, fit
from ifval.training.optim import BatchedAdam, BatchedPlateau


def torch_reference(weights, x, y, steps, lr, decay, plateau=None):
    """Train one model alone with torch.optim.Adam (and ReduceLROnPlateau) on nn.Linear layers."""
    layers = torch.nn.ModuleList()
    for name in ("layers.0", "out"):
        weight = weights[f"{name}.weight"]
        linear = torch.nn.Linear(*weight.shape, dtype=torch.float64)
        with torch.no_grad():
            linear.weight.copy_(weight.T)
            linear.bias.copy_(weights[f"{name}.bias"])
        layers.append(linear)
    optimizer = torch.optim.Adam(layers.parameters(), lr=lr, weight_decay=decay)
    scheduler = None
    if plateau is not None:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=plateau[0], patience=plateau[1], threshold=plateau[2])
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(layers[1](torch.selu(layers[0](x))), y)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step(loss.item())
    final_lr = optimizer.param_groups[0]["lr"]
    trained = {"layers.0.weight": layers[0].weight.detach().T,
               "out.weight": layers[1].weight.detach().T}
    return trained, final_lr


def stacked_models(seeds, width=6):
    model, params = MLP(), MLPParams(depth=1, width=width)
    initial = [model.init(params, 4, 3, torch.Generator().manual_seed(s)) for s in seeds]
    return model, params, {k: torch.stack([w[k] for w in initial]) for k in initial[0]}


def data_term(model, params, x, y, size):
    """The mean cross-entropy of ``size`` stacked models, with the mlp's own gradients."""
    return model.objective(params, x, y, torch.full((size, len(y)), 1 / len(y),
                                                    dtype=torch.float64))


# Tolerance: both sides run float64 arithmetic in a different summation order
# (batched matmul and log-softmax against nn.Linear and cross_entropy). The
# parameters agree to 7e-16 after one step, but Adam divides by √v, which
# magnifies rounding error in near-zero gradient coordinates: measured 7e-11
# after 10 steps and 1.4e-8 after 500 (lr 0.01). 1e-6 absolute bounds that.
TOLERANCE = 1e-6


def test_batched_training_matches_torch_adam(iris_split):
    x = torch.tensor(iris_split.x_train)
    y = torch.tensor(iris_split.y_train)
    seeds = [3, 4, 5]
    model, params, weights = stacked_models(seeds)
    settings = FitSettings(epochs=500, lr=0.01, weight_decay=torch.full((3,), 0.005))

    result = fit(weights, data_term(model, params, x, y, 3), settings)
    for b in range(3):
        alone = {k: v[b] for k, v in weights.items()}
        expected, _ = torch_reference(alone, x, y, 500, 0.01, 0.005)
        for name, value in expected.items():
            torch.testing.assert_close(result.weights[name][b], value, rtol=TOLERANCE,
                                       atol=TOLERANCE)


def test_plateau_schedule_matches_torch(iris_split):
    x = torch.tensor(iris_split.x_train)
    y = torch.tensor(iris_split.y_train)
    model, params, weights = stacked_models([11])
    settings = FitSettings(epochs=400, lr=0.05, weight_decay=torch.zeros(1),
                           plateau_factor=0.5, plateau_patience=2, plateau_threshold=0.02)

    result = fit(weights, data_term(model, params, x, y, 1), settings)
    alone = {k: v[0] for k, v in weights.items()}
    expected, expected_lr = torch_reference(alone, x, y, 400, 0.05, 0.0, plateau=(0.5, 2, 0.02))
    assert result.lr_reductions[0] > 0
    assert float(result.final_lr[0]) == expected_lr
    for name, value in expected.items():
        torch.testing.assert_close(result.weights[name][0], value, rtol=TOLERANCE,
                                   atol=TOLERANCE)


def test_mixed_weight_decay_stays_per_model(iris_split):
    """A batch mixing two decays and two learning rates equals the two runs apart."""
    x = torch.tensor(iris_split.x_train)
    y = torch.tensor(iris_split.y_train)
    model, params, weights = stacked_models([1, 1])
    loss = data_term(model, params, x, y, 2)
    decays = torch.tensor([0.0, 0.05], dtype=torch.float64)
    rates = torch.tensor([0.01, 0.002], dtype=torch.float64)

    mixed = [w.clone() for w in weights.values()]
    optimizer = BatchedAdam(mixed, rates, decays)
    for _ in range(200):
        _, grads = loss(dict(zip(weights, mixed, strict=True)), False)
        optimizer.step([grads[name] for name in weights])
    for b in range(2):
        alone = {k: v[b] for k, v in weights.items()}
        expected, _ = torch_reference(alone, x, y, 200, float(rates[b]), float(decays[b]))
        result = dict(zip(weights, mixed, strict=True))
        for name, value in expected.items():
            torch.testing.assert_close(result[name][b].detach(), value, rtol=TOLERANCE,
                                       atol=TOLERANCE)


def test_batch_composition_leaves_results_unchanged(iris_split):
    """A model trained among others ends where it ends when trained alone."""
    x = torch.tensor(iris_split.x_train)
    y = torch.tensor(iris_split.y_train)
    model, params, weights = stacked_models([21, 22, 23])
    settings = FitSettings(epochs=300, lr=0.01, weight_decay=torch.zeros(3))
    together = fit(weights, data_term(model, params, x, y, 3), settings)

    _, _, alone_weights = stacked_models([22])
    settings_alone = FitSettings(epochs=300, lr=0.01, weight_decay=torch.zeros(1))
    alone = fit(alone_weights, data_term(model, params, x, y, 1), settings_alone)
    for name in weights:
        torch.testing.assert_close(together.weights[name][1], alone.weights[name][0],
                                   rtol=TOLERANCE, atol=TOLERANCE)


def test_plateau_counts_like_torch():
    """The scheduler alone, on a fixed metric sequence, cuts where torch cuts."""
    metrics = [1.0, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.7] + [0.7] * 10
    parameter = torch.nn.Parameter(torch.zeros(1))
    reference = torch.optim.Adam([parameter], lr=1.0)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(reference, factor=0.5, patience=2,
                                                           threshold=1e-4)
    batched = BatchedAdam([torch.zeros(1, 1)], torch.tensor([1.0]), torch.tensor([0.0]))
    plateau = BatchedPlateau(batched, factor=0.5, patience=2)
    for metric in metrics:
        scheduler.step(metric)
        plateau.step(torch.tensor([metric]))
        assert float(batched.lr[0]) == reference.param_groups[0]["lr"]


def swa_reference(weights, x, y, epochs, lr, decay, swa):
    """One model trained alone with Adam, then ``AveragedModel`` and ``SWALR`` from torch.

    Also returns the snapshots averaged, to check the average by hand.
    """
    from torch.optim.swa_utils import SWALR, AveragedModel

    layers = torch.nn.Sequential(torch.nn.Linear(4, 6, dtype=torch.float64), torch.nn.SELU(),
                                 torch.nn.Linear(6, 3, dtype=torch.float64))
    with torch.no_grad():
        for index, name in ((0, "layers.0"), (2, "out")):
            layers[index].weight.copy_(weights[f"{name}.weight"].T)
            layers[index].bias.copy_(weights[f"{name}.bias"])
    optimizer = torch.optim.Adam(layers.parameters(), lr=lr, weight_decay=decay)
    averaged = AveragedModel(layers)
    start = int(swa.start * epochs)
    scheduler = None
    snapshots = []
    for epoch in range(epochs):
        if epoch == start:
            scheduler = SWALR(optimizer, swa_lr=swa.lr, anneal_epochs=swa.anneal_epochs,
                              anneal_strategy=swa.anneal_strategy)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(layers(x), y).backward()
        optimizer.step()
        if scheduler is not None:
            if (epoch - start) % swa.frequency == 0:
                averaged.update_parameters(layers)
                snapshots.append(layers[2].weight.detach().T.clone())
            scheduler.step()
    return averaged.module[2].weight.detach().T, averaged.module[0].weight.detach().T, snapshots


def test_swa_matches_torch_swa_utils(iris_split):
    from ifval.settings import SWA

    x = torch.tensor(iris_split.x_train)
    y = torch.tensor(iris_split.y_train)
    swa = SWA(start=0.6, lr=0.002, anneal_epochs=20, frequency=3)
    model, params, weights = stacked_models([7, 8])
    settings = FitSettings(epochs=300, lr=0.01, weight_decay=torch.full((2,), 0.005), swa=swa)

    result = fit(weights, data_term(model, params, x, y, 2), settings)
    expected_snapshots = len(range(180, 300, 3))
    assert result.swa_snapshots == expected_snapshots
    for b in range(2):
        alone = {k: v[b] for k, v in weights.items()}
        out_weight, hidden_weight, snapshots = swa_reference(alone, x, y, 300, 0.01, 0.005, swa)
        assert len(snapshots) == expected_snapshots
        torch.testing.assert_close(torch.stack(snapshots).mean(dim=0), out_weight, rtol=1e-12,
                                   atol=1e-12)
        torch.testing.assert_close(result.weights["out.weight"][b], out_weight,
                                   rtol=TOLERANCE, atol=TOLERANCE)
        torch.testing.assert_close(result.weights["layers.0.weight"][b], hidden_weight,
                                   rtol=TOLERANCE, atol=TOLERANCE)


def test_swa_average_differs_from_last_iterate(iris_split):
    from ifval.settings import SWA

    x = torch.tensor(iris_split.x_train)
    y = torch.tensor(iris_split.y_train)
    model, params, weights = stacked_models([1])
    base = FitSettings(epochs=200, lr=0.05, weight_decay=torch.zeros(1))
    plain = fit(weights, data_term(model, params, x, y, 1), base)
    averaged = fit(weights, data_term(model, params, x, y, 1),
                   FitSettings(epochs=200, lr=0.05, weight_decay=torch.zeros(1),
                               swa=SWA(start=0.5, lr=0.05, anneal_epochs=0)))
    # Same learning rate throughout, so the iterates match until averaging;
    # the average of the last 100 iterates is not the last iterate.
    gap = (plain.weights["out.weight"] - averaged.weights["out.weight"]).abs().max()
    assert gap > 1e-4
    assert averaged.swa_snapshots == 100
