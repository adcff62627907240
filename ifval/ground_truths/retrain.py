"""Ground truth ``retrain_from_optimum``: drop a point, fine-tune from θ̂, measure the test loss.

All B × k retrains of a batch are stepped together as one stack of models.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

import ifval
from ifval.kinds import GroundTruth, Normalisation, TrainedBatch, TruthResult

logger = logging.getLogger(__name__)

TRAJECTORY_POINTS = 50
"""Evenly spaced epochs at which each retrain's test loss is stored."""


class RetrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layers: Literal["last", "all"] = Field(
        "last", description="Fine-tune the last layer only (features fixed) or every layer."
    )
    epochs: int = Field(7500, ge=1, description="Full-batch Adam steps of each retrain.")
    lr: float = Field(1e-3, gt=0, description="Learning rate of the fresh Adam optimizer.")
    normalisation: Normalisation = Field(
        "original_n",
        description="`original_n`: data term (1/n) Σ_{j≠i} ℓ_j (Koh & Liang's ε = −1/n); "
        "`remaining`: mean over the n − 1 remaining points.",
    )


class RetrainFromOptimum(GroundTruth):
    """ℓ(z_test, θ̂_{-i}) − ℓ(z_test, θ̂), with θ̂_{-i} reached by fine-tuning from θ̂.

    Each retrain uses a fresh Adam optimizer (no plateau schedule) on the
    training objective without point i, weight decay included. Diagnostics per
    retrain: the final gradient norm of that objective, its change over the
    last tenth of the epochs, the distance travelled from θ̂ and the test-loss
    trajectory.
    """

    name = "retrain_from_optimum"
    description = "Fine-tune from θ̂ without the point for a fixed number of epochs (Koh & Liang)."
    Params = RetrainParams

    def normalisation(self, params: RetrainParams) -> Normalisation:  # type: ignore[override]
        return params.normalisation

    def measure(self, params: RetrainParams, batch: TrainedBatch,  # type: ignore[override]
                points: np.ndarray) -> TruthResult:
        import torch

        from ifval.training.fit import FitSettings, fit

        model, model_params = batch.model, batch.model_params
        size, k = points.shape
        n = batch.n_train
        dtype = batch.weights[next(iter(batch.weights))].dtype

        keep = torch.ones(size, k, n, dtype=dtype)
        rows = torch.as_tensor(points, dtype=torch.long)
        keep.scatter_(2, rows[..., None], 0.0)
        denominator = float(n if params.normalisation == "original_n" else n - 1)
        keep = keep.reshape(size * k, n) / denominator

        weight_name, bias_name = model.last_layer_names(model_params)
        if params.layers == "last":
            trainable = [weight_name, bias_name]
            with torch.no_grad():
                feats_train = model.features(model_params, batch.weights, batch.x_train)
                feats_test = model.features(model_params, batch.weights, batch.x_test)

            def outputs(weights, on_test: bool):  # type: ignore[no-untyped-def]
                # The k retrains of model b share its features, so their heads are
                # laid side by side: one (n, h) @ (h, k·C) product per model.
                feats = feats_test if on_test else feats_train
                weight = weights[weight_name]
                hidden, classes = weight.shape[1:]
                side_by_side = weight.reshape(size, k, hidden, classes).permute(0, 2, 1, 3)
                logits = feats @ side_by_side.reshape(size, hidden, k * classes)
                logits = logits.reshape(size, -1, k, classes)
                logits = logits + weights[bias_name].reshape(size, 1, k, classes)
                return logits.permute(0, 2, 1, 3).reshape(size * k, -1, classes)
        else:
            trainable = list(batch.weights)

            def outputs(weights, on_test: bool):  # type: ignore[no-untyped-def]
                x = batch.x_test if on_test else batch.x_train
                return model.forward(model_params, {**weights}, x)

        start = {name: batch.weights[name].repeat_interleave(k, dim=0) for name in trainable}

        def data_term(weights):  # type: ignore[no-untyped-def]
            losses = model.loss(model_params, outputs(weights, False), batch.y_train)
            return (losses * keep).sum(dim=1)

        def test_loss(weights):  # type: ignore[no-untyped-def]
            return model.loss(model_params, outputs(weights, True), batch.y_test).mean(dim=1)

        settings = FitSettings(
            epochs=params.epochs,
            lr=params.lr,
            weight_decay=batch.weight_decay.repeat_interleave(k),
            records=TRAJECTORY_POINTS,
        )
        result = fit(start, data_term, settings, probe=test_loss)

        with torch.no_grad():
            base = test_loss(start)
            final = test_loss(result.weights)
        values = (final - base).reshape(size, k).numpy()
        diagnostics = self._diagnostics(result, start, data_term, settings, size, k)
        return TruthResult(values, diagnostics)

    @staticmethod
    def _diagnostics(result, start, data_term, settings, size: int, k: int):  # type: ignore[no-untyped-def]
        import torch

        weights = {name: w.clone().requires_grad_(True) for name, w in result.weights.items()}
        objective = data_term(weights)
        decay = settings.weight_decay.to(objective.dtype)
        for w in weights.values():
            penalty = 0.5 * decay.reshape(-1, *([1] * (w.dim() - 1))) * w.pow(2)
            objective = objective + penalty.flatten(1).sum(dim=1)
        grads = torch.autograd.grad(objective.sum(), list(weights.values()))
        grad_norm = torch.sqrt(sum(g.flatten(1).pow(2).sum(dim=1) for g in grads))
        distance = torch.sqrt(sum(
            (result.weights[name] - start[name]).flatten(1).pow(2).sum(dim=1) for name in start
        ))
        window = result.loss_window_start
        change = (result.final_loss - window) if window is not None else torch.zeros_like(grad_norm)
        trajectory = torch.stack(result.history_probe, dim=1) if result.history_probe else None

        out: list[list[dict]] = []
        for b in range(size):
            row = []
            for j in range(k):
                r = b * k + j
                row.append({
                    "grad_norm": float(grad_norm[r]),
                    "loss_change_last_tenth": float(change[r]),
                    "distance_from_optimum": float(distance[r]),
                    "trajectory_epochs": list(result.history_epochs),
                    "trajectory_test_loss": (
                        trajectory[r].tolist() if trajectory is not None else []
                    ),
                })
            out.append(row)
        return out


@ifval.hookimpl
def ifval_ground_truths() -> list[GroundTruth]:
    return [RetrainFromOptimum()]
