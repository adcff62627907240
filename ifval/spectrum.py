"""Top Hessian eigenvalue and Hessian trace of the training loss of each trained model.

The top eigenvalue comes from the power iteration of pyhessian 0.1 (PyPI
package ``pyhessian``). That version has faults that this module guards
against, each checked against its source:

- ``hessian(..., cuda=True)`` is the default, so ``cuda=False`` is always passed.
- Its constructor calls ``loss.backward(create_graph=True)`` and adds to
  whatever ``.grad`` the parameters already hold. Two constructions on one
  module without a call in between give twice the Hessian. Gradients are
  cleared before and after, and every model gets a fresh module.
- It draws its start vector from the global torch RNG, so it runs under
  ``torch.random.fork_rng`` with a seed derived from the trial's seed.
- It switches the module to eval mode and leaves it there, so the previous
  mode is restored.
- Its power iteration converges to the eigenvalue of largest magnitude,
  which is negative when negative curvature dominates. The sign is kept.
- It divides vectors by ``‖v‖ + 1e-6`` to normalise them, twice per step,
  so its eigenvalue is low by about 2e-6 · (1 + 1e-6 / |λ|) relative. The
  value reported here is the Rayleigh quotient of its final vector instead,
  computed with one more Hessian-vector product.
- ``trace()`` returns its Hutchinson samples, and its stopping test ends after
  two samples when the running mean is negative. The trace is therefore
  estimated here with a fixed number of Rademacher vectors.
- ``density()`` calls ``torch.eig``, which torch 2 removed. It is not used.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ifval.errors import NumericalError
from ifval.kinds import Model, TrainedBatch

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

POWER_ITERATION_STREAM = 2
"""Second entry of the ``SeedSequence`` that seeds pyhessian's start vector."""

TRACE_STREAM = 3
"""Second entry of the ``SeedSequence`` that seeds the Rademacher vectors of the trace."""

Criterion = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]
"""Maps a module's output and the targets to the scalar loss whose Hessian is taken."""


class SpectrumSettings(BaseModel):
    """Settings of :func:`hessian_spectrum`."""

    model_config = ConfigDict(extra="forbid")

    max_iter: int = Field(
        1000, ge=1,
        description="Maximum number of power-iteration steps (Hessian-vector products) for "
        "the top eigenvalue.",
    )
    tol: float = Field(
        1e-6, gt=0,
        description="Power iteration stops once the eigenvalue estimate changes by less than "
        "`tol` times its magnitude between two steps.",
    )
    trace_samples: int = Field(
        0, ge=0,
        description="Number of Rademacher vectors in the Hutchinson estimate of the Hessian "
        "trace; 0 skips the trace.",
    )

    @field_validator("trace_samples")
    @classmethod
    def _standard_error_defined(cls, value: int) -> int:
        if value == 1:
            msg = ("trace_samples is 1, but the standard error of the trace needs at least 2 "
                   "samples; set it to 0 to skip the trace or to 2 or more")
            raise ValueError(msg)
        return value


def hessian_spectrum(batch: TrainedBatch, settings: SpectrumSettings) -> list[dict[str, Any]]:
    """Compute the top Hessian eigenvalue, and optionally the trace, of each model of ``batch``.

    The loss is the full training loss (1/n) Σ_i ℓ(z_i, θ̂_b), the mean of
    ``batch.model.loss`` over all training points, in float64, with respect
    to all parameters of the model. Weight decay is not included: the penalty
    (w/2)‖θ‖² adds exactly w to every eigenvalue and w times the number of
    parameters to the trace, and ``batch.weight_decay`` contains w for
    callers who want it.

    Returns one dict per model, in batch order:

    - ``top_eigenvalue``: the eigenvalue of largest magnitude, sign kept.
      It is negative when negative curvature dominates, so it is not always
      the largest algebraic eigenvalue.
    - ``top_eigenvalue_sign``: +1, −1, or 0 for a zero Hessian.
    - ``eigen_iterations``: pyhessian's power-iteration steps. It equals
      ``settings.max_iter`` when the iteration stopped without meeting
      ``tol``, or met it only at the last step.
    - ``eigen_residual``: ‖Hv − λv‖ / (|λ| ‖v‖) of the final vector v, small
      when the iteration converged. Power iteration converges slowly when
      the two largest eigenvalue magnitudes are close, for example λ and −λ.
    - ``trace`` and ``trace_stderr``: the Hutchinson estimate of tr(H) and
      its standard error, or None when ``settings.trace_samples`` is 0.

    Raises :class:`NumericalError` naming the model's seed when a weight,
    the loss, its gradient, the eigenvalue or the trace is not finite.
    """
    import torch

    results = []
    inputs = batch.x_train.to(torch.float64)
    for index in range(batch.size):
        seed = batch.seeds[index]
        weights = {name: tensor[index] for name, tensor in batch.weights.items()}
        _check_finite_weights(weights, seed)
        module = single_model_module(batch.model, batch.model_params, weights)
        criterion = mean_loss_criterion(batch.model, batch.model_params)
        result = module_spectrum(module, criterion, inputs, batch.y_train, settings, seed)
        logger.debug(
            "model with seed %d: top eigenvalue %.6g after %d power-iteration steps "
            "(residual %.2g), trace %s", seed, result["top_eigenvalue"],
            result["eigen_iterations"], result["eigen_residual"], result["trace"],
        )
        if result["eigen_iterations"] >= settings.max_iter:
            logger.warning(
                "model with seed %d: power iteration reached max_iter=%d, so the eigenvalue "
                "may not have met tol=%g (residual %.2g); raise max_iter for a converged "
                "eigenvalue", seed, settings.max_iter, settings.tol, result["eigen_residual"],
            )
        results.append(result)
    return results


