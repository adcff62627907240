"""Ground truth ``retrain_from_optimum``: drop a point, fine-tune from θ̂, measure the test loss.

All B × k retrains of a batch are stepped together as one stack of models.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

import ifval
from ifval.ground_truths.weights import removal_weights
from ifval.kinds import GroundTruth, Normalisation, TrainedBatch, TruthResult
from ifval.settings import Plateau

if TYPE_CHECKING:
    import torch

    from ifval.training.fit import FitResult

logger = logging.getLogger(__name__)

TRAJECTORY_POINTS = 50
"""Evenly spaced epochs at which each retrain's test loss is stored."""


class RetrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layers: Literal["last", "all"] = Field(
        "last", description="Fine-tune the last layer only (features fixed) or every layer."
    )
    epochs: int = Field(7500, ge=1, strict=True,
                        description="Full-batch Adam steps of each retrain.")
    lr: float = Field(1e-3, gt=0, description="Learning rate of the fresh Adam optimizer.")
    normalisation: Normalisation = Field(
        "original_n",
        description="`original_n`: data term (1/n) Σ_{j≠i} ℓ_j (Koh & Liang's ε = −1/n); "
        "`remaining`: mean over the n − 1 remaining points.",
    )
    plateau: Plateau | None = Field(
        None, description="ReduceLROnPlateau on each retrain's objective; null keeps lr fixed."
    )
    batch_size: int | None = Field(
        None, ge=1, strict=True,
        description="Minibatch size: each epoch visits the training points in shuffled "
        "minibatches (one Adam step each), the weights of a minibatch's kept points scaled "
        "by n / size so its gradient is an unbiased estimate of the full one; null steps "
        "on the full batch.",
    )
    grad_tol: float | None = Field(
        None, gt=0,
        description="Convergence criterion: a retrain stops once the gradient norm of its "
        "objective (weight decay included) is at most this; `epochs` is then the maximum.",
    )
    patience: int | None = Field(
        None, ge=1, strict=True,
        description="Early stopping: a retrain stops after this many epochs without its "
        "objective improving by the relative `stop_threshold`; null runs every epoch.",
    )
    stop_threshold: float = Field(
        0.0, ge=0, description="Relative improvement that resets the `patience` count."
    )
    basin_tolerance: float = Field(
        0.1, gt=0,
        description="Flag a retrain as having left its basin (`basin_jump`) when its objective "
        "rises above the starting value by more than this fraction at a recorded epoch.",
    )
    baseline: Literal["optimum", "retrained"] = Field(
        "optimum",
        description="Test loss subtracted from each retrain's: `optimum` uses ℓ(z_test, θ̂); "
        "`retrained` uses θ̂ fine-tuned the same way on all n points, which cancels drift "
        "that does not come from the removal. The drift is recorded either way.",
    )


