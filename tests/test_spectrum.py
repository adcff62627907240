"""Hessian spectrum through pyhessian: eigenvalues and traces against explicit float64 Hessians."""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pydantic
import pytest
import torch

from ifval.errors import NumericalError
from ifval.kinds import TrainedBatch
from ifval.models.mlp import MLP, MLPParams
from ifval.spectrum import (
    SpectrumSettings,
    hessian_spectrum,
    mean_loss_criterion,
    module_spectrum,
    single_model_module,
)
from ifval.training.fit import FitSettings, fit

TIGHT = SpectrumSettings(max_iter=20000, tol=1e-10)
SEEDS = [11, 12]


def make_batch(split, params, weights, seeds) -> TrainedBatch:
    return TrainedBatch(
        model=MLP(),
        model_params=params,
        weights=weights,
        x_train=torch.tensor(split.x_train),
        y_train=torch.tensor(split.y_train),
        x_test=torch.tensor(split.x_test),
        y_test=torch.tensor(split.y_test),
        weight_decay=torch.full((len(seeds),), 1e-3, dtype=torch.float64),
        seeds=list(seeds),
    )


def initial_weights(params, seeds, n_features, n_classes, scales=None):
    scales = scales or [1.0] * len(seeds)
    drawn = [
        {name: value * scale for name, value in
         MLP().init(params, n_features, n_classes, torch.Generator().manual_seed(seed)).items()}
        for seed, scale in zip(seeds, scales, strict=True)
    ]
    return {name: torch.stack([w[name] for w in drawn]) for name in drawn[0]}


@pytest.fixture(scope="module")
def trained(iris_split):
    """Two depth-1, width-5 selu MLPs trained on Iris for 300 full-batch Adam steps."""
    params = MLPParams(depth=1, width=5, activation="selu")
    weights = initial_weights(params, SEEDS, iris_split.n_features, iris_split.n_classes)
    batch = make_batch(iris_split, params, weights, SEEDS)
    n = batch.n_train
    sample_weights = torch.full((len(SEEDS), n), 1.0 / n, dtype=torch.float64)
    objective = batch.model.objective(params, batch.x_train, batch.y_train, sample_weights)
    result = fit(weights, objective,
                 FitSettings(epochs=300, lr=0.02, weight_decay=batch.weight_decay))
    batch.weights = result.weights
    return batch


def explicit_hessian(batch: TrainedBatch, index: int) -> torch.Tensor:
    """Hessian of the mean training loss of model ``index`` over all its flattened parameters."""
    names = list(batch.weights)
    shapes = [batch.weights[name][index].shape for name in names]
    sizes = [math.prod(shape) for shape in shapes]
    theta = torch.cat([batch.weights[name][index].reshape(-1) for name in names])

    def mean_loss(flat: torch.Tensor) -> torch.Tensor:
        parts = torch.split(flat, sizes)
        weights = {name: part.reshape(shape)[None]
                   for name, part, shape in zip(names, parts, shapes, strict=True)}
        output = batch.model.forward(batch.model_params, weights, batch.x_train)
        return batch.model.loss(batch.model_params, output, batch.y_train).mean()

    return torch.func.hessian(mean_loss)(theta)


def largest_magnitude(matrix: torch.Tensor) -> float:
    eigenvalues = torch.linalg.eigvalsh(matrix)
    return float(eigenvalues[eigenvalues.abs().argmax()])


def relative_error(value: float, expected: float) -> float:
    return abs(value - expected) / abs(expected)


class QuadraticForm(torch.nn.Module):
    """Parameters θ whose loss ½ θᵀAθ + bᵀθ has the Hessian A at every θ."""

    def __init__(self, matrix: torch.Tensor, linear: torch.Tensor) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(torch.ones(matrix.shape[0], dtype=torch.float64))
        self.matrix = matrix
        self.linear = linear

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.theta