def module_spectrum(module: torch.nn.Module, criterion: Criterion, inputs: torch.Tensor,
                    targets: torch.Tensor, settings: SpectrumSettings,
                    seed: int) -> dict[str, Any]:
    """Compute the dict of :func:`hessian_spectrum` for the loss of any module.

    The loss is ``criterion(module(inputs), targets)``, and its Hessian is
    taken over every parameter of ``module`` that requires a gradient.
    ``seed`` seeds the random vectors and names the model in errors. Both
    quantities are computed in eval mode, because pyhessian switches the
    module to it. The module's previous mode is restored, and its
    parameters' ``.grad`` are None afterwards.
    """
    import torch

    parameters = [p for p in module.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError(f"{type(module).__name__} has no parameter that requires a gradient")
    was_training = module.training
    steps = [0]

    def count_step(gradient: torch.Tensor) -> None:
        steps[0] += 1

    # Every backward pass through the module (pyhessian's gradient, then one
    # per Hessian-vector product) computes a gradient for the first parameter
    # once, so this hook counts pyhessian's power-iteration steps.
    handle = parameters[0].register_hook(count_step)
    _clear_gradients(parameters)
    try:
        computer = _pyhessian_computer(module, criterion, inputs, targets, seed)
        _check_finite_gradient(computer.gradsH, seed)
        steps[0] = 0
        with torch.random.fork_rng(devices=[]):
            # Seeding only the CPU generator leaves the caller's CUDA generators untouched.
            torch.default_generator.manual_seed(derived_seed(seed, POWER_ITERATION_STREAM))
            _, vectors = computer.eigenvalues(maxIter=settings.max_iter, tol=settings.tol,
                                              top_n=1)
        iterations = steps[0]
        eigenvalue, residual = _rayleigh_quotient(computer, vectors[0])
        del computer

        trace = stderr = None
        if settings.trace_samples > 0:
            trace, stderr = hutchinson_trace(module, criterion, inputs, targets,
                                             settings.trace_samples, seed)
    finally:
        handle.remove()
        _clear_gradients(parameters)
        module.train(was_training)

    _check_finite("top Hessian eigenvalue", eigenvalue, seed)
    if trace is not None:
        _check_finite("Hessian trace estimate", trace, seed)
    return {
        "top_eigenvalue": eigenvalue,
        "top_eigenvalue_sign": int(math.copysign(1, eigenvalue)) if eigenvalue != 0 else 0,
        "eigen_iterations": iterations,
        "eigen_residual": residual,
        "trace": trace,
        "trace_stderr": stderr,
    }


def hutchinson_trace(module: torch.nn.Module, criterion: Criterion, inputs: torch.Tensor,
                     targets: torch.Tensor, samples: int, seed: int) -> tuple[float, float]:
    """Estimate tr(H) as the mean of vᵀHv over ``samples`` Rademacher vectors v.

    Returns the mean and its standard error (sample standard deviation over
    √samples). The vectors come from a generator seeded from ``seed``, not
    from the global RNG.
    """
    import numpy as np
    import torch

    parameters = [p for p in module.parameters() if p.requires_grad]
    with torch.enable_grad():
        loss = criterion(module(inputs), targets)
        gradients = torch.autograd.grad(loss, parameters, create_graph=True)

    generator = torch.Generator().manual_seed(derived_seed(seed, TRACE_STREAM))
    quadratic_forms = np.empty(samples)
    for sample in range(samples):
        vector = [
            torch.randint(0, 2, p.shape, generator=generator).to(p.dtype) * 2 - 1
            for p in parameters
        ]
        products = torch.autograd.grad(gradients, parameters, grad_outputs=vector,
                                       retain_graph=True)
        quadratic_forms[sample] = sum(float((h * v).sum()) for h, v in zip(products, vector,
                                                                          strict=True))
    mean = float(quadratic_forms.mean())
    stderr = float(quadratic_forms.std(ddof=1) / math.sqrt(samples))
    return mean, stderr


def single_model_module(model: Model, model_params: BaseModel,
                        weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Wrap one model's parameters (no leading model dimension) as a fresh ``nn.Module``.

    The parameters are float64 copies. ``forward(x)`` returns the model's
    output for inputs ``(n, d)`` without the model dimension, which may be
    something other than logits: only ``model.loss`` interprets it.
    """
    return _single_model_class()(model, model_params, weights)


def mean_loss_criterion(model: Model, model_params: BaseModel) -> Criterion:
    """Return the criterion: the mean of ``model.loss`` over the points, for one model's output."""

    def criterion(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return model.loss(model_params, output[None], targets).mean()

    return criterion


def derived_seed(seed: int, stream: int) -> int:
    """Seed of random stream ``stream`` of the trial whose seed is ``seed``."""
    import numpy as np

    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


@functools.cache
def _single_model_class() -> type[torch.nn.Module]:
    import torch

    class SingleModel(torch.nn.Module):
        """One model of a stacked batch; parameter names are kept in ``names``."""

        def __init__(self, model: Model, model_params: BaseModel,
                     weights: dict[str, torch.Tensor]) -> None:
            super().__init__()
            self.model = model
            self.model_params = model_params
            # Names such as "layers.0.weight" contain dots, which nn.Module
            # rejects as attribute names, so the tensors sit in a list.
            self.names = list(weights)
            self.tensors = torch.nn.ParameterList(
                torch.nn.Parameter(w.detach().to(torch.float64).clone()) for w in weights.values()
            )

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            stacked = {name: p[None] for name, p in zip(self.names, self.tensors, strict=True)}
            return self.model.forward(self.model_params, stacked, inputs)[0]

    return SingleModel


def _pyhessian_computer(module: torch.nn.Module, criterion: Criterion, inputs: torch.Tensor,
                        targets: torch.Tensor, seed: int) -> Any:
    """Build pyhessian's ``hessian`` object on CPU, which evaluates the loss and its gradient."""
    import torch
    from pyhessian import hessian

    with torch.enable_grad(), warnings.catch_warnings():
        # pyhessian calls backward(create_graph=True), which warns about a
        # reference cycle between parameters and gradients. The cycle is
        # broken by clearing the gradients afterwards.
        warnings.filterwarnings("ignore", message=r"Using backward\(\) with create_graph=True",
                                category=UserWarning)
        loss = criterion(module(inputs), targets).detach()
        _check_finite("training loss", float(loss), seed)
        return hessian(module, criterion, data=(inputs, targets), cuda=False)


def _rayleigh_quotient(computer: Any, vector: list[torch.Tensor]) -> tuple[float, float]:
    """Return vᵀHv / vᵀv and the relative residual ‖Hv − λv‖ / (|λ| ‖v‖) of ``vector``."""
    from pyhessian.utils import hessian_vector_product

    products = hessian_vector_product(computer.gradsH, computer.params, vector)
    squared_norm = sum(float((v * v).sum()) for v in vector)
    if squared_norm == 0.0:
        # pyhessian's vector is zero only when H v was exactly zero.
        return 0.0, 0.0
    eigenvalue = sum(float((h * v).sum()) for h, v in zip(products, vector, strict=True))
    eigenvalue /= squared_norm
    residual_squared = sum(
        float(((h - eigenvalue * v) ** 2).sum()) for h, v in zip(products, vector, strict=True)
    )
    scale = abs(eigenvalue) * math.sqrt(squared_norm)
    residual = math.sqrt(residual_squared) / scale if scale > 0 else math.inf
    return eigenvalue, residual


def _clear_gradients(parameters: list[torch.Tensor]) -> None:
    for parameter in parameters:
        parameter.grad = None


def _check_finite_weights(weights: dict[str, torch.Tensor], seed: int) -> None:
    for name, tensor in weights.items():
        bad = int((~tensor.isfinite()).sum())
        if bad:
            msg = (f"Hessian spectrum: weights {name!r} of the model with seed {seed} contain "
                   f"{bad} NaN or infinite value(s); check the training of this seed for "
                   f"divergence (for example, lower the learning rate)")
            raise NumericalError(msg)


def _check_finite_gradient(gradients: list[torch.Tensor], seed: int) -> None:
    import torch

    for gradient in gradients:
        # pyhessian stores the float 0.0 for a parameter without a gradient.
        if isinstance(gradient, torch.Tensor) and not bool(gradient.isfinite().all()):
            msg = (f"Hessian spectrum: the gradient of the training loss of the model with seed "
                   f"{seed} contains NaN or infinite values; check the training inputs and the "
                   f"weights of this seed for overflow")
            raise NumericalError(msg)


def _check_finite(quantity: str, value: float, seed: int) -> None:
    if not math.isfinite(value):
        msg = (f"Hessian spectrum: the {quantity} of the model with seed {seed} is {value}; "
               f"check the training inputs and the weights of this seed for NaN, infinite or "
               f"overflowing values")
        raise NumericalError(msg)
