"""Base classes of the six plugin kinds and the objects passed between them.

A plugin is an instance of one of these classes, returned by the matching hook
in :mod:`ifval.hookspecs`. Each declares a unique ``name``, a one-line
``description`` and a pydantic ``Params`` model. The protocol's settings for
the plugin are validated against ``Params`` before anything runs.

Tensors passed to models, estimators and ground truths carry a leading model
dimension ``B`` (the repetitions of one condition trained side by side), even
when ``B`` is 1. This module imports no torch, so listing plugins stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ifval.training.fit import FitSettings

Normalisation = Literal["original_n", "remaining"]
"""Normalisation of a retrain's data term after points are removed.

``original_n``: (1/n) Σ_{j∉U} ℓ_j + (w/2)‖θ‖², Koh & Liang's ε = −1/n.
``remaining``: the mean over the n − |U| remaining points, what a loss with
``reduction="mean"`` does.
"""


class NoParams(BaseModel):
    """Settings of a plugin that takes none."""

    model_config = ConfigDict(extra="forbid")


class PluginBase:
    """Attributes shared by every plugin kind."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams

    def parse_params(self, raw: Mapping[str, Any]) -> BaseModel:
        """Validate raw protocol settings; raises ``pydantic.ValidationError``."""
        return self.Params.model_validate(dict(raw))


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DataSplit:
    """Training and test arrays of one dataset, already standardised.

    ``train_ids`` and ``test_ids`` are row numbers in the original dataset,
    so stored results can name points the way the dataset's users do.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_ids: np.ndarray
    test_ids: np.ndarray
    n_classes: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])


class Dataset(PluginBase):
    """Loads a dataset and splits it into training points and test point(s)."""

    kind = "dataset"

    def load(self, params: BaseModel) -> DataSplit:
        """Load the data and return the standardised training/test split for ``params``."""
        raise NotImplementedError


# -------------------------------------------------------------------------- model


class Model(PluginBase):
    """A family of classifiers evaluated functionally on stacked parameters.

    Parameters are a ``dict`` of tensors whose first dimension indexes the
    ``B`` models of a batch. The last layer is affine, ``features @ W + b``
    with ``W`` of shape ``(B, h, C)`` and ``b`` of shape ``(B, C)``; it is the
    part estimators and ground truths restrict themselves to when asked for
    ``last_layer``.
    """

    kind = "model"

    def init(
        self, params: BaseModel, n_features: int, n_classes: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Draw one model's parameters (no leading model dimension), in float64."""
        raise NotImplementedError

    def last_layer_names(self, params: BaseModel) -> tuple[str, str]:
        """Names of the last layer's weight and bias in the parameter dict."""
        raise NotImplementedError

    def features(
        self, params: BaseModel, weights: Mapping[str, torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        """Input of the last layer, shape ``(B, n, h)``, for inputs ``x`` of shape ``(n, d)``."""
        raise NotImplementedError

    def head(
        self, params: BaseModel, weights: Mapping[str, torch.Tensor], feats: torch.Tensor
    ) -> torch.Tensor:
        """Apply the last layer to its inputs ``feats`` ``(B, n, h)`` from :meth:`features`.

        The default is the affine map to logits ``(B, n, C)``. A model whose
        output is not plain logits (a Bayesian network's means and variances,
        say) overrides this, :meth:`loss` and :meth:`predict` together.
        """
        weight_name, bias_name = self.last_layer_names(params)
        return feats @ weights[weight_name] + weights[bias_name][:, None, :]

    def forward(
        self, params: BaseModel, weights: Mapping[str, torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        """Output of shape ``(B, n, C')``: logits unless :meth:`head` is overridden."""
        return self.head(params, weights, self.features(params, weights, x))

    def predict(self, params: BaseModel, output: torch.Tensor) -> torch.Tensor:
        """Predicted class ``(B, n)`` of outputs from :meth:`forward`; the default is the argmax."""
        return output.argmax(dim=-1)

    def penalty(
        self, params: BaseModel, weights: Mapping[str, torch.Tensor]
    ) -> torch.Tensor | None:
        """Return a parameter-only term of each model's objective, shape ``(B,)``, or None.

        The term is added to the data term in training and in every retrain,
        and estimators include its Hessian, as they do for weight decay (which
        the optimizer adds and is not part of this term). A Bayesian network's
        KL divergence to its prior belongs here. The default has none.
        """
        return None

    def head_objective(
        self, params: BaseModel, weights: Mapping[str, torch.Tensor], feats: torch.Tensor,
        y: torch.Tensor, sample_weights: torch.Tensor,
    ):  # type: ignore[no-untyped-def]
        """Return a ``ValueAndGrad`` for retraining the last layer alone, or None.

        ``weights`` contain the ``B`` trained models, ``feats`` ``(B, n, h)`` their
        fixed features on the training inputs, and ``sample_weights``
        ``(B, k, n)`` the point weights of k retrains per model. The returned
        function takes ``{"weight": (B·k, ...), "bias": (B·k, ...)}``, the last
        layer of retrain ``b·k + j`` of model b, and gives each retrain's data
        term Σ_i a_bji ℓ_i plus :meth:`penalty` with every other parameter
        fixed at θ̂, and its gradient. The default None lets the retrain
        differentiate :meth:`head`, :meth:`loss` and :meth:`penalty` with
        autograd; a model with its own head may write the gradients by hand.
        """
        return None

    @property
    def has_affine_head(self) -> bool:
        """Whether :meth:`head`, :meth:`loss` and :meth:`penalty` are the defaults.

        Fast paths that write the softmax cross-entropy out by hand, and the
        exact convex optimum, apply only then.
        """
        cls = type(self)
        return cls.head is Model.head and cls.loss is Model.loss and cls.penalty is Model.penalty

    def loss(self, params: BaseModel, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample loss ℓ, shape ``(B, n)``, of outputs ``(B, n, C)`` and labels ``(n,)``.

        The default is the cross-entropy of the logits. Training, estimators
        and ground truths all use this one loss.
        """
        import torch

        log_probs = torch.log_softmax(output, dim=-1)
        index = y.expand(output.shape[0], -1)[..., None]
        return -log_probs.gather(-1, index)[..., 0]

    def objective(
        self, params: BaseModel, x: torch.Tensor, y: torch.Tensor, sample_weights: torch.Tensor
    ):  # type: ignore[no-untyped-def]
        """Return a ``ValueAndGrad`` of Σ_i a_bi ℓ(z_i, θ_b) + :meth:`penalty` of each model.

        ``sample_weights`` ``a`` has shape ``(B, n)``: 1/n everywhere for the
        training objective, zero at removed points for a retrain. The default
        differentiates :meth:`forward` and :meth:`loss` with autograd; a
        model may return hand-written gradients instead.
        """
        from ifval.training.fit import autograd_value_and_grad

        def data_term(weights):  # type: ignore[no-untyped-def]
            losses = self.loss(params, self.forward(params, weights, x), y)
            total = (losses * sample_weights).sum(dim=1)
            penalty = self.penalty(params, weights)
            return total if penalty is None else total + penalty

        return autograd_value_and_grad(data_term)


# --------------------------------------------------------------- estimation inputs


@dataclass
class TrainedBatch:
    """``B`` trained models of one condition and everything needed to probe them.

    ``weights`` hold θ̂ for each model; ``weight_decay`` is the w of the
    training objective (1/n) Σ ℓ_i + (w/2)‖θ‖², one value per model.
    """

    model: Model
    model_params: BaseModel
    weights: dict[str, torch.Tensor]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    weight_decay: torch.Tensor
    seeds: list[int]
    progress: Callable[[str, int, int], None] | None = None
    """Receives (stage, steps done, steps in the stage) from long stages; may be None."""
    training: FitSettings | None = None
    """The optimizer settings that reached θ̂, for ground truths that train from scratch."""

    def report(self, stage: str, done: int, total: int) -> None:
        """Pass progress of a long stage (for example a retrain's epochs) to the caller."""
        if self.progress is not None:
            self.progress(stage, done, total)

    @property
    def size(self) -> int:
        return len(self.seeds)

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])


@dataclass
class EstimateResult:
    """Predicted change in test loss, shape ``(B, k)``, for removing each checked point."""

    values: np.ndarray
    info: list[dict[str, Any]] = field(default_factory=list)


class Estimator(PluginBase):
    """Predicts the change in test loss when a training point is removed.

    The value is ℓ(z_test, θ̂_{-i}) − ℓ(z_test, θ̂) predicted for the
    retraining ``normalisation`` given, in the loss's own units.
    """

    kind = "estimator"

    supports_groups: ClassVar[bool] = False
    """Whether :meth:`estimate_groups` is implemented."""

    def estimate(
        self,
        params: BaseModel,
        batch: TrainedBatch,
        points: np.ndarray,
        normalisation: Normalisation,
    ) -> EstimateResult:
        """Estimate for ``points``, an integer array ``(B, k)`` of training rows per model."""
        raise NotImplementedError

    def estimate_groups(
        self,
        params: BaseModel,
        batch: TrainedBatch,
        groups: np.ndarray,
        normalisation: Normalisation,
    ) -> EstimateResult:
        """Estimate the change for removing each group at once, values of shape ``(B, k)``.

        ``groups`` is an integer array ``(B, k, m)``: group j of model b is the
        m distinct training rows ``groups[b, j]``. With ``remaining``, the
        retrain's data term is the mean over the n − m other points.
        """
        raise NotImplementedError


@dataclass
class TruthResult:
    """Measured change in test loss, shape ``(B, k)``, and diagnostics per model and point."""

    values: np.ndarray
    diagnostics: list[list[dict[str, Any]]] = field(default_factory=list)


class GroundTruth(PluginBase):
    """Measures the change in test loss when a training point is removed."""

    kind = "ground_truth"

    def normalisation(self, params: BaseModel) -> Normalisation:
        """Return the retraining normalisation this ground truth uses."""
        raise NotImplementedError

    supports_groups: ClassVar[bool] = False
    """Whether :meth:`measure_groups` is implemented."""

    def measure(
        self, params: BaseModel, batch: TrainedBatch, points: np.ndarray
    ) -> TruthResult:
        """Measure for ``points``, an integer array ``(B, k)`` of training rows per model."""
        raise NotImplementedError

    def measure_groups(
        self, params: BaseModel, batch: TrainedBatch, groups: np.ndarray
    ) -> TruthResult:
        """Measure the change for removing each group at once; ``groups`` is ``(B, k, m)``."""
        raise NotImplementedError


# ------------------------------------------------------------------------ scoring


@dataclass(frozen=True)
class Score:
    """One scorer's value for one (estimate, truth) pair; ``reason`` explains a NaN."""

    value: float
    reason: str | None = None


class Scorer(PluginBase):
    """Compares estimated and true changes over the checked points."""

    kind = "scorer"
    higher_is_better: ClassVar[bool] = True
    value_range: ClassVar[tuple[float, float]] = (-1.0, 1.0)
    scale_invariant: ClassVar[bool] = False
    """Whether the score is unchanged when the estimate is multiplied by a positive number."""

    def score(self, params: BaseModel, estimate: np.ndarray, truth: np.ndarray) -> Score:
        """Score one trial's estimated against true changes, two vectors over the checked points."""
        raise NotImplementedError


# ---------------------------------------------------------------------- execution


class Executor(PluginBase):
    """Runs independent tasks and hands each result back to the calling process."""

    kind = "executor"

    def runs_in_process(self, params: BaseModel) -> bool:
        """Return whether tasks run in the calling process, so callbacks may be passed to them."""
        return False

    def run(
        self,
        params: BaseModel,
        function: Callable[[Any], Any],
        tasks: Iterable[Any],
        on_result: Callable[[Any, Any], None],
    ) -> None:
        """Call ``function(task)`` for every task and ``on_result(task, result)`` as each ends.

        ``on_result`` runs in the calling process, so the run store has one
        writer. An exception raised by a task propagates after the results of
        the tasks that finished have been handed back.
        """
        raise NotImplementedError


KINDS: dict[str, type[PluginBase]] = {
    "dataset": Dataset,
    "model": Model,
    "estimator": Estimator,
    "ground_truth": GroundTruth,
    "scorer": Scorer,
    "executor": Executor,
}
