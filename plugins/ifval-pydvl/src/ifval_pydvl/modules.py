"""torch modules that present one model of an ifval batch to pyDVL.

pyDVL's influence models differentiate an ``nn.Module`` with respect to its
parameters, so each builder here turns model ``index`` of a
:class:`~ifval.kinds.TrainedBatch` into a module whose only parameters are
the weights in the estimator's scope, in float64. For the last-layer scopes
the module's inputs are the model's last-layer features (computed once, with
the other weights fixed), as in :func:`ifval.estimators.scope.flat_problem`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from pydantic import BaseModel
from torch import nn

from ifval.errors import IfvalError
from ifval.estimators.scope import Scope, flat_problem, scope_names
from ifval.kinds import Model, TrainedBatch
from ifval.models.mlp import MLP

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""Signature of pyDVL's loss, which maps a batch's outputs and labels to their mean loss."""

ACTIVATIONS: dict[str, type[nn.Module]] = {"selu": nn.SELU, "tanh": nn.Tanh, "relu": nn.ReLU}
"""``nn.Module`` of each activation of ifval's ``mlp`` model."""


@dataclass
class PydvlProblem:
    """One trained model in the form pyDVL takes: a module, its loss and its inputs.

    ``inputs_train`` and ``inputs_test`` are what ``module`` takes: last-layer
    features for the last-layer scopes and raw inputs for ``all``.
    """

    module: nn.Module
    loss: Loss
    inputs_train: torch.Tensor
    inputs_test: torch.Tensor

    def flat_parameters(self) -> torch.Tensor:
        """Return θ̂ flattened in the order pyDVL flattens gradients and influence factors.

        pyDVL 0.10 concatenates the parameters that require grad in
        ``named_parameters()`` order, each flattened row-major.
        """
        return torch.cat([parameter.detach().reshape(-1)
                          for parameter in self.module.parameters() if parameter.requires_grad])


class ScopedModel(nn.Module):
    """An ifval model whose weights in scope are this module's parameters.

    The other weights are plain tensors, not parameters, so pyDVL leaves
    them fixed. With ``on_features`` the module maps last-layer features to
    outputs through ``Model.head``; otherwise it maps raw inputs through
    ``Model.forward``. Outputs have shape ``(n, C')``, without the model
    dimension.
    """

    def __init__(self, model: Model, model_params: BaseModel, weights: dict[str, torch.Tensor],
                 names: list[str], on_features: bool) -> None:
        super().__init__()
        self.model = model
        self.model_params = model_params
        self.names = names
        self.on_features = on_features
        self.fixed = {name: weight for name, weight in weights.items() if name not in names}
        # ifval's parameter names contain dots, which nn.Module does not accept as
        # attribute names, so the parameters are kept in list order of `names`.
        self.scoped = nn.ParameterList([nn.Parameter(weights[name][0].clone())
                                        for name in names])

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        weights = dict(self.fixed)
        for name, parameter in zip(self.names, self.scoped, strict=True):
            weights[name] = parameter[None]
        if self.on_features:
            output = self.model.head(self.model_params, weights, inputs[None])
        else:
            output = self.model.forward(self.model_params, weights, inputs)
        return output[0]


def single_weights(batch: TrainedBatch, index: int) -> dict[str, torch.Tensor]:
    """Return model ``index``'s weights in float64, keeping a model dimension of 1."""
    return {name: weight[index : index + 1].detach().to(torch.float64)
            for name, weight in batch.weights.items()}


def scoped_problem(batch: TrainedBatch, index: int, scope: Scope, estimator: str) -> PydvlProblem:
    """Build model ``index`` as a :class:`ScopedModel` with ``model.loss`` as pyDVL's loss.

    Raises :class:`IfvalError` for a model with a penalty (see
    :meth:`ifval.kinds.Model.penalty`): pyDVL's Hessian is that of the loss
    alone and has no place for a parameter-only term other than a multiple
    of the identity.
    """
    problem = flat_problem(batch, index, scope)
    model, model_params = batch.model, batch.model_params
    if problem.penalty is not None:
        msg = (f"estimator {estimator!r}: model {model.name!r} adds a penalty term to its "
               "objective (Model.penalty), and pyDVL's Hessian covers the data loss only, so "
               "its estimates would leave the penalty's curvature out; use the estimator "
               "'exact' or 'lissa' for this model")
        raise IfvalError(msg)

    names = scope_names(batch, scope)
    module = ScopedModel(model, model_params, single_weights(batch, index), names,
                         on_features=scope != "all")

    def loss(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return model.loss(model_params, output[None], labels)[0].mean()

    return PydvlProblem(module, loss, problem.inputs_train, problem.inputs_test)


def linear_problem(batch: TrainedBatch, index: int, scope: Scope, estimator: str) -> PydvlProblem:
    """Build model ``index`` from ``nn.Linear`` layers, which pyDVL's EK-FAC requires.

    Raises :class:`IfvalError` where that is not possible:

    - a model whose head, loss or penalty is not the default, because EK-FAC
      assumes logits and the cross-entropy;
    - the scope ``last_layer_weights``, because pyDVL 0.10's EK-FAC assumes
      every linear layer has a bias;
    - the scope ``all`` for any model but ifval's ``mlp``, the one model
      known to be affine layers with an activation between them.
    """
    model, model_params = batch.model, batch.model_params
    if not model.has_affine_head:
        msg = (f"estimator {estimator!r}: model {model.name!r} overrides its head, loss or "
               "penalty, and pyDVL's EK-FAC supports only an affine last layer with the "
               "cross-entropy of its logits; use 'pydvl_direct', 'pydvl_cg' or "
               "'pydvl_arnoldi' for this model")
        raise IfvalError(msg)
    if scope == "last_layer_weights":
        msg = (f"estimator {estimator!r}: scope 'last_layer_weights' is not supported, "
               "because pyDVL 0.10's EK-FAC assumes every linear layer has a bias; use scope "
               "'last_layer' or 'all'")
        raise IfvalError(msg)

    weights = single_weights(batch, index)
    weight_name, bias_name = model.last_layer_names(model_params)
    if scope == "last_layer":
        problem = flat_problem(batch, index, scope)
        module = linear_layer(weights[weight_name][0], weights[bias_name][0])
        return PydvlProblem(module, nn.functional.cross_entropy, problem.inputs_train,
                            problem.inputs_test)

    if not isinstance(model, MLP) or type(model).features is not MLP.features:
        msg = (f"estimator {estimator!r}: scope 'all' needs a model built only from linear "
               f"layers, which ifval knows only for the model 'mlp', not {model.name!r}; use "
               "scope 'last_layer'")
        raise IfvalError(msg)
    layers: list[nn.Module] = []
    for depth in range(model_params.depth):  # type: ignore[attr-defined]
        layers.append(linear_layer(weights[f"layers.{depth}.weight"][0],
                                   weights[f"layers.{depth}.bias"][0]))
        layers.append(ACTIVATIONS[model_params.activation]())  # type: ignore[attr-defined]
    layers.append(linear_layer(weights[weight_name][0], weights[bias_name][0]))
    x_train = batch.x_train.to(torch.float64)
    x_test = batch.x_test.to(torch.float64)
    return PydvlProblem(nn.Sequential(*layers), nn.functional.cross_entropy, x_train, x_test)


def linear_layer(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    """Return an ``nn.Linear`` computing ``x @ weight + bias`` for an input-major ``weight``."""
    fan_in, fan_out = weight.shape
    layer = nn.Linear(fan_in, fan_out, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(weight.T)
        layer.bias.copy_(bias)
    return layer
