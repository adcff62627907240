"""Model ``mlp``: a fully connected classifier evaluated on stacked parameters."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

import ifval
from ifval.kinds import Model

if TYPE_CHECKING:
    import torch

SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805


class MLPParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    depth: int = Field(1, ge=0, le=64, strict=True,
                       description="Hidden layers; 0 gives a linear classifier.")
    width: int = Field(8, ge=1, le=65536, strict=True, description="Units per hidden layer.")
    activation: Literal["selu", "tanh", "relu"] = Field("selu", description="Hidden activation.")


def activation_function(name: str):  # type: ignore[no-untyped-def]
    import torch

    return {"selu": torch.selu, "tanh": torch.tanh, "relu": torch.relu}[name]


def activation_backward(name: str, upstream: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
    """Chain ``upstream`` = ∂L/∂f(z) through the activation, given its output ``post`` = f(z).

    Uses the fused ATen kernels autograd itself calls for these activations.
    """
    import torch

    aten = torch.ops.aten
    if name == "tanh":
        return aten.tanh_backward(upstream, post)
    if name == "relu":
        return aten.threshold_backward(upstream, post, 0)
    return aten.elu_backward(upstream, SELU_ALPHA, SELU_SCALE, 1.0, True, post)


class MLP(Model):
    """Hidden layers ``layers.{i}`` and an affine output layer ``out``.

    Weights are stored input-major (``x @ W``). Initialisation draws every
    weight and bias from U(−1/√fan_in, 1/√fan_in), the distribution of
    ``torch.nn.Linear``'s default initialisation. Gradients of the
    cross-entropy are written out by hand (see :meth:`objective`), which
    takes a third of the operations autograd records for these small layers.
    """

    name = "mlp"
    description = "Fully connected network: depth, width, activation (selu, tanh, relu)."
    Params = MLPParams

    def init(self, params, n_features, n_classes, generator):  # type: ignore[no-untyped-def,override]
        import torch

        sizes = [n_features] + [params.width] * params.depth + [n_classes]
        names = [f"layers.{i}" for i in range(params.depth)] + ["out"]
        weights = {}
        for name, fan_in, fan_out in zip(names, sizes[:-1], sizes[1:], strict=True):
            bound = 1.0 / math.sqrt(fan_in)
            shape_w, shape_b = (fan_in, fan_out), (fan_out,)
            weight = torch.rand(shape_w, generator=generator, dtype=torch.float64)
            bias = torch.rand(shape_b, generator=generator, dtype=torch.float64)
            weights[f"{name}.weight"] = weight * 2 * bound - bound
            weights[f"{name}.bias"] = bias * 2 * bound - bound
        return weights

    def last_layer_names(self, params: BaseModel) -> tuple[str, str]:
        return "out.weight", "out.bias"

    def features(
        self, params: MLPParams, weights: Mapping[str, torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:  # type: ignore[override]
        act = activation_function(params.activation)
        batch = weights["out.weight"].shape[0]
        hidden = x.expand(batch, *x.shape[-2:]) if x.dim() == 2 else x
        for i in range(params.depth):
            weight, bias = weights[f"layers.{i}.weight"], weights[f"layers.{i}.bias"]
            hidden = act(affine(bias, hidden, weight))
        return hidden

    def objective(self, params: MLPParams, x, y, sample_weights):  # type: ignore[no-untyped-def,override]
        """Cross-entropy data term with hand-written backpropagation (checked against autograd).

        A subclass with its own loss, head or penalty gets the autograd objective instead.
        """
        import torch

        if not self.has_affine_head:
            return super().objective(params, x, y, sample_weights)

        act = activation_function(params.activation)
        classes = None
        batch = sample_weights.shape[0]
        inputs = x.expand(batch, *x.shape[-2:])
        weights_row = sample_weights[:, None, :]

        def value_and_grad(weights, need_value):  # type: ignore[no-untyped-def]
            nonlocal classes
            hidden = [inputs]
            for i in range(params.depth):
                pre = affine(weights[f"layers.{i}.bias"], hidden[-1], weights[f"layers.{i}.weight"])
                hidden.append(act(pre))
            # Logits class-major, (B, C, n), so the softmax is elementwise work on C rows.
            # torch's softmax and log-softmax over a last dimension of size 3 took 40%
            # of a width-8 training step (50 models on Iris).
            logits = torch.baddbmm(weights["out.bias"][:, :, None],
                                   weights["out.weight"].transpose(1, 2),
                                   hidden[-1].transpose(1, 2))
            if classes is None:
                one_hot = torch.nn.functional.one_hot(y, logits.shape[1]).to(logits.dtype)
                classes = weights_row * one_hot.T
            shifted = logits - logits.amax(dim=1, keepdim=True)
            exponentials = shifted.exp()
            total = exponentials.sum(dim=1, keepdim=True)
            # ∂/∂logits of Σ_i a_i ℓ_i is a_i (softmax − one-hot).
            upstream = torch.addcmul(-classes, exponentials, weights_row / total)

            values = None
            if need_value:
                values = -(classes * (shifted - total.log())).sum(dim=(1, 2))
            upstream = upstream.transpose(1, 2)
            grads = {
                "out.weight": hidden[-1].transpose(1, 2) @ upstream,
                "out.bias": upstream.sum(dim=1),
            }
            weight_above = weights["out.weight"]
            for i in reversed(range(params.depth)):
                upstream = upstream @ weight_above.transpose(1, 2)
                upstream = activation_backward(params.activation, upstream, hidden[i + 1])
                grads[f"layers.{i}.weight"] = hidden[i].transpose(1, 2) @ upstream
                grads[f"layers.{i}.bias"] = upstream.sum(dim=1)
                weight_above = weights[f"layers.{i}.weight"]
            return values, grads

        return value_and_grad


def affine(bias: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``inputs @ weight + bias`` for stacked models: ``(B, n, a) @ (B, a, b) + (B, b)``."""
    import torch

    return torch.baddbmm(bias[:, None, :], inputs, weight)


@ifval.hookimpl
def ifval_models() -> list[Model]:
    return [MLP()]
