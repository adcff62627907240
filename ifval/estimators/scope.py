"""Parameter scopes of estimators and the per-sample loss as a function of a flat vector."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ifval.kinds import TrainedBatch

if TYPE_CHECKING:
    import torch

Scope = Literal["last_layer", "last_layer_weights", "all"]
SCOPE_DESCRIPTION = (
    "Parameters the estimate covers: `last_layer` (weights and bias), `last_layer_weights` "
    "(weights only, as in the Epifano et al. scripts) or `all`."
)


@dataclass
class FlatProblem:
    """One trained model seen as a function of the parameters in scope.

    ``loss(theta, inputs, labels)`` returns per-sample losses for ``inputs``
    (last-layer features or raw inputs, whichever ``inputs_train`` holds).
    ``penalty(theta)``, when the model has one (see ``Model.penalty``), is
    the scalar parameter-only term of the objective; weight decay is not in it.
    """

    theta: torch.Tensor
    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    inputs_train: torch.Tensor
    inputs_test: torch.Tensor
    penalty: Callable[[torch.Tensor], torch.Tensor] | None = None


def scope_names(batch: TrainedBatch, scope: Scope) -> list[str]:
    weight, bias = batch.model.last_layer_names(batch.model_params)
    if scope == "last_layer":
        return [weight, bias]
    if scope == "last_layer_weights":
        return [weight]
    return list(batch.weights)


def flat_problem(batch: TrainedBatch, index: int, scope: Scope) -> FlatProblem:
    """Model ``index`` of the batch, in float64, as a function of its parameters in ``scope``."""
    import torch

    model, params = batch.model, batch.model_params
    single = {name: w[index : index + 1].detach().to(torch.float64) for name, w in
              batch.weights.items()}
    names = scope_names(batch, scope)
    shapes = [single[name].shape[1:] for name in names]
    sizes = [int(torch.Size(shape).numel()) for shape in shapes]
    theta = torch.cat([single[name].reshape(-1) for name in names])
    x_train = batch.x_train.to(torch.float64)
    x_test = batch.x_test.to(torch.float64)

    def unflatten(flat: torch.Tensor) -> dict[str, torch.Tensor]:
        weights = dict(single)
        for name, chunk, shape in zip(names, flat.split(sizes), shapes, strict=True):
            weights[name] = chunk.reshape(1, *shape)
        return weights

    penalty = None
    if model.penalty(params, single) is not None:
        def penalty(flat: torch.Tensor) -> torch.Tensor:
            return model.penalty(params, unflatten(flat))[0]

    if scope == "all":
        def loss(flat: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            weights = unflatten(flat)
            return model.loss(params, model.forward(params, weights, inputs), labels)[0]

        return FlatProblem(theta, loss, x_train, x_test, penalty)

    with torch.no_grad():
        feats_train = model.features(params, single, x_train)[0]
        feats_test = model.features(params, single, x_test)[0]

    def head_loss(flat: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        output = model.head(params, unflatten(flat), inputs[None])
        return model.loss(params, output, labels)[0]

    return FlatProblem(theta, head_loss, feats_train, feats_test, penalty)


def first_order_values(grads: torch.Tensor, solved: torch.Tensor, members: int, n: int,
                       normalisation: str, regulariser_grad: torch.Tensor) -> torch.Tensor:
    """First-order predicted changes for removing groups of ``members`` points at once.

    ``grads`` contains the per-sample gradients of k groups, shape ``(k·m, p)``,
    group-major; ``solved`` is (H + λI)⁻¹ g_test. For ``original_n`` the
    prediction is (1/n) (Σ_{i∈U} g_i)ᵀ solved. For ``remaining`` (data term
    over the n − m other points) it is (1/(n − m)) (Σ_{i∈U} g_i + m r)ᵀ solved,
    where r = w θ̂ + ∇R(θ̂) is the gradient of the parameter-only terms.
    With m = 1 these are the single-point formulas.
    """
    summed = grads.reshape(-1, members, grads.shape[-1]).sum(dim=1)
    if normalisation == "original_n":
        return summed @ solved / n
    return (summed + members * regulariser_grad) @ solved / (n - members)