def quadratic_problem(eigenvalues: list[float], seed: int = 0):
    """A QuadraticForm with a random orthogonal basis and the given Hessian eigenvalues."""
    generator = torch.Generator().manual_seed(seed)
    size = len(eigenvalues)
    basis, _ = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
    matrix = basis @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ basis.T
    matrix = 0.5 * (matrix + matrix.T)
    module = QuadraticForm(matrix, torch.randn(size, generator=generator, dtype=torch.float64))

    def criterion(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return 0.5 * output @ module.matrix @ output + module.linear @ output

    inputs = torch.zeros(1, 1, dtype=torch.float64)
    targets = torch.zeros(1, dtype=torch.long)
    return module, criterion, inputs, targets, matrix


# ------------------------------------------------------------------ top eigenvalue


def test_top_eigenvalue_matches_explicit_hessian(trained):
    results = hessian_spectrum(trained, TIGHT)

    assert len(results) == 2
    for index, result in enumerate(results):
        expected = largest_magnitude(explicit_hessian(trained, index))
        assert relative_error(result["top_eigenvalue"], expected) < 1e-3
        assert result["top_eigenvalue_sign"] == (1 if expected > 0 else -1)
        assert result["eigen_iterations"] < TIGHT.max_iter
        assert result["eigen_residual"] < 1e-3
    assert results[0]["top_eigenvalue"] != results[1]["top_eigenvalue"]


def test_top_eigenvalue_excludes_weight_decay(trained):
    heavier = TrainedBatch(**{**trained.__dict__,
                              "weight_decay": torch.full((2,), 0.5, dtype=torch.float64)})

    results = hessian_spectrum(heavier, TIGHT)

    for index, result in enumerate(results):
        expected = largest_magnitude(explicit_hessian(trained, index))
        assert relative_error(result["top_eigenvalue"], expected) < 1e-3


def test_second_call_returns_same_value(trained):
    first = hessian_spectrum(trained, TIGHT)
    second = hessian_spectrum(trained, TIGHT)

    for before, after in zip(first, second, strict=True):
        assert relative_error(after["top_eigenvalue"], before["top_eigenvalue"]) < 1e-3


def test_stale_graph_gradients_ignored(trained):
    weights = {name: tensor[0] for name, tensor in trained.weights.items()}
    module = single_model_module(trained.model, trained.model_params, weights)
    criterion = mean_loss_criterion(trained.model, trained.model_params)
    # An earlier backward(create_graph=True) leaves gradients that carry a graph;
    # pyhessian 0.1 adds its own gradient to them and doubles the Hessian.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Using backward\(\) with create_graph=True")
        criterion(module(trained.x_train), trained.y_train).backward(create_graph=True)

    result = module_spectrum(module, criterion, trained.x_train, trained.y_train, TIGHT, 11)

    expected = largest_magnitude(explicit_hessian(trained, 0))
    assert relative_error(result["top_eigenvalue"], expected) < 1e-3
    assert all(p.grad is None for p in module.parameters())


def test_small_curvature_without_normalisation_bias():
    # pyhessian 0.1 divides by ‖v‖ + 1e-6 when it normalises, so its own value
    # for λ = 1e-6 is 4e-6 too low relative (measured: 0.999996e-6).
    module, criterion, inputs, targets, matrix = quadratic_problem([1e-6, 5e-7, 2e-7, -1e-7])
    settings = SpectrumSettings(max_iter=5000, tol=1e-12)

    result = module_spectrum(module, criterion, inputs, targets, settings, 3)

    expected = largest_magnitude(matrix)
    assert expected == pytest.approx(1e-6, rel=1e-9)
    assert relative_error(result["top_eigenvalue"], expected) < 1e-9


def test_iterations_count_power_steps():
    module, criterion, inputs, targets, _ = quadratic_problem([3.0, 2.9, 2.8, 1.0])

    capped = module_spectrum(module, criterion, inputs, targets,
                             SpectrumSettings(max_iter=3, tol=1e-12), 0)
    loose = module_spectrum(module, criterion, inputs, targets,
                            SpectrumSettings(max_iter=100, tol=10.0), 0)

    assert capped["eigen_iterations"] == 3
    assert loose["eigen_iterations"] == 2


def test_unconverged_iteration_logs_warning(trained, caplog):
    with caplog.at_level(logging.WARNING, logger="ifval.spectrum"):
        results = hessian_spectrum(trained, SpectrumSettings(max_iter=2, tol=1e-12))

    assert [r["eigen_iterations"] for r in results] == [2, 2]
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("model with seed 11: power iteration reached max_iter=2")
    assert "raise max_iter" in messages[1]


# ------------------------------------------------------------------ negative curvature


def test_negative_dominant_mlp_reports_negative(iris_split):
    # tanh weights drawn with seed 10 and scaled by 10 give a Hessian whose most
    # negative eigenvalue is larger in magnitude than its largest one. The
    # second model is unscaled, so the batch mixes a negative and a positive sign.
    params = MLPParams(depth=1, width=5, activation="tanh")
    weights = initial_weights(params, [10, 10], iris_split.n_features, iris_split.n_classes,
                              scales=[10.0, 1.0])
    batch = make_batch(iris_split, params, weights, [10, 20])
    hessian = explicit_hessian(batch, 0)
    eigenvalues = torch.linalg.eigvalsh(hessian)
    assert -eigenvalues[0] > 2 * eigenvalues[-1] > 0

    results = hessian_spectrum(batch, TIGHT)

    assert relative_error(results[0]["top_eigenvalue"], float(eigenvalues[0])) < 1e-3
    assert results[0]["top_eigenvalue"] < 0
    assert results[0]["top_eigenvalue_sign"] == -1
    other = largest_magnitude(explicit_hessian(batch, 1))
    assert other > 0
    assert relative_error(results[1]["top_eigenvalue"], other) < 1e-3
    assert results[1]["top_eigenvalue_sign"] == 1


def test_quadratic_negative_eigenvalue_and_trace():
    module, criterion, inputs, targets, matrix = quadratic_problem([-3.0, 1.0, 0.5, 2.0, -0.5])
    settings = SpectrumSettings(max_iter=5000, tol=1e-12, trace_samples=300)

    result = module_spectrum(module, criterion, inputs, targets, settings, 5)

    assert result["top_eigenvalue"] == pytest.approx(-3.0, rel=1e-6)
    assert result["top_eigenvalue_sign"] == -1
    # tr(A) = 0. pyhessian's own trace() stopped after two samples on this problem.
    assert float(torch.trace(matrix)) == pytest.approx(0.0, abs=1e-12)
    assert abs(result["trace"]) < 4 * result["trace_stderr"]
    assert result["trace_stderr"] > 0


# ------------------------------------------------------------------------- trace


def test_trace_within_four_standard_errors(trained):
    settings = SpectrumSettings(max_iter=200, tol=1e-6, trace_samples=400)

    results = hessian_spectrum(trained, settings)

    for index, result in enumerate(results):
        hessian = explicit_hessian(trained, index)
        exact = float(torch.trace(hessian))
        # For Rademacher v, Var(vᵀHv) = 2 Σ_{i≠j} H_ij².
        off_diagonal = float((hessian**2).sum() - (torch.diagonal(hessian) ** 2).sum())
        expected_stderr = math.sqrt(2 * off_diagonal / settings.trace_samples)
        assert abs(result["trace"] - exact) < 4 * result["trace_stderr"]
        assert result["trace_stderr"] == pytest.approx(expected_stderr, rel=0.25)


def test_trace_absent_by_default(trained):
    results = hessian_spectrum(trained, SpectrumSettings(max_iter=50, tol=1e-3))

    for result in results:
        assert result["trace"] is None
        assert result["trace_stderr"] is None


# ---------------------------------------------------------------- random state


def test_global_rng_state_unchanged(trained):
    settings = SpectrumSettings(max_iter=300, tol=1e-8, trace_samples=20)
    torch.manual_seed(0)
    state = torch.get_rng_state()

    first = hessian_spectrum(trained, settings)

    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(1)
    second = hessian_spectrum(trained, settings)
    assert first == second


def test_seed_changes_start_vector(trained):
    settings = SpectrumSettings(max_iter=5, tol=1e-12, trace_samples=10)
    reseeded = TrainedBatch(**{**trained.__dict__, "seeds": [99, 100]})

    first = hessian_spectrum(trained, settings)
    second = hessian_spectrum(reseeded, settings)

    assert first[0]["top_eigenvalue"] != second[0]["top_eigenvalue"]
    assert first[0]["trace"] != second[0]["trace"]


# ------------------------------------------------------------------ module state


@pytest.mark.parametrize("training", [True, False])
def test_module_mode_restored(training):
    module, criterion, inputs, targets, _ = quadratic_problem([2.0, 1.0])
    module.train(training)

    module_spectrum(module, criterion, inputs, targets, SpectrumSettings(trace_samples=4), 0)

    assert module.training is training
    assert module.theta.grad is None


def test_wider_output_interpreted_by_loss(iris_split):
    class TemperedMLP(MLP):
        """Returns the logits and a log-temperature column, which only its loss divides out."""

        def forward(self, params, weights, x):  # type: ignore[no-untyped-def,override]
            logits = super().forward(params, weights, x)
            column = weights["log_temperature"][:, None, :].expand(*logits.shape[:2], 1)
            return torch.cat([logits, column], dim=-1)

        def loss(self, params, output, y):  # type: ignore[no-untyped-def,override]
            logits = output[..., :-1] / output[..., -1:].exp()
            return super().loss(params, logits, y)

    params = MLPParams(depth=1, width=5, activation="selu")
    weights = initial_weights(params, SEEDS, iris_split.n_features, iris_split.n_classes)
    weights["log_temperature"] = torch.tensor([[0.3], [-0.4]], dtype=torch.float64)
    batch = make_batch(iris_split, params, weights, SEEDS)
    batch.model = TemperedMLP()

    results = hessian_spectrum(batch, TIGHT)

    for index, result in enumerate(results):
        expected = largest_magnitude(explicit_hessian(batch, index))
        assert relative_error(result["top_eigenvalue"], expected) < 1e-3


# ------------------------------------------------------------------------- errors


def test_nan_weights_name_seed(trained):
    weights = {name: tensor.clone() for name, tensor in trained.weights.items()}
    weights["layers.0.weight"][1, 0, 0] = float("nan")
    broken = TrainedBatch(**{**trained.__dict__, "weights": weights})

    with pytest.raises(NumericalError) as caught:
        hessian_spectrum(broken, SpectrumSettings(max_iter=10))

    message = str(caught.value)
    assert "seed 12" in message
    assert "'layers.0.weight'" in message
    assert "1 NaN or infinite value(s)" in message
    assert "check the training of this seed" in message


def test_nan_inputs_raise_loss_error(trained):
    inputs = trained.x_train.clone()
    inputs[3, 1] = float("nan")
    broken = TrainedBatch(**{**trained.__dict__, "x_train": inputs})

    with pytest.raises(NumericalError) as caught:
        hessian_spectrum(broken, SpectrumSettings(max_iter=10))

    message = str(caught.value)
    assert "the training loss of the model with seed 11 is nan" in message
    assert "check the training inputs and the weights of this seed" in message


# ----------------------------------------------------------------------- settings


def test_settings_defaults():
    settings = SpectrumSettings()

    assert settings.max_iter == 1000
    assert settings.tol == 1e-6
    assert settings.trace_samples == 0


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"trace_samples": 1}, "trace_samples is 1"),
        ({"max_iter": 0}, "greater than or equal to 1"),
        ({"tol": 0.0}, "greater than 0"),
        ({"maxiter": 10}, "Extra inputs are not permitted"),
    ],
)
def test_settings_reject_invalid(raw, fragment):
    with pytest.raises(pydantic.ValidationError, match=fragment):
        SpectrumSettings(**raw)


def test_explicit_reference_is_symmetric(trained):
    # Guards the reference itself: eigvalsh reads one triangle only.
    hessian = explicit_hessian(trained, 0)

    np.testing.assert_allclose(hessian.numpy(), hessian.T.numpy(), rtol=0, atol=1e-12)
