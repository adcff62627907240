"""Full-batch training of stacked models: the loop behind training and retraining."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ifval.settings import SWA
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
    swa: SWA | None = None
    """Stochastic weight averaging; the averaged parameters are returned."""
    stop_grad_tol: float | None = None
    """Stop a model once the gradient norm of its whole objective is at most this."""
    stop_patience: int | None = None
    """Stop a model after this many epochs without a relative improvement of its objective
    by more than ``stop_threshold``."""
    stop_threshold: float = 0.0


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
    history_objective: list[torch.Tensor] = field(default_factory=list)
    """The whole objective, data term plus (w/2)‖θ‖², at the recorded epochs."""
    loss_window_start: torch.Tensor | None = None
    """Loss at 90% of the epochs, to report the change over the last tenth."""
    swa_snapshots: int = 0
    """Number of parameter snapshots in the SWA average (0 without SWA)."""
    stopped_epoch: torch.Tensor | None = None
    """Epoch at which each model stopped early, or the epoch count for a model that ran on."""


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
    after ``e`` optimizer steps; with SWA the last entry is the average, the
    others are the iterates.
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

    averager = _Averager(settings.swa, settings.epochs, params) if settings.swa else None
    stopper = _Stopper(settings, size, dtype)
    if averager is not None and stopper.enabled:
        raise ValueError("early stopping and SWA cannot be combined in one fit")
    last_epoch = settings.epochs
    for epoch in range(settings.epochs):
        averaging = averager is not None and epoch >= averager.start_epoch
        if averaging:
            averager.set_lr(optimizer, epoch)
        need_value = (scheduler is not None and not averaging) or epoch in kept \
            or epoch == window_epoch or stopper.needs_value
        values, grads = value_and_grad(as_dict(), need_value)
        if need_value:
            _remember(result, epoch, kept, window_epoch, values, probe, as_dict,
                      optimizer.weight_decay)
        if stopper.enabled and stopper.update(epoch, values, grads, params, names, optimizer):
            last_epoch = epoch
            break
        optimizer.step([grads[name] for name in names])
        if averaging:
            averager.update(params, epoch)
        elif scheduler is not None:
            scheduler.step(values)
        if on_epoch is not None:
            on_epoch(epoch)

    if averager is not None and averager.snapshots > 0:
        for param, average in zip(params, averager.averages, strict=True):
            param.copy_(average)
        result.swa_snapshots = averager.snapshots
    final, _ = value_and_grad(as_dict(), True)
    kept.add(last_epoch)
    if not result.history_epochs or result.history_epochs[-1] != last_epoch:
        _remember(result, last_epoch, kept, window_epoch, final, probe, as_dict,
                  optimizer.weight_decay)
    result.weights = dict(zip(names, params, strict=True))
    result.final_loss = final
    result.final_lr = optimizer.lr
    if stopper.enabled:
        result.final_lr = torch.where(stopper.stopped, stopper.lr_at_stop, optimizer.lr)
        result.stopped_epoch = torch.where(stopper.stopped, stopper.epoch_at_stop,
                                           torch.tensor(settings.epochs))
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
    weight_decay: torch.Tensor,
) -> None:
    if epoch == window_epoch:
        result.loss_window_start = losses.clone()
    if epoch not in kept:
        return
    result.history_epochs.append(epoch)
    result.history_loss.append(losses.clone())
    with torch.no_grad():
        squared = sum(w.flatten(1).pow(2).sum(dim=1) for w in as_dict().values())
        decay = weight_decay.reshape(-1, *([1] * (losses.dim() - 1)))
        result.history_objective.append(losses + 0.5 * decay * squared.reshape(decay.shape))
    if probe is not None:
        with torch.no_grad():
            result.history_probe.append(probe(as_dict()).detach())


class _Stopper:
    """Early stopping per model: a stopped model's learning rate is held at zero.

    The objective of the patience test is the data term plus (w/2)‖θ‖², and
    the gradient of the tolerance test includes w θ. The loop ends when
    every model has stopped.
    """

    def __init__(self, settings: FitSettings, size: int, dtype: torch.dtype) -> None:
        self.settings = settings
        self.enabled = settings.stop_grad_tol is not None or settings.stop_patience is not None
        self.needs_value = settings.stop_patience is not None
        self.stopped = torch.zeros(size, dtype=torch.bool)
        self.epoch_at_stop = torch.zeros(size, dtype=torch.long)
        self.lr_at_stop = torch.zeros(size, dtype=dtype)
        self.best = torch.full((size,), float("inf"), dtype=dtype)
        self.bad_epochs = torch.zeros(size, dtype=torch.long)

    @torch.no_grad()
    def update(self, epoch: int, values: torch.Tensor | None, grads: dict[str, torch.Tensor],
               params: list[torch.Tensor], names: list[str], optimizer: BatchedAdam) -> bool:
        """Stop the models that meet a criterion at this epoch; return whether all have stopped."""
        decay = optimizer.weight_decay
        stop = torch.zeros_like(self.stopped)
        if self.settings.stop_grad_tol is not None:
            squared = torch.zeros_like(self.best)
            for name, param in zip(names, params, strict=True):
                full = grads[name] + decay.reshape(-1, *([1] * (param.dim() - 1))) * param
                squared += full.flatten(1).pow(2).sum(dim=1)
            stop |= squared.sqrt() <= self.settings.stop_grad_tol
        if self.settings.stop_patience is not None and values is not None:
            penalty = sum(p.flatten(1).pow(2).sum(dim=1) for p in params)
            objective = values.reshape(-1) + 0.5 * decay * penalty
            improved = objective < self.best * (1 - self.settings.stop_threshold)
            self.best = torch.where(improved, objective, self.best)
            self.bad_epochs = torch.where(improved, 0, self.bad_epochs + 1)
            stop |= self.bad_epochs > self.settings.stop_patience
        newly = stop & ~self.stopped
        self.epoch_at_stop = torch.where(newly, epoch, self.epoch_at_stop)
        self.lr_at_stop = torch.where(newly, optimizer.lr, self.lr_at_stop)
        self.stopped |= stop
        optimizer.lr = torch.where(self.stopped, torch.zeros_like(optimizer.lr), optimizer.lr)
        return bool(self.stopped.all())


class _Averager:
    """SWA for stacked models: SWALR's learning-rate annealing and an equal-weight running mean.

    The running mean uses ``torch.optim.swa_utils.get_swa_multi_avg_fn``, the
    update behind ``AveragedModel``; as it works elementwise, each model of
    the stack gets the average of its own snapshots.
    """

    def __init__(self, swa: SWA, epochs: int, params: list[torch.Tensor]) -> None:
        from torch.optim.swa_utils import get_swa_multi_avg_fn

        self.swa = swa
        self.start_epoch = int(swa.start * epochs)
        self.averages = [p.detach().clone() for p in params]
        self.snapshots = 0
        self.start_lr: torch.Tensor | None = None
        self.average_fn = get_swa_multi_avg_fn()

    def set_lr(self, optimizer: BatchedAdam, epoch: int) -> None:
        """Set each model's rate to swa_lr·α + lr₀·(1 − α), α the annealing at this step.

        lr₀ is the model's rate when averaging started; α follows SWALR's
        cosine (1 − cos πt)/2 or linear t, with t = step / anneal_epochs ∈ [0, 1].
        """
        import math

        if self.start_lr is None:
            self.start_lr = optimizer.lr.clone()
        step = epoch - self.start_epoch
        if self.swa.anneal_epochs == 0:
            step = max(1, step)
        t = max(0.0, min(1.0, step / max(1, self.swa.anneal_epochs)))
        alpha = (1 - math.cos(math.pi * t)) / 2 if self.swa.anneal_strategy == "cos" else t
        optimizer.lr = self.swa.lr * alpha + self.start_lr * (1 - alpha)

    @torch.no_grad()
    def update(self, params: list[torch.Tensor], epoch: int) -> None:
        if (epoch - self.start_epoch) % self.swa.frequency != 0:
            return
        if self.snapshots == 0:
            for average, param in zip(self.averages, params, strict=True):
                average.copy_(param)
        else:
            self.average_fn(self.averages, [p.detach() for p in params], self.snapshots)
        self.snapshots += 1
