"""Full-batch training of stacked models: the loop behind training and retraining."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ifval.training.optim import BatchedAdam, BatchedPlateau

logger = logging.getLogger(__name__)

LossFunction = Callable[[dict[str, torch.Tensor]], torch.Tensor]
"""Maps stacked parameters to the data term of each model's objective, shape ``(B,)``."""

ValueAndGrad = Callable[[dict[str, torch.Tensor], bool],
                        tuple[torch.Tensor | None, dict[str, torch.Tensor]]]
"""Maps stacked parameters and whether the value is needed to ``(values or None, gradients)``.

Values have shape ``(B,)``; gradients are those of ``values.sum()``, so each
model gets the gradient of its own objective. Weight decay is not included:
the optimizer adds it.
"""


def autograd_value_and_grad(loss_function: LossFunction) -> ValueAndGrad:
    """Differentiate ``loss_function`` with autograd."""

    def value_and_grad(weights: dict[str, torch.Tensor], need_value: bool):  # type: ignore[no-untyped-def]
        leaves = {name: w.detach().requires_grad_(True) for name, w in weights.items()}
        with torch.enable_grad():
            values = loss_function(leaves)
            grads = torch.autograd.grad(values.sum(), list(leaves.values()))
        return values.detach(), dict(zip(leaves, grads, strict=True))

    return value_and_grad


@dataclass
class FitSettings:
    """Optimizer settings shared by training and retraining."""

    epochs: int
    lr: float
    weight_decay: torch.Tensor
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    plateau_factor: float | None = None
    plateau_patience: int = 100
    plateau_threshold: float = 1e-4
    plateau_min_lr: float = 0.0
    records: int = 100
    """How many evenly spaced epochs the history keeps."""


@dataclass
class FitResult:
    """Parameters after training and what happened on the way, per model."""

    weights: dict[str, torch.Tensor]
    final_loss: torch.Tensor
    final_lr: torch.Tensor
    lr_reductions: torch.Tensor
    history_epochs: list[int] = field(default_factory=list)
    history_loss: list[torch.Tensor] = field(default_factory=list)
    history_probe: list[torch.Tensor] = field(default_factory=list)
    loss_window_start: torch.Tensor | None = None
    """Loss at 90% of the epochs, to report the change over the last tenth."""


PROGRESS_UPDATES = 200
"""How many times per fit an epoch callback made by :func:`epoch_reporter` fires."""


def epoch_reporter(report: Callable[[str, int, int], None] | None, stage: str,
                   epochs: int) -> Callable[[int], None] | None:
    """Build an ``on_epoch`` callback passing (stage, epochs done, epochs) to ``report``."""
    if report is None:
        return None
    every = max(1, epochs // PROGRESS_UPDATES)

    def on_epoch(epoch: int) -> None:
        done = epoch + 1
        if done % every == 0 or done == epochs:
            report(stage, done, epochs)

    return on_epoch


def record_epochs(epochs: int, records: int) -> set[int]:
    """Evenly spaced epochs to keep in the history, the first and the last included."""
    if records <= 1 or epochs <= 1:
        return {0, epochs}
    step = max(1, epochs // (records - 1))
    kept = set(range(0, epochs, step))
    kept.add(epochs)
    return kept


def fit(
    weights: dict[str, torch.Tensor],
    value_and_grad: ValueAndGrad,
    settings: FitSettings,
    probe: LossFunction | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> FitResult:
    """Train stacked models with full-batch Adam and an optional plateau scheduler.

    ``value_and_grad`` gives the data term and its gradient (see
    :func:`autograd_value_and_grad` to build one from a loss function).
    ``weights`` are copied; the originals are left unchanged. Values may carry
    extra dimensions after the model dimension when no plateau scheduler is
    used. ``probe`` (for example the test loss) is recorded
    beside the loss in the history. Epoch ``e`` of the history is the state
    after ``e`` optimizer steps.
    """
    names = list(weights)
    params = [weights[name].detach().clone() for name in names]
    size = params[0].shape[0]
    dtype = params[0].dtype
    lr = torch.full((size,), settings.lr, dtype=dtype)
    optimizer = BatchedAdam(params, lr, settings.weight_decay.to(dtype), settings.betas,
                            settings.eps)
    scheduler = None
    if settings.plateau_factor is not None:
        scheduler = BatchedPlateau(optimizer, settings.plateau_factor, settings.plateau_patience,
                                   settings.plateau_threshold, settings.plateau_min_lr)
    kept = record_epochs(settings.epochs, settings.records)
    window_epoch = int(settings.epochs * 0.9)
    result = FitResult(weights={}, final_loss=torch.empty(0), final_lr=lr,
                       lr_reductions=torch.zeros(size, dtype=torch.long))

    def as_dict() -> dict[str, torch.Tensor]:
        return dict(zip(names, params, strict=True))

    for epoch in range(settings.epochs):
        need_value = scheduler is not None or epoch in kept or epoch == window_epoch
        values, grads = value_and_grad(as_dict(), need_value)
        if need_value:
            _remember(result, epoch, kept, window_epoch, values, probe, as_dict)
        optimizer.step([grads[name] for name in names])
        if scheduler is not None:
            scheduler.step(values)
        if on_epoch is not None:
            on_epoch(epoch)

    final, _ = value_and_grad(as_dict(), True)
    _remember(result, settings.epochs, kept, window_epoch, final, probe, as_dict)
    result.weights = dict(zip(names, params, strict=True))
    result.final_loss = final
    result.final_lr = optimizer.lr
    if scheduler is not None:
        result.lr_reductions = scheduler.reductions
    return result


def _remember(
    result: FitResult,
    epoch: int,
    kept: set[int],
    window_epoch: int,
    losses: torch.Tensor,
    probe: LossFunction | None,
    as_dict: Callable[[], dict[str, torch.Tensor]],
) -> None:
    if epoch == window_epoch:
        result.loss_window_start = losses.clone()
    if epoch not in kept:
        return
    result.history_epochs.append(epoch)
    result.history_loss.append(losses.clone())
    if probe is not None:
        with torch.no_grad():
            result.history_probe.append(probe(as_dict()).detach())
