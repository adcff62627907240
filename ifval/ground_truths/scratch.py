"""Ground truth ``retrain_from_scratch``: train fresh models without the point, several seeds each.

Every removal is paired with a model trained on all n points from the same
initialisation, so the measured change is a difference of two runs that
share their seed. The spread of that difference across seeds is the noise
floor of this ground truth: a true change smaller than it is not resolved.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

import ifval
from ifval.errors import IfvalError
from ifval.ground_truths.weights import removal_weights
from ifval.kinds import GroundTruth, Normalisation, TrainedBatch, TruthResult

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


class ScratchParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seeds: int = Field(
        3, ge=1, le=1000, strict=True,
        description="Fresh initialisations per removed point; their spread is reported.",
    )
    epochs: int | None = Field(
        None, ge=1, strict=True,
        description="Training epochs of each run; null uses the protocol's training epochs.",
    )
    lr: float | None = Field(
        None, gt=0, description="Initial learning rate; null uses the protocol's training lr."
    )
    normalisation: Normalisation = Field(
        "original_n",
        description="`original_n`: data term (1/n) Σ_{j≠i} ℓ_j; `remaining`: mean over the "
        "n − 1 remaining points.",
    )
    max_models: int = Field(
        4096, ge=1, strict=True,
        description="Most models trained side by side at once; lower it to save memory.",
    )


def scratch_seed(trial_seed: int, index: int) -> int:
    """Seed of the ``index``-th fresh initialisation of a trial; never the trial's own seed."""
    return int(np.random.SeedSequence([trial_seed, 3, index]).generate_state(1)[0])


class RetrainFromScratch(GroundTruth):
    """mean_s [ℓ(z_test, θ_{-i,s}) − ℓ(z_test, θ_s)] over S fresh initialisations s.

    θ_{-i,s} and θ_s are trained with the protocol's training recipe
    (optimizer, schedule, weight decay, SWA) from the same initialisation s,
    without and with point i. Diagnostics per point: the per-seed changes,
    their standard deviation (``seed_std``) and standard error, and how far
    the full-data runs end from θ̂ in test loss (``baseline_drift``).
    """

    name = "retrain_from_scratch"
    description = "Train fresh models without the point, several seeds; reports the seed spread."
    Params = ScratchParams

    def normalisation(self, params: ScratchParams) -> Normalisation:  # type: ignore[override]
        return params.normalisation

    supports_groups = True

    def measure_groups(self, params: ScratchParams, batch: TrainedBatch,  # type: ignore[override]
                       groups: np.ndarray) -> TruthResult:
        """Remove each group of m points at once; the same procedure as :meth:`measure`."""
        return self.measure(params, batch, groups)

    def measure(self, params: ScratchParams, batch: TrainedBatch,  # type: ignore[override]
                points: np.ndarray) -> TruthResult:
        import torch

        if batch.training is None:
            msg = ("ground truth 'retrain_from_scratch' needs the training recipe of the batch, "
                   "but none was passed; build the TrainedBatch with `training` set")
            raise IfvalError(msg)
        size, k = points.shape[:2]
        seeds = params.seeds
        dtype = next(iter(batch.weights.values())).dtype
        keep = removal_weights(points, batch.n_train, params.normalisation, dtype)
        # Run (b, j, s) removes points[b, j] (j = k removes nothing) from initialisation s.
        runs = [(b, j, s) for b in range(size) for j in range(k + 1) for s in range(seeds)]
        test_losses = torch.empty(len(runs), dtype=dtype)
        train_losses = torch.empty(len(runs), dtype=dtype)
        for start in range(0, len(runs), params.max_models):
            chunk = runs[start : start + params.max_models]
            test, train = self._train(params, batch, keep, chunk, dtype)
            test_losses[start : start + len(chunk)] = test
            train_losses[start : start + len(chunk)] = train

        test_losses = test_losses.reshape(size, k + 1, seeds)
        changes = (test_losses[:, :k] - test_losses[:, k:]).numpy()
        with torch.no_grad():
            output = batch.model.forward(batch.model_params, batch.weights, batch.x_test)
            at_optimum = batch.model.loss(batch.model_params, output, batch.y_test).mean(dim=1)
        drift = (test_losses[:, k].mean(dim=1) - at_optimum).numpy()
        final_train = train_losses.reshape(size, k + 1, seeds).numpy()
        return TruthResult(changes.mean(axis=2),
                           _diagnostics(changes, drift, final_train, seeds))

    @staticmethod
    def _train(params: ScratchParams, batch: TrainedBatch, keep: torch.Tensor,
               runs: list[tuple[int, int, int]], dtype: torch.dtype
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Train the ``runs`` side by side; return each run's final test and training losses."""
        import torch

        from ifval.training.fit import epoch_reporter, fit

        model, model_params = batch.model, batch.model_params
        weight_name, bias_name = model.last_layer_names(model_params)
        n_classes = int(batch.weights[bias_name].shape[-1])
        n_features = int(batch.x_train.shape[1])
        cache: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        initial = []
        for b, _, s in runs:
            if (b, s) not in cache:
                generator = torch.Generator().manual_seed(scratch_seed(batch.seeds[b], s))
                cache[(b, s)] = model.init(model_params, n_features, n_classes, generator)
            initial.append(cache[(b, s)])
        weights = {name: torch.stack([w[name] for w in initial]).to(dtype) for name in initial[0]}
        sample_weights = torch.stack([keep[b, j] for b, j, _ in runs])
        decay = torch.stack([batch.weight_decay[b] for b, _, _ in runs]).to(dtype)

        assert batch.training is not None
        settings = dataclasses.replace(batch.training, weight_decay=decay, records=2)
        if params.epochs is not None:
            settings = dataclasses.replace(settings, epochs=params.epochs)
        if params.lr is not None:
            settings = dataclasses.replace(settings, lr=params.lr)
        data_term = model.objective(model_params, batch.x_train, batch.y_train, sample_weights)
        on_epoch = epoch_reporter(batch.progress, "retraining from scratch", settings.epochs)
        result = fit(weights, data_term, settings, on_epoch=on_epoch)
        with torch.no_grad():
            output = model.forward(model_params, result.weights, batch.x_test)
            test = model.loss(model_params, output, batch.y_test).mean(dim=1)
            output = model.forward(model_params, result.weights, batch.x_train)
            train = model.loss(model_params, output, batch.y_train).mean(dim=1)
        return test, train


def _diagnostics(changes: np.ndarray, drift: np.ndarray, final_train: np.ndarray,
                 seeds: int) -> list[list[dict]]:
    size, k, _ = changes.shape
    table = []
    for b in range(size):
        row = []
        for j in range(k):
            spread = float(changes[b, j].std(ddof=1)) if seeds > 1 else float("nan")
            row.append({
                "seed_changes": changes[b, j].tolist(),
                "seed_std": spread,
                "seed_stderr": spread / np.sqrt(seeds) if seeds > 1 else float("nan"),
                "final_train_loss": float(final_train[b, j].mean()),
                "baseline_drift": float(drift[b]),
            })
        table.append(row)
    return table


@ifval.hookimpl
def ifval_ground_truths() -> list[GroundTruth]:
    return [RetrainFromScratch()]