class RetrainFromOptimum(GroundTruth):
    """ℓ(z_test, θ̂_{-i}) − ℓ(z_test, θ̂), with θ̂_{-i} reached by fine-tuning from θ̂.

    Each retrain uses a fresh Adam optimizer (and, when set, a plateau
    schedule of its own) on the training objective without point i, weight
    decay included. One extra retrain per model removes nothing. Its change in
    test loss (``baseline_drift`` in the diagnostics) shows how far the
    fine-tuning moves θ̂ on its own, for example when θ̂ was not an optimum. Diagnostics per
    retrain: the final gradient norm of that objective, its change over the
    last tenth of the epochs, the distance travelled from θ̂ and the test-loss
    trajectory.
    """

    name = "retrain_from_optimum"
    description = "Fine-tune from θ̂ without the point for a fixed number of epochs (Koh & Liang)."
    Params = RetrainParams

    def normalisation(self, params: RetrainParams) -> Normalisation:  # type: ignore[override]
        return params.normalisation

    supports_groups = True

    def measure_groups(self, params: RetrainParams, batch: TrainedBatch,  # type: ignore[override]
                       groups: np.ndarray) -> TruthResult:
        """Remove each group of m points at once; the same procedure as :meth:`measure`."""
        return self.measure(params, batch, groups)

    def measure(self, params: RetrainParams, batch: TrainedBatch,  # type: ignore[override]
                points: np.ndarray) -> TruthResult:
        import torch

        size, k = points.shape[:2]
        n = batch.n_train
        dtype = next(iter(batch.weights.values())).dtype
        # Row k of each model removes nothing: the same fine-tuning on all n
        # points, which measures the drift that does not come from a removal.
        keep = removal_weights(points, n, params.normalisation, dtype)

        retrain = _LastLayerRetrain if params.layers == "last" else _AllLayerRetrain
        run = retrain(batch, keep)
        result = run.fit(params)
        with torch.no_grad():
            base = batch.model.loss(batch.model_params,
                                    batch.model.forward(batch.model_params, batch.weights,
                                                        batch.x_test),
                                    batch.y_test).mean(dim=1)
        final = result.history_probe[-1].reshape(size, k + 1)
        drift = final[:, k] - base
        reference = base if params.baseline == "optimum" else final[:, k]
        values = (final[:, :k] - reference[:, None]).numpy()

        diagnostics = run.diagnostics(result, params.basin_tolerance)
        if params.batch_size is not None:
            # Minibatch fits count optimizer steps; report epochs (passes over the data).
            steps_per_epoch = -(-n // params.batch_size)
            for row in diagnostics:
                for entry in row:
                    entry["trajectory_epochs"] = [e / steps_per_epoch
                                                  for e in entry["trajectory_epochs"]]
                    if entry["stopped_epoch"] is not None:
                        entry["stopped_epoch"] /= steps_per_epoch
        for b, row in enumerate(diagnostics):
            row.pop()
            for entry in row:
                entry["baseline_drift"] = float(drift[b])
        return TruthResult(values, diagnostics)


class _Retrain:
    """Retrains stacked ``B·k`` deep, retrain ``b·k + j`` removing ``points[b, j]`` from model b."""

    start: dict[str, torch.Tensor]

    def __init__(self, batch: TrainedBatch, keep: torch.Tensor) -> None:
        self.batch = batch
        self.size, self.k, _ = keep.shape
        self.keep = keep
        self.decay = batch.weight_decay.repeat_interleave(self.k)

    def objective(self):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def test_loss(self, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def fit(self, params: RetrainParams) -> FitResult:
        from ifval.training.fit import FitSettings, epoch_reporter, fit

        plateau = params.plateau
        objective = self.objective()
        steps = params.epochs
        if params.batch_size is not None:
            objective = self._minibatch_objective(params.batch_size)
            steps = params.epochs * -(-self.batch.n_train // params.batch_size)
        settings = FitSettings(
            epochs=steps, lr=params.lr, weight_decay=self.decay,
            records=TRAJECTORY_POINTS,
            stop_grad_tol=params.grad_tol, stop_patience=params.patience,
            stop_threshold=params.stop_threshold,
            plateau_factor=plateau.factor if plateau else None,
            plateau_patience=plateau.patience if plateau else 0,
            plateau_threshold=plateau.threshold if plateau else 0.0,
            plateau_min_lr=plateau.min_lr if plateau else 0.0,
        )
        on_epoch = epoch_reporter(self.batch.progress, "retraining", steps)
        return fit(self.start, objective, settings, probe=self.test_loss, on_epoch=on_epoch)

    def _minibatch_objective(self, batch_size: int):  # type: ignore[no-untyped-def]
        """Return a ``ValueAndGrad`` that steps through shuffled minibatches, one per call.

        Each model draws its own permutation of the training rows per epoch,
        from a generator seeded by its trial seed, and its retrains share it.
        The objective is rebuilt for each minibatch, which costs about as
        much as the step itself.
        """
        import torch

        n = self.batch.n_train
        steps_per_epoch = -(-n // batch_size)
        generators = [torch.Generator().manual_seed(
            int(np.random.SeedSequence([seed, 4]).generate_state(1)[0]))
            for seed in self.batch.seeds]
        full_keep = self.keep
        state = {"step": 0, "orders": []}

        def value_and_grad(weights, need_value):  # type: ignore[no-untyped-def]
            position = state["step"] % steps_per_epoch
            if position == 0:
                state["orders"] = [torch.randperm(n, generator=g) for g in generators]
            mask = torch.zeros(self.size, 1, n, dtype=full_keep.dtype)
            for b, order in enumerate(state["orders"]):
                rows = order[position * batch_size : (position + 1) * batch_size]
                mask[b, 0, rows] = n / len(rows)
            state["step"] += 1
            self.keep = full_keep * mask
            try:
                return self.objective()(weights, need_value)
            finally:
                self.keep = full_keep

        return value_and_grad

    def diagnostics(self, result: FitResult, basin_tolerance: float) -> list[list[dict]]:
        import torch

        _, grads = self.objective()(result.weights, False)
        squared = torch.zeros_like(self.decay)
        moved = torch.zeros_like(self.decay)
        for name, weight in result.weights.items():
            decay = self.decay.to(weight.dtype).reshape(-1, *([1] * (weight.dim() - 1)))
            squared = squared + (grads[name] + decay * weight).flatten(1).pow(2).sum(dim=1)
            moved = moved + (weight - self.start[name]).flatten(1).pow(2).sum(dim=1)
        return _diagnostics_table(result, torch.sqrt(squared), torch.sqrt(moved), self.size,
                                  self.k, basin_tolerance)


class _LastLayerRetrain(_Retrain):
    """Head-only retrains on fixed features.

    The k retrains of model b share its features, so each step computes all
    their logits with one ``(C·k, h) @ (h, n)`` product per model, class-major:
    the softmax over the C classes is then elementwise work on C contiguous
    ``(k, n)`` slices, which is several times faster than torch's softmax over
    a last dimension of size 3.
    """

    def __init__(self, batch: TrainedBatch, keep: torch.Tensor) -> None:
        import torch

        super().__init__(batch, keep)
        model, params = batch.model, batch.model_params
        self.weight_name, self.bias_name = model.last_layer_names(params)
        self.hidden, self.classes = batch.weights[self.weight_name].shape[1:]
        self.affine = model.has_affine_head
        with torch.no_grad():
            self.feats_train = model.features(params, batch.weights, batch.x_train)
            self.feats_test = model.features(params, batch.weights, batch.x_test)
        self.start = {
            "weight": batch.weights[self.weight_name].repeat_interleave(self.k, dim=0),
            "bias": batch.weights[self.bias_name].repeat_interleave(self.k, dim=0),
        }
        # A model with its own head, loss or penalty goes through them with
        # autograd; the parameters outside the last layer stay fixed at θ̂.
        self.fixed = {name: w.repeat_interleave(self.k, dim=0)
                      for name, w in batch.weights.items()
                      if name not in (self.weight_name, self.bias_name)}

    def _class_major(self, weights: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B·k, h, C)`` and ``(B·k, C)`` → ``(B, C·k, h)`` and ``(B, C·k, 1)``."""
        size, k, hidden, classes = self.size, self.k, self.hidden, self.classes
        weight = weights["weight"].reshape(size, k, hidden, classes).permute(0, 3, 1, 2)
        bias = weights["bias"].reshape(size, k, classes).permute(0, 2, 1)
        return weight.reshape(size, classes * k, hidden), bias.reshape(size, classes * k, 1)

    def _logits(self, weights: dict[str, torch.Tensor], on_test: bool) -> torch.Tensor:
        """Logits of shape ``(B, C, k, n)``."""
        import torch

        feats = self.feats_test if on_test else self.feats_train
        weight, bias = self._class_major(weights)
        logits = torch.baddbmm(bias, weight, feats.transpose(1, 2))
        return logits.reshape(self.size, self.classes, self.k, -1)

    def _full_weights(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Combine the fixed layers of the ``B·k`` retrains with their trained last layer."""
        return {**self.fixed, self.weight_name: weights["weight"],
                self.bias_name: weights["bias"]}

    def _losses(self, weights: dict[str, torch.Tensor], on_test: bool) -> torch.Tensor:
        """Per-sample losses of shape ``(B·k, n)``."""
        batch = self.batch
        labels = batch.y_test if on_test else batch.y_train
        if not self.affine:
            feats = (self.feats_test if on_test else self.feats_train)
            output = batch.model.head(batch.model_params, self._full_weights(weights),
                                      feats.repeat_interleave(self.k, dim=0))
            return batch.model.loss(batch.model_params, output, labels)
        logits = self._logits(weights, on_test).permute(0, 2, 3, 1)
        flat = logits.reshape(self.size * self.k, -1, self.classes)
        return batch.model.loss(batch.model_params, flat, labels)

    def test_loss(self, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._losses(weights, True).mean(dim=1)

    def objective(self):  # type: ignore[no-untyped-def]
        import torch

        from ifval.training.fit import autograd_value_and_grad

        sample_weights = self.keep.reshape(self.size * self.k, -1)
        if not self.affine:
            model, model_params = self.batch.model, self.batch.model_params
            written = model.head_objective(model_params, self.batch.weights, self.feats_train,
                                           self.batch.y_train, self.keep)
            if written is not None:
                return written

            def objective(weights):  # type: ignore[no-untyped-def]
                total = (self._losses(weights, False) * sample_weights).sum(dim=1)
                penalty = model.penalty(model_params, self._full_weights(weights))
                return total if penalty is None else total + penalty

            return autograd_value_and_grad(objective)

        size, k, hidden, classes = self.size, self.k, self.hidden, self.classes
        one_hot = torch.nn.functional.one_hot(self.batch.y_train, classes).to(self.keep.dtype)
        keep = self.keep[:, None]
        # ∂/∂logits of Σ_i a_i ℓ_i is a_i (softmax − one-hot); −a_i · one-hot is fixed.
        kept_classes = (keep * one_hot.T[None, :, None, :]).contiguous()
        negative_kept_classes = -kept_classes

        def value_and_grad(weights, need_value):  # type: ignore[no-untyped-def]
            logits = self._logits(weights, False)
            largest = logits.amax(dim=1, keepdim=True)
            exponentials = torch.exp(logits - largest)
            total = exponentials.sum(dim=1, keepdim=True)
            upstream = torch.addcmul(negative_kept_classes, exponentials, keep / total)
            values = None
            if need_value:
                log_probs = logits - largest - torch.log(total)
                values = -(log_probs * kept_classes).sum(dim=(1, 3)).reshape(-1)
            flat = upstream.reshape(size, classes * k, -1)
            grad_weight = (flat @ self.feats_train).reshape(size, classes, k, hidden)
            grads = {
                "weight": grad_weight.permute(0, 2, 3, 1).reshape(size * k, hidden, classes),
                "bias": flat.sum(dim=2).reshape(size, classes, k).transpose(1, 2)
                .reshape(size * k, classes),
            }
            return values, grads

        return value_and_grad


class _AllLayerRetrain(_Retrain):
    """Every retrain is a full copy of its model."""

    def __init__(self, batch: TrainedBatch, keep: torch.Tensor) -> None:
        super().__init__(batch, keep)
        self.start = {name: w.repeat_interleave(self.k, dim=0) for name, w in batch.weights.items()}

    def test_loss(self, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = self.batch
        output = batch.model.forward(batch.model_params, weights, batch.x_test)
        return batch.model.loss(batch.model_params, output, batch.y_test).mean(dim=1)

    def objective(self):  # type: ignore[no-untyped-def]
        batch = self.batch
        sample_weights = self.keep.reshape(self.size * self.k, -1)
        return batch.model.objective(batch.model_params, batch.x_train, batch.y_train,
                                     sample_weights)


def objective_rise(result: FitResult) -> torch.Tensor:
    """Largest rise of each retrain's objective above its starting value, relative to that value.

    A descent that starts in a minimum's basin and stays there never climbs
    much, so a large rise means the retrain left the basin it started in,
    the sudden jumps in the retraining curves of Epifano et al. (Figure 5).
    Adam's first steps move every coordinate by about the learning rate
    whatever the gradient, so small rises are normal.
    """
    import torch

    objective = torch.stack([v.reshape(-1) for v in result.history_objective], dim=1)
    start = objective[:, :1]
    rise = (objective - start).amax(dim=1).clamp(min=0.0)
    return rise / start[:, 0].abs().clamp(min=torch.finfo(objective.dtype).tiny)


def _diagnostics_table(result: FitResult, grad_norm: torch.Tensor, distance: torch.Tensor,
                       size: int, k: int, basin_tolerance: float) -> list[list[dict]]:
    import torch

    final = result.final_loss.reshape(-1)
    window = result.loss_window_start
    change = final - window.reshape(-1) if window is not None else torch.zeros_like(final)
    trajectory = torch.stack([p.reshape(-1) for p in result.history_probe], dim=1)
    rise = objective_rise(result)
    stopped = result.stopped_epoch
    table = []
    for b in range(size):
        row = []
        for j in range(k):
            r = b * k + j
            row.append({
                "grad_norm": float(grad_norm[r]),
                "loss_change_last_tenth": float(change[r]),
                "distance_from_optimum": float(distance[r]),
                "objective_rise": float(rise[r]),
                "basin_jump": bool(rise[r] > basin_tolerance),
                "stopped_epoch": int(stopped[r]) if stopped is not None else None,
                "trajectory_epochs": list(result.history_epochs),
                "trajectory_test_loss": trajectory[r].tolist(),
            })
        table.append(row)
    return table


@ifval.hookimpl
def ifval_ground_truths() -> list[GroundTruth]:
    return [RetrainFromOptimum()]
