"""Adam and ReduceLROnPlateau for ``B`` models stepped together.

Every state variable carries the leading model dimension, so each model
follows the update ``torch.optim.Adam`` and
``torch.optim.lr_scheduler.ReduceLROnPlateau`` would give it alone, with its
own learning rate, weight decay, moment estimates and plateau counters. The
arithmetic is the same; only the rounding of batched sums differs.
"""

from __future__ import annotations

import torch


def _per_model(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a ``(B,)`` tensor to broadcast against ``like`` of shape ``(B, ...)``."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


class BatchedAdam:
    """Adam with L2 weight decay (``weight_decay`` adds w·θ to the gradient), per model.

    ``lr`` and ``weight_decay`` are ``(B,)`` tensors; the plateau scheduler
    changes ``lr`` in place.
    """

    def __init__(
        self,
        params: list[torch.Tensor],
        lr: torch.Tensor,
        weight_decay: torch.Tensor,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = params
        self.lr = lr.clone()
        self.weight_decay = weight_decay
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.step_count = 0
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.decay_any = bool((weight_decay != 0).any())

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        self.step_count += 1
        bias_correction1 = 1 - self.beta1**self.step_count
        bias_correction2_sqrt = (1 - self.beta2**self.step_count) ** 0.5
        step_size = self.lr / bias_correction1
        for param, grad, exp_avg, exp_avg_sq in zip(
            self.params, grads, self.exp_avg, self.exp_avg_sq, strict=True
        ):
            if self.decay_any:
                grad = grad + _per_model(self.weight_decay, param) * param
            exp_avg.lerp_(grad, 1 - self.beta1)
            exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
            # Same order as torch.optim.Adam: (m / denom) first, then the step size.
            param.sub_(exp_avg / denom * _per_model(step_size, param))


class BatchedPlateau:
    """ReduceLROnPlateau in mode ``min`` with a relative threshold and no cooldown, per model."""

    def __init__(
        self,
        optimizer: BatchedAdam,
        factor: float,
        patience: int,
        threshold: float = 1e-4,
        min_lr: float = 0.0,
        eps: float = 1e-8,
    ) -> None:
        self.optimizer = optimizer
        self.factor = factor
        self.patience = patience
        self.threshold = threshold
        self.min_lr = min_lr
        self.eps = eps
        size = optimizer.lr.shape[0]
        self.best = torch.full((size,), float("inf"), dtype=optimizer.lr.dtype)
        self.bad_epochs = torch.zeros(size, dtype=torch.long)
        self.reductions = torch.zeros(size, dtype=torch.long)

    @torch.no_grad()
    def step(self, metric: torch.Tensor) -> None:
        metric = metric.to(self.best.dtype)
        improved = metric < self.best * (1 - self.threshold)
        self.best = torch.where(improved, metric, self.best)
        self.bad_epochs = torch.where(improved, 0, self.bad_epochs + 1)
        reduce = self.bad_epochs > self.patience
        lr = self.optimizer.lr
        new_lr = torch.clamp(lr * self.factor, min=self.min_lr)
        changed = reduce & (lr - new_lr > self.eps)
        self.optimizer.lr = torch.where(changed, new_lr, lr)
        self.reductions += changed.long()
        self.bad_epochs = torch.where(reduce, 0, self.bad_epochs)
